//! Driver-level measurements for `berth agent bench`: the floor each driver
//! cannot beat (a plain `docker run -d` of the image, a plain fork/exec of
//! the program), and the same launch through a Berth [`Driver`], so the
//! end-to-end bench (RunTask → RUNNING through the API) can put Berth's
//! overhead beside them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use serde::Serialize;

use crate::driver::{ContainerSpec, Driver};
use crate::{AgentError, Result};

/// Latency summary of `n` launches, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles of `samples`.
pub fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| -> f64 {
        if ms.is_empty() {
            return 0.0;
        }
        let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
        ms[rank - 1]
    };
    Summary {
        samples: ms.len(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// Plain fork/exec of `argv` until `spawn` returns, `n` times (each child is
/// killed and reaped before the next).
pub async fn process_floor(argv: &[String], n: usize) -> Result<Vec<Duration>> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| AgentError::Invalid("empty command".into()))?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("PORT", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| AgentError::io(format!("spawn {program}"), e))?;
        samples.push(t.elapsed());
        let _ = child.kill().await;
    }
    Ok(samples)
}

/// Plain `docker run -d` (create + start through the engine API), `n`
/// times; every container is removed afterwards.
pub async fn docker_floor(docker: &bollard::Docker, image: &str, n: usize) -> Result<Vec<Duration>> {
    docker_floor_with(docker, image, n, &FloorOptions::default()).await
}

/// What the floor's `docker run -d` publishes and limits, so it does the
/// engine work a task does (`-p IP:HOST:CONTAINER -m MiB`): publishing a
/// port costs the engine a proxy process and NAT rules per container.
#[derive(Debug, Clone, Default)]
pub struct FloorOptions {
    /// (host IP, container port): published on a free host port.
    pub publish: Option<(String, u16)>,
    /// Hard memory limit, MiB.
    pub memory_mib: Option<u32>,
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| AgentError::io("bind a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| AgentError::io("free port address", e))
}

/// [`docker_floor`] with the port and memory settings of `opts`.
pub async fn docker_floor_with(
    docker: &bollard::Docker,
    image: &str,
    n: usize,
    opts: &FloorOptions,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    let label = format!("berth-bench-{}", uuid::Uuid::new_v4().simple());
    let mut ids = Vec::new();
    let mut outcome = Ok(());
    for _ in 0..n {
        let mut body = ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(vec!["PORT=8080".into()]),
            labels: Some(HashMap::from([("berth.bench".to_string(), label.clone())])),
            ..Default::default()
        };
        let mut host = HostConfig::default();
        if let Some((ip, container_port)) = &opts.publish {
            let key = format!("{container_port}/tcp");
            let binding = PortBinding {
                host_ip: Some(ip.clone()),
                host_port: Some(free_port()?.to_string()),
            };
            body.exposed_ports = Some(vec![key.clone()]);
            host.port_bindings = Some(HashMap::from([(key, Some(vec![binding]))]));
        }
        if let Some(m) = opts.memory_mib {
            host.memory = Some(i64::from(m) << 20);
            host.memory_swap = host.memory;
        }
        body.host_config = Some(host);
        let t = Instant::now();
        let options = CreateContainerOptionsBuilder::default().build();
        let created = match docker.create_container(Some(options), body).await {
            Ok(c) => c,
            Err(e) => {
                outcome = Err(e.into());
                break;
            }
        };
        ids.push(created.id.clone());
        if let Err(e) = docker.start_container(&created.id, None).await {
            outcome = Err(e.into());
            break;
        }
        samples.push(t.elapsed());
    }
    for id in ids {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&id, Some(options)).await;
    }
    outcome.map(|()| samples)
}

/// The same launch through a Berth driver: create + start of `spec`, `n`
/// times, each container removed afterwards. Callers alternate small rounds
/// of floor and driver launches so machine noise hits both alike.
pub async fn driver_launch(driver: &dyn Driver, spec: &ContainerSpec, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = spec.clone();
        s.task_id = format!("{}-{i}", spec.task_id);
        let t = Instant::now();
        let id = driver.create(&s).await?;
        let started = driver.start(&id).await;
        samples.push(t.elapsed());
        let _ = driver.remove(&id).await;
        started?;
    }
    Ok(samples)
}

/// Removes (force) the containers of `task_arn` and returns once they are gone.
pub async fn remove_task_containers(driver: &crate::driver::docker::DockerDriver, task_arn: &str) -> Result<()> {
    use crate::driver::labels;
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![format!("{}={task_arn}", labels::TASK_ARN)])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in driver.client().list_containers(Some(options)).await? {
        if let Some(id) = c.id {
            let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
            match driver.client().remove_container(&id, Some(options)).await {
                Ok(()) => {}
                // Already gone.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&d);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(summarize(&[]).samples, 0);
    }

    #[tokio::test]
    async fn fork_exec_floor_runs() {
        let s = summarize(
            &process_floor(&["/bin/sleep".to_string(), "5".to_string()], 3)
                .await
                .unwrap(),
        );
        assert_eq!(s.samples, 3);
        assert!(s.p50_ms > 0.0);
    }
}
