//! `berth server bench`: serves the API on a loopback port over a store
//! seeded with many tasks, drives it over HTTP from concurrent clients and
//! reports throughput and latency per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_model::{ContainerDefinition, ResourceType, Task, TaskDefinition};
use berth_store::{DynStore, Op, TxnRequest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::error::ServerError;
use crate::keys;
use crate::server::{ServerConfig, TARGET_PREFIX, run};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Concurrent HTTP clients.
    pub clients: usize,
    /// Tasks stored before measuring.
    pub stored_tasks: usize,
    /// How long each operation is driven.
    pub duration: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            clients: 4,
            stored_tasks: 100_000,
            duration: Duration::from_secs(5),
        }
    }
}

/// One operation's numbers (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub operation: String,
    pub stored_tasks: u64,
    pub clients: usize,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CLUSTER: &str = "bench";
/// Tasks per seeding transaction.
const SEED_BATCH: usize = 1000;

/// One request; the measured loop only checks the status, it does not parse.
async fn call(client: &HttpClient, base: &str, op: &str, body: &Value) -> Result<Bytes, String> {
    let req = http::Request::post(base)
        .header("x-amz-target", format!("{TARGET_PREFIX}{op}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{op}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    Ok(bytes)
}

/// A call whose answer the caller reads (setup, not measured).
async fn call_json(client: &HttpClient, base: &str, op: &str, body: &Value) -> Result<Value, String> {
    let bytes = call(client, base, op, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn seed_task(ctx_arn: &str, i: usize) -> Task {
    let id = format!("{:016x}{:016x}", 0xbe47_u64, i as u64);
    let td = TaskDefinition {
        family: "bench".into(),
        revision: 1,
        task_definition_arn: "arn:aws:ecs:us-east-1:123456789012:task-definition/bench:1".into(),
        container_definitions: vec![ContainerDefinition {
            name: "app".into(),
            image: "busybox".into(),
            cpu: 128,
            memory: Some(128),
            ..Default::default()
        }],
        network_mode: Default::default(),
        placement_constraints: Vec::new(),
        cpu: None,
        memory: None,
        status: Default::default(),
        registered_at: None,
        deregistered_at: None,
    };
    let mut t = Task::new(
        id.clone(),
        format!("{ctx_arn}/{CLUSTER}/{id}"),
        CLUSTER,
        td.task_definition_arn.clone(),
        &td,
        1.7e9,
    );
    t.started_by = Some(format!("seed-{}", i % 100));
    t.group = Some("family:bench".into());
    t
}

/// Writes `n` tasks straight into the store in batched transactions.
pub async fn seed_tasks(store: &DynStore, n: usize) -> Result<Vec<String>, ServerError> {
    let ctx_arn = format!("arn:aws:ecs:us-east-1:123456789012:{}", ResourceType::Task.as_str());
    let mut ids = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut txn = TxnRequest::new();
        for j in i..(i + SEED_BATCH).min(n) {
            let t = seed_task(&ctx_arn, j);
            let value = serde_json::to_vec(&t).map_err(|e| ServerError::Bench(e.to_string()))?;
            let key = keys::task(CLUSTER, &t.id);
            txn = txn.then(Op::put(&key, value));
            txn = txn.then(Op::put(keys::pending(CLUSTER, &t.id), key.as_bytes()));
            for op in keys::task_index_ops(None, Some(&t)) {
                txn = txn.then(op);
            }
            ids.push(t.id);
        }
        store.txn(txn).await?;
        i += SEED_BATCH;
    }
    Ok(ids)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Drives `op` with bodies from `make` from every client for the duration.
async fn drive(
    client: &HttpClient,
    base: &str,
    cfg: &BenchConfig,
    stored: u64,
    name: &str,
    op: &'static str,
    make: Arc<dyn Fn(u64) -> Value + Send + Sync>,
) -> BenchResult {
    let deadline = Instant::now() + cfg.duration;
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..cfg.clients {
        let (client, base, make, counter) = (client.clone(), base.to_string(), make.clone(), counter.clone());
        handles.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = make(n);
                let t0 = Instant::now();
                match call(&client, &base, op, &body).await {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            tracing::warn!(error = %e, "bench request failed");
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for h in handles {
        if let Ok((lat, e)) = h.await {
            all.extend(lat);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    BenchResult {
        operation: name.to_string(),
        stored_tasks: stored,
        clients: cfg.clients,
        requests: all.len() as u64,
        errors,
        requests_per_s: (all.len() as f64 / elapsed * 10.0).round() / 10.0,
        p50_ms: (percentile(&all, 0.50) * 1000.0).round() / 1000.0,
        p99_ms: (percentile(&all, 0.99) * 1000.0).round() / 1000.0,
    }
}

/// Runs the whole bench against `store`, calling `report` after each operation.
pub async fn run_bench(
    store: DynStore,
    cfg: BenchConfig,
    mut report: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, ServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_store = store.clone();
    let server = tokio::spawn(async move {
        run(listener, server_store, ServerConfig::default(), async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let base = format!("http://{addr}/");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.clients * 2)
        .build(connector);
    let setup = |e: String| ServerError::Bench(e);
    call_json(&client, &base, "CreateCluster", &json!({"clusterName": CLUSTER}))
        .await
        .map_err(setup)?;
    call_json(
        &client,
        &base,
        "RegisterTaskDefinition",
        &json!({"family": "bench", "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 128, "memory": 128}]}),
    )
    .await
    .map_err(setup)?;
    call_json(
        &client,
        &base,
        "RegisterContainerInstance",
        &json!({"cluster": CLUSTER, "totalResources": [
            {"name": "CPU", "type": "INTEGER", "integerValue": 1_000_000},
            {"name": "MEMORY", "type": "INTEGER", "integerValue": 1_000_000}]}),
    )
    .await
    .map_err(setup)?;
    let ids = Arc::new(seed_tasks(&store, cfg.stored_tasks).await?);
    let stored = ids.len() as u64;
    let mut results = Vec::new();
    if !ids.is_empty() {
        let pick = ids.clone();
        let r = drive(
            &client,
            &base,
            &cfg,
            stored,
            "DescribeTasks(100)",
            "DescribeTasks",
            Arc::new(move |n| {
                let start = (n as usize * 7919) % pick.len();
                let tasks: Vec<&String> = (0..100).map(|k| &pick[(start + k * 997) % pick.len()]).collect();
                json!({"cluster": CLUSTER, "tasks": tasks})
            }),
        )
        .await;
        report(&r);
        results.push(r);
        let pick = ids.clone();
        let r = drive(
            &client,
            &base,
            &cfg,
            stored,
            "DescribeTasks(1)",
            "DescribeTasks",
            Arc::new(move |n| json!({"cluster": CLUSTER, "tasks": [pick[(n as usize * 7919) % pick.len()]]})),
        )
        .await;
        report(&r);
        results.push(r);
    }
    let r = drive(
        &client,
        &base,
        &cfg,
        stored,
        "ListTasks",
        "ListTasks",
        Arc::new(move |n| json!({"cluster": CLUSTER, "startedBy": format!("seed-{}", n % 100), "maxResults": 100})),
    )
    .await;
    report(&r);
    results.push(r);
    let r = drive(
        &client,
        &base,
        &cfg,
        stored,
        "RunTask",
        "RunTask",
        Arc::new(move |_| json!({"cluster": CLUSTER, "taskDefinition": "bench", "startedBy": "bench-run"})),
    )
    .await;
    report(&r);
    results.push(r);
    let _ = stop_tx.send(());
    match server.await {
        Ok(r) => r?,
        Err(e) => return Err(ServerError::Bench(format!("server task: {e}"))),
    }
    Ok(results)
}
