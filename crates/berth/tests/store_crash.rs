//! Crash durability of the embedded store: a writer process is killed with
//! SIGKILL at an arbitrary moment mid-load; after reopening the file, every
//! write it had acknowledged is there. Repeated with different kill points,
//! on the same file, so each round also reopens a file that was killed.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_store::{Journal, RangeRequest, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0usize;
    // Kill points spread from "just started" to "well into the load".
    for (round, kill_after) in [1usize, 57, 400, 1500, 3000].into_iter().enumerate() {
        let prefix = format!("round{round}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["store", "load", "--writers", "16", "--prefix", &prefix, "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start berth store load");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("ack ")
                    && tx.send(key.to_string()).is_err()
                {
                    break;
                }
            }
        });
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(k) => acked.push(k),
                Err(e) => panic!("round {round}: load stopped after {} acks: {e}", acked.len()),
            }
        }
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        // Acks already printed before the kill landed count too.
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        total_acked += acked.len();

        let store = Journal::open(dir.path().join("berth.db")).expect("reopen after kill -9");
        for key in &acked {
            let kv = store.get(key.as_bytes()).await.unwrap();
            let kv = kv.unwrap_or_else(|| panic!("round {round}: acknowledged key {key} lost"));
            assert_eq!(
                kv.value.as_ref(),
                key.as_bytes(),
                "round {round}: {key} has the wrong value"
            );
        }
        let present = store
            .range(RangeRequest::prefix(format!("/{prefix}/").as_bytes()).count_only())
            .await
            .unwrap();
        assert!(present.count as usize >= acked.len());
        assert!(store.revision().await.unwrap() as usize > total_acked);
    }
}
