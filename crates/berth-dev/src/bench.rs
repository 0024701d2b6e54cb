//! Launch latency as a user sees it: from the RunTask call to the moment the
//! cluster's event stream (the API's `GET /v1/clusters/NAME/events`) shows
//! the task RUNNING, one task at a time, on a one-agent cluster.
//!
//! A task that stops before it runs (a host port already in use by someone
//! else on this machine, say) is reported with its stop reason at once, not
//! after a 60 s timeout; the run retries such a launch a few times and
//! counts the failures, so one collision does not sink 200 samples. The
//! task publishes its port on a host port checked free before each launch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_client::{Client, Settings};
use serde_json::{Value, json};

use crate::{DevCluster, DevError};

fn client_error(e: berth_client::ClientError) -> DevError {
    DevError::Io(e.to_string())
}

/// Runs `n` tasks of a one-container definition with `image` one after the
/// other and returns each RunTask → RUNNING latency.
pub async fn run_task_latency(cluster: &DevCluster, image: &str, n: usize) -> Result<Vec<Duration>, DevError> {
    let run = run_task_latency_with(cluster, image, n, |_| async { Ok(()) }).await?;
    Ok(run.samples)
}

/// What [`run_task_latency_with`] measured.
#[derive(Debug, Clone, Default)]
pub struct LatencyRun {
    /// RunTask → RUNNING, one per task that ran.
    pub samples: Vec<Duration>,
    /// Stop reasons of launches that stopped before RUNNING (then retried).
    pub failed: Vec<String>,
}

/// Launches that may fail before RUNNING, in a row, before the run gives up.
const MAX_FAILED_IN_A_ROW: usize = 3;

/// [`run_task_latency`], calling `between(task_arn)` after each task is
/// STOPPED and before the next RunTask: benchmarks interleave their floor
/// samples there and wait for the stopped task's containers to be gone, so
/// both are measured on the same quiet host.
pub async fn run_task_latency_with<F, Fut>(
    cluster: &DevCluster,
    image: &str,
    n: usize,
    mut between: F,
) -> Result<LatencyRun, DevError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), DevError>>,
{
    let client = Client::new(Settings {
        endpoint: cluster.url.clone(),
        region: "us-east-1".into(),
        cluster: "default".into(),
        keys: None,
    })
    .map_err(client_error)?;
    // Wait for the agent (it also creates the default cluster).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client
            .call("ListContainerInstances", &json!({"cluster": "default"}))
            .await
            .ok()
            .and_then(|v| v["containerInstanceArns"].as_array().map(|a| !a.is_empty()))
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err(DevError::Io("no agent registered within 60 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The task publishes port 8080 on a host port that is free on this host
    // right now (checked again before every launch; a new revision when it
    // was taken meanwhile). A dynamic port from the dev range could be held
    // by another dev cluster's task on the same machine: the launch would
    // then fail with "address already in use".
    let mut host_port = free_port()?;
    register(&client, image, host_port).await?;
    // Task id → when the event stream showed it RUNNING (and STOPPED, with
    // the stop reason).
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stopped: Arc<Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    let seen = running.clone();
    let gone = stopped.clone();
    let watcher = client.clone();
    let events = tokio::spawn(async move {
        let _ = watcher
            .events("/v1/clusters/default/events", "", "events stream", None, |data| {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    let r = &v["record"];
                    if v["type"] == "task"
                        && let Some(id) = r["id"].as_str()
                    {
                        let at = Instant::now();
                        match r["lastStatus"].as_str() {
                            Some("RUNNING") => {
                                let mut m = seen.lock().unwrap_or_else(|p| p.into_inner());
                                m.entry(id.to_string()).or_insert(at);
                            }
                            Some("STOPPED") => {
                                let reason = [&r["stoppedReason"], &r["containers"][0]["reason"]]
                                    .iter()
                                    .filter_map(|v| v.as_str())
                                    .collect::<Vec<_>>()
                                    .join(": ");
                                let mut m = gone.lock().unwrap_or_else(|p| p.into_inner());
                                m.entry(id.to_string()).or_insert((at, reason));
                            }
                            _ => {}
                        }
                    }
                }
                true
            })
            .await;
    });
    // Give the stream a moment to be open before the first task.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut out = LatencyRun::default();
    let mut failed_in_a_row = 0;
    while out.samples.len() < n {
        if std::net::TcpListener::bind(("0.0.0.0", host_port)).is_err() {
            host_port = free_port()?;
            register(&client, image, host_port).await?;
        }
        let started = Instant::now();
        let run = client
            .call(
                "RunTask",
                &json!({"cluster": "default", "taskDefinition": "launch-bench"}),
            )
            .await
            .map_err(client_error)?;
        let arn = run["tasks"][0]["taskArn"]
            .as_str()
            .ok_or_else(|| DevError::Io(format!("RunTask placed nothing: {run}")))?
            .to_string();
        let id = arn.rsplit('/').next().unwrap_or(&arn).to_string();
        let until = Instant::now() + Duration::from_secs(60);
        let at = loop {
            if let Some(at) = running.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied() {
                break Some(at);
            }
            if let Some((_, why)) = stopped.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                // Stopped without running: the launch failed.
                out.failed.push(format!("task {id}: {why}"));
                break None;
            }
            if Instant::now() > until {
                events.abort();
                return Err(DevError::Io(format!(
                    "task {id} neither RUNNING nor STOPPED within 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let Some(at) = at else {
            failed_in_a_row += 1;
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW {
                events.abort();
                return Err(DevError::Io(format!(
                    "{failed_in_a_row} launches in a row stopped before RUNNING; last: {}",
                    out.failed.last().map_or("", String::as_str)
                )));
            }
            between(arn).await?;
            continue;
        };
        failed_in_a_row = 0;
        out.samples.push(at.saturating_duration_since(started));
        client
            .call("StopTask", &json!({"cluster": "default", "task": arn}))
            .await
            .map_err(client_error)?;
        // Launches are measured one at a time: the next starts once this one
        // is gone, as the driver floors are measured.
        let until = Instant::now() + Duration::from_secs(60);
        while !stopped.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id) {
            if Instant::now() > until {
                events.abort();
                return Err(DevError::Io(format!("task {id} not STOPPED within 60 s")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        between(arn).await?;
    }
    events.abort();
    Ok(out)
}

/// A TCP port free on all addresses right now (the kernel's pick).
fn free_port() -> Result<u16, DevError> {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DevError::Io(format!("finding a free port: {e}")))
}

/// Registers the bench's one-container task definition publishing
/// container port 8080 on `host_port`.
async fn register(client: &Client, image: &str, host_port: u16) -> Result<(), DevError> {
    client
        .call(
            "RegisterTaskDefinition",
            &json!({"family": "launch-bench", "containerDefinitions": [{
                "name": "app", "image": image, "cpu": 0, "memory": 16, "essential": true,
                "portMappings": [{"containerPort": 8080, "hostPort": host_port}], "stopTimeout": 2}]}),
        )
        .await
        .map_err(client_error)?;
    Ok(())
}
