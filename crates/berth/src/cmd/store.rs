//! `berth store ...`: the store benchmark, and `load`, the writer that the
//! crash-durability test kills with SIGKILL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_store::{DynStore, Journal, StoreExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Memory,
    Embedded,
    Etcd,
}

/// Where the store lives (shared by every verb that opens one).
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Store backend.
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: Backend,
    /// Data directory of the embedded backend (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
}

/// The embedded store's file inside a data directory (the same one
/// `berth server` and `berth dev` use).
pub fn store_file(data_dir: &std::path::Path) -> PathBuf {
    berth_store::data_file(data_dir)
}

impl StoreArgs {
    /// Opens the store; the returned guard keeps a temporary directory alive.
    pub async fn open(&self) -> anyhow::Result<(DynStore, Option<tempfile::TempDir>)> {
        match self.backend {
            Backend::Memory => Ok((Arc::new(Journal::new()), None)),
            Backend::Embedded => {
                let (dir, guard) = match &self.data_dir {
                    Some(d) => (d.clone(), None),
                    None => {
                        let t = tempfile::tempdir().context("creating a temporary data directory")?;
                        (t.path().to_path_buf(), Some(t))
                    }
                };
                let file = store_file(&dir);
                let store = Journal::open(&file).with_context(|| format!("opening {}", file.display()))?;
                Ok((Arc::new(store), guard))
            }
            Backend::Etcd => open_etcd(&self.etcd_endpoints).await.map(|s| (s, None)),
        }
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: &[String]) -> anyhow::Result<DynStore> {
    let store = berth_store::EtcdStore::connect(endpoints)
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_endpoints: &[String]) -> anyhow::Result<DynStore> {
    anyhow::bail!(
        "this berth was built without etcd support; rebuild with `--features etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Measure CAS commit throughput and watch lag.
    ///
    /// Example: berth store bench --backend embedded --writers 64 --seconds 5 --json
    Bench {
        #[command(flatten)]
        store: StoreArgs,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Distinct keys (fewer than writers makes them conflict).
        #[arg(long)]
        keys: Option<usize>,
        /// How long to write.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bytes per value.
        #[arg(long, default_value_t = 128)]
        value_bytes: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write keys with concurrent writers forever, printing `ack KEY` after
    /// each acknowledged commit (used by the kill -9 durability test).
    Load {
        /// Data directory of the embedded store.
        #[arg(long)]
        data_dir: PathBuf,
        /// Key prefix for this run.
        #[arg(long, default_value = "load")]
        prefix: String,
        #[arg(long, default_value_t = 16)]
        writers: usize,
    },
}

pub async fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Bench {
            store,
            writers,
            keys,
            seconds,
            value_bytes,
            json,
        } => {
            anyhow::ensure!(writers > 0, "--writers: must be at least 1");
            anyhow::ensure!(seconds > 0.0 && seconds.is_finite(), "--seconds: must be positive");
            let (st, _guard) = store.open().await?;
            let cfg = berth_store::bench::BenchConfig {
                writers,
                keys: keys.unwrap_or(writers),
                duration: Duration::from_secs_f64(seconds),
                value_bytes,
            };
            let report = berth_store::bench::run(st, &cfg).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} backend, {} writers: {} commits in {:.1} s = {:.0} commits/s; commit p50 {:.2} ms p99 {:.2} ms; {} conflicts; watch lag p50 {:.2} ms p99 {:.2} ms",
                    report.backend,
                    report.writers,
                    report.commits,
                    report.seconds,
                    report.commits_per_s,
                    report.commit_p50_ms,
                    report.commit_p99_ms,
                    report.conflicts,
                    report.watch_lag_p50_ms,
                    report.watch_lag_p99_ms
                );
            }
            Ok(())
        }
        StoreCommand::Load {
            data_dir,
            prefix,
            writers,
        } => {
            let file = store_file(&data_dir);
            let store: DynStore =
                Arc::new(Journal::open(&file).with_context(|| format!("opening {}", file.display()))?);
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                let prefix = prefix.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    loop {
                        let key = format!("/{prefix}/{w:03}/{n:09}");
                        store.put(key.as_bytes(), key.as_bytes()).await?;
                        // println! takes the stdout lock per line and flushes at the newline.
                        println!("ack {key}");
                        n += 1;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), anyhow::Error>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok(())
        }
    }
}
