//! The store benchmark behind `berth store bench`: N writers doing
//! single-key compare-and-swap commits for a fixed time while one watcher
//! follows every change, on any backend.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::{CmpOp, Compare, DynStore, Op, Revision, StoreError, TxnRequest};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub writers: usize,
    /// Distinct keys the writers share (`writers` means one key each: no conflicts).
    pub keys: usize,
    pub duration: Duration,
    pub value_bytes: usize,
}

/// The figures, printed as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub writers: usize,
    pub keys: usize,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_s: f64,
    pub conflicts: u64,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    pub commit_max_ms: f64,
    pub watch_events: u64,
    pub watch_lag_p50_ms: f64,
    pub watch_lag_p99_ms: f64,
}

/// The `q` quantile (0..=1) of a sorted slice, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

struct WriterResult {
    latencies: Vec<Duration>,
    acks: Vec<(Revision, Instant)>,
    conflicts: u64,
}

async fn writer(store: DynStore, key: Vec<u8>, value: Vec<u8>, deadline: Instant) -> Result<WriterResult, StoreError> {
    let mut known = store.get(&key).await?.map_or(0, |kv| kv.mod_revision);
    let mut out = WriterResult {
        latencies: Vec::with_capacity(4096),
        acks: Vec::with_capacity(4096),
        conflicts: 0,
    };
    while Instant::now() < deadline {
        let started = Instant::now();
        let resp = store
            .txn(
                TxnRequest::new()
                    .when(Compare::mod_revision(&key, CmpOp::Equal, known))
                    .then(Op::put(&key, &value))
                    .otherwise(Op::get(&key)),
            )
            .await?;
        let acked = Instant::now();
        if resp.succeeded {
            out.latencies.push(acked - started);
            out.acks.push((resp.revision, acked));
            known = resp.revision;
        } else {
            out.conflicts += 1;
            known = match resp.responses.first() {
                Some(crate::OpResponse::Get(Some(kv))) => kv.mod_revision,
                _ => 0,
            };
        }
    }
    Ok(out)
}

/// Runs the benchmark against `store`.
pub async fn run(store: DynStore, cfg: &BenchConfig) -> Result<BenchReport, StoreError> {
    let prefix = format!("/bench/{}/", std::process::id());
    let keys = cfg.keys.max(1);
    let marker_key = format!("{prefix}end");
    let mut watch = store.watch(prefix.as_bytes(), 0).await?;
    let marker = marker_key.clone();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(Revision, Instant)> = Vec::with_capacity(1 << 16);
        while let Some(batch) = watch.next().await {
            let b = batch?;
            seen.push((b.revision, Instant::now()));
            if b.events.iter().any(|e| e.kv.key.as_ref() == marker.as_bytes()) {
                return Ok(seen);
            }
        }
        Err(StoreError::Closed)
    });
    let value = vec![b'x'; cfg.value_bytes];
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let mut handles = Vec::with_capacity(cfg.writers);
    for i in 0..cfg.writers {
        let key = format!("{prefix}{:06}", i % keys).into_bytes();
        handles.push(tokio::spawn(writer(store.clone(), key, value.clone(), deadline)));
    }
    let mut latencies = Vec::new();
    let mut acks = Vec::new();
    let mut conflicts = 0;
    for h in handles {
        let r = h.await.map_err(|e| StoreError::Backend {
            backend: "bench",
            message: e.to_string(),
        })??;
        latencies.extend(r.latencies);
        acks.extend(r.acks);
        conflicts += r.conflicts;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The marker commits after every measured write; once the watcher has
    // seen it, it has seen them all.
    store.txn(TxnRequest::new().then(Op::put(&marker_key, b"end"))).await?;
    let seen = match tokio::time::timeout(Duration::from_secs(60), watcher).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => {
            return Err(StoreError::Backend {
                backend: "bench",
                message: e.to_string(),
            });
        }
        Err(_) => {
            return Err(StoreError::Backend {
                backend: "bench",
                message: "the watch did not deliver every commit within 60 s".into(),
            });
        }
    };
    let acked: std::collections::HashMap<Revision, Instant> = acks.iter().copied().collect();
    let mut lags: Vec<Duration> = seen
        .iter()
        .filter_map(|(rev, at)| acked.get(rev).map(|ack| at.saturating_duration_since(*ack)))
        .collect();
    lags.sort();
    latencies.sort();
    // Clean up the benchmark's keys.
    store
        .txn(TxnRequest::new().then(Op::delete_prefix(prefix.as_bytes())))
        .await?;
    let commits = latencies.len() as u64;
    Ok(BenchReport {
        backend: store.backend().to_string(),
        writers: cfg.writers,
        keys,
        seconds,
        commits,
        commits_per_s: commits as f64 / seconds,
        conflicts,
        commit_p50_ms: quantile_ms(&latencies, 0.50),
        commit_p99_ms: quantile_ms(&latencies, 0.99),
        commit_max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        watch_events: lags.len() as u64,
        watch_lag_p50_ms: quantile_ms(&lags, 0.50),
        watch_lag_p99_ms: quantile_ms(&lags, 0.99),
    })
}
