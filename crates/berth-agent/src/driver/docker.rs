//! The Docker driver, through bollard against the local engine.
//!
//! Images must already be on the host (there is no registry to pull from):
//! a missing image is `CannotPullContainerError`, and [`DockerDriver::load_image`]
//! loads an image tar the way `docker load` does. Port mappings become
//! Docker port bindings (static and dynamic host ports alike are chosen by
//! the scheduler); CPU units become CPU shares, the hard memory limit
//! becomes `Memory` (with no extra swap), the soft one `MemoryReservation`.
//! Labels name agent, cluster, task and container, so a restarted agent
//! re-adopts its containers with [`Driver::list`]. Containers reach the
//! agent's metadata endpoint as `berth-agent` (mapped to Docker's host
//! gateway), which works when the agent listens beyond loopback.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use berth_model::{Protocol, Timestamp};
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ImportImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;

use super::{ContainerInfo, ContainerSpec, Driver, ExecResult, ExitInfo, Logs, RunState, Stats, labels, now};
use crate::{AgentError, Result};

/// Runs containers in the local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerDriver {
    docker: Docker,
    /// Host address port bindings listen on (`0.0.0.0` by default).
    bind_ip: String,
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn not_found(id: &str) -> impl FnOnce(DockerError) -> AgentError + '_ {
    move |e| {
        if is_status(&e, 404) {
            AgentError::NotFound(id.to_string())
        } else {
            AgentError::Docker(e)
        }
    }
}

impl DockerDriver {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and
    /// checks that it answers.
    pub async fn connect() -> Result<Self> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| AgentError::DockerUnavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| AgentError::DockerUnavailable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| AgentError::DockerUnavailable(e.to_string()))?;
        Ok(DockerDriver {
            docker,
            bind_ip: "0.0.0.0".into(),
        })
    }

    /// Binds published ports on `ip` instead of all addresses.
    pub fn with_bind_ip(mut self, ip: impl Into<String>) -> Self {
        self.bind_ip = ip.into();
        self
    }

    /// The bollard client, for callers that need more (benchmarks).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Whether `image` is present on this host.
    pub async fn has_image(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads the images in a `docker save` tar, as `docker load -i` does.
    pub async fn load_image(&self, tar: &Path) -> Result<()> {
        let bytes = tokio::fs::read(tar)
            .await
            .map_err(|e| AgentError::io(format!("read image tar {}", tar.display()), e))?;
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut progress = self
            .docker
            .import_image(options, bollard::body_full(bytes.into()), None);
        while let Some(item) = progress.next().await {
            item?;
        }
        Ok(())
    }

    fn container_name(spec: &ContainerSpec) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        format!("berth-{}-{}-{suffix}", clean(&spec.task_id), clean(&spec.name))
    }

    fn body(&self, spec: &ContainerSpec) -> ContainerCreateBody {
        let mut env: Vec<String> = spec
            .env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "ECS_CONTAINER_METADATA_URI_V4" | "ECS_CONTAINER_METADATA_URI" => {
                    format!("{k}={}", container_metadata_uri(v))
                }
                _ => format!("{k}={v}"),
            })
            .collect();
        // Inside the container the workload listens on its containerPort;
        // these say where it is reachable from outside.
        for p in &spec.ports {
            env.push(format!("BERTH_HOST_PORT_{}={}", p.container_port, p.host_port));
        }
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            bindings
                .entry(format!("{}/{proto}", p.container_port))
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(self.bind_ip.clone()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let memory = spec.memory_mib.map(|m| i64::from(m) << 20);
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.entry_point.is_empty()).then(|| spec.entry_point.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(spec.labels().into_iter().collect()),
            stop_timeout: Some(i64::try_from(spec.stop_timeout.as_secs()).unwrap_or(30)),
            exposed_ports: (!bindings.is_empty()).then(|| bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                cpu_shares: (spec.cpu_units > 0).then(|| i64::from(spec.cpu_units.max(2))),
                memory,
                memory_swap: memory,
                memory_reservation: spec.memory_reservation_mib.map(|m| i64::from(m) << 20),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                // The host as seen from the bridge network (Docker 20.10+).
                extra_hosts: Some(vec![format!("{METADATA_HOST}:host-gateway")]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn info(resp: ContainerInspectResponse) -> ContainerInfo {
        let state = resp.state.unwrap_or_default();
        let run = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => RunState::Running,
            _ => RunState::Exited,
        };
        let oom = state.oom_killed.unwrap_or(false);
        let exit = (run == RunState::Exited).then(|| ExitInfo {
            exit_code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
            oom_killed: oom,
            reason: if oom {
                Some("OutOfMemoryError: Container killed due to memory usage".into())
            } else {
                state.error.filter(|e| !e.is_empty())
            },
        });
        let labels = resp
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect();
        ContainerInfo {
            runtime_id: resp.id.unwrap_or_default(),
            labels,
            state: run,
            exit,
            started_at: state.started_at.as_deref().and_then(parse_rfc3339),
            finished_at: state.finished_at.as_deref().and_then(parse_rfc3339),
        }
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn capabilities(&self) -> Vec<String> {
        [
            "healthcheck",
            "readopt",
            "cgroup-limits",
            "oom-detection",
            "image-load",
            "port-bindings",
        ]
        .map(String::from)
        .to_vec()
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&Self::container_name(spec))
            .build();
        // The engine answers 404 "No such image" itself: no extra round trip.
        match self.docker.create_container(Some(options), self.body(spec)).await {
            Ok(created) => Ok(created.id),
            Err(e) if is_status(&e, 404) => Err(AgentError::ImageNotFound {
                image: spec.image.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker.start_container(id, None).await.map_err(|e| {
            if is_status(&e, 404) {
                AgentError::NotFound(id.to_string())
            } else {
                AgentError::CannotStart {
                    container: id.to_string(),
                    reason: e.to_string(),
                }
            }
        })
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(not_found(id)(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(not_found(id))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        let resp = self.docker.inspect_container(id, None).await.map_err(not_found(id))?;
        Ok(Self::info(resp))
    }

    async fn list(&self, agent_id: &str) -> Result<Vec<ContainerInfo>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{}={agent_id}", labels::AGENT)])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.docker.list_containers(Some(options)).await?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            match self.inspect(&id).await {
                Ok(info) => out.push(info),
                // Removed between list and inspect.
                Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.runtime_id.cmp(&b.runtime_id));
        Ok(out)
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo> {
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut stream = self.docker.wait_container(id, Some(options));
        // One item: the exit (bollard reports non-zero exits as errors).
        if let Some(Err(e)) = stream.next().await
            && !matches!(e, DockerError::DockerContainerWaitError { .. })
        {
            return Err(not_found(id)(e));
        }
        let info = self.inspect(id).await?;
        Ok(info.exit.unwrap_or_default())
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Logs> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut logs = Logs::default();
        while let Some(item) = stream.next().await {
            match item.map_err(not_found(id))? {
                bollard::container::LogOutput::StdErr { message } => {
                    logs.stderr.push_str(&String::from_utf8_lossy(&message));
                }
                other => logs.stdout.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
        Ok(logs)
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let mut stream = self.docker.stats(id, Some(options));
        let Some(item) = stream.next().await else {
            return Err(AgentError::NotFound(id.to_string()));
        };
        let s = item.map_err(not_found(id))?;
        let mem = s.memory_stats.unwrap_or_default();
        Ok(Stats {
            read_at: now(),
            cpu_total_ns: s
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0),
            memory_bytes: mem.usage.unwrap_or(0),
            memory_limit_bytes: mem.limit,
            pids: s.pids_stats.and_then(|p| p.current),
        })
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<ExecResult> {
        let run = async {
            let created = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(argv.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await?;
            let mut output = String::new();
            if let StartExecResults::Attached { output: mut out, .. } =
                self.docker.start_exec(&created.id, None).await?
            {
                while let Some(chunk) = out.next().await {
                    if output.len() < 1024 {
                        output.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
                    }
                }
            }
            let inspected = self.docker.inspect_exec(&created.id).await?;
            Ok::<_, DockerError>((inspected.exit_code, output))
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Ok(ExecResult {
                exit_code: None,
                output: format!("timed out after {timeout:?}"),
                timed_out: true,
            }),
            Ok(Err(e)) => Ok(ExecResult {
                exit_code: None,
                output: e.to_string(),
                timed_out: false,
            }),
            Ok(Ok((code, mut output))) => {
                super::process::truncate_utf8(&mut output, 1024);
                Ok(ExecResult {
                    exit_code: code.and_then(|c| i32::try_from(c).ok()),
                    output,
                    timed_out: false,
                })
            }
        }
    }
}

/// The name containers use for the agent's host.
const METADATA_HOST: &str = "berth-agent";

/// The metadata URI as a bridge-networked container must use it: loopback
/// and wildcard hosts become the host gateway. The agent has to listen on an
/// address the bridge reaches (e.g. `--metadata-listen 0.0.0.0:51678`).
fn container_metadata_uri(uri: &str) -> String {
    for local in ["//127.0.0.1:", "//0.0.0.0:", "//localhost:"] {
        if uri.contains(local) {
            return uri.replacen(local, &format!("//{METADATA_HOST}:"), 1);
        }
    }
    uri.to_string()
}

/// Parses Docker's RFC 3339 UTC timestamps (`2024-01-02T03:04:05.123Z`);
/// Docker's zero time (year 1) reads as absent.
fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if y < 1970 {
        return None;
    }
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac: f64 = format!("0.{}", frac.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .parse()
        .unwrap_or(0.0);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::{container_metadata_uri, parse_rfc3339};

    #[test]
    fn metadata_uri_points_at_the_host_gateway() {
        assert_eq!(
            container_metadata_uri("http://127.0.0.1:51678/v4/t/app"),
            "http://berth-agent:51678/v4/t/app"
        );
        assert_eq!(
            container_metadata_uri("http://10.1.2.3:51678/v4/t/app"),
            "http://10.1.2.3:51678/v4/t/app"
        );
    }

    #[test]
    fn docker_timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_rfc3339("2024-03-01T12:30:15.5Z").unwrap();
        assert!((t - 1_709_296_215.5).abs() < 1e-6, "{t}");
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("nonsense"), None);
    }
}
