//! The API bench without the `berth` binary:
//! `cargo run --release -p berth-server --example api_bench -- [--clients N] [--tasks N] [--seconds S] [--memory]`.
//! Prints the same JSON lines as `berth server bench --json`.

use std::sync::Arc;
use std::time::Duration;

use berth_server::bench::{BenchConfig, run_bench};
use berth_store::DynStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = BenchConfig::default();
    let mut memory = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--clients" => cfg.clients = value()?.parse()?,
            "--tasks" => cfg.stored_tasks = value()?.parse()?,
            "--seconds" => cfg.duration = Duration::from_secs_f64(value()?.parse()?),
            "--memory" => memory = true,
            "--json" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let store: DynStore = if memory {
        Arc::new(berth_store::MemoryStore::new())
    } else {
        Arc::new(berth_store::EmbeddedStore::open(dir.path().join("berth.redb"))?)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_bench(store, cfg, |r| {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    }))?;
    Ok(())
}
