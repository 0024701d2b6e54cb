//! The driver contract: how the agent creates, starts, stops, watches and
//! removes one container, whatever runs it (Docker, a plain process, or the
//! in-memory fake the unit tests use).
//!
//! Every driver passes [`conformance`]. Containers carry labels naming the
//! agent, cluster, task and container, so [`Driver::list`] lets a restarted
//! agent find (re-adopt) what it started before.

pub mod conformance;
pub mod docker;
pub mod fake;
pub mod process;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use berth_model::Timestamp;
use berth_proto::PortAssignment;
use serde::{Deserialize, Serialize};

use crate::Result;

/// Label keys set on every container (Docker labels, or the process driver's
/// spec file).
pub mod labels {
    pub const AGENT: &str = "berth.agent-id";
    pub const CLUSTER: &str = "berth.cluster";
    pub const TASK_ARN: &str = "berth.task-arn";
    pub const TASK_ID: &str = "berth.task-id";
    pub const CONTAINER: &str = "berth.container-name";
}

/// Everything a driver needs to create one container of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub agent_id: String,
    pub cluster: String,
    pub task_arn: String,
    pub task_id: String,
    /// The container definition's name.
    pub name: String,
    pub image: String,
    pub entry_point: Vec<String>,
    pub command: Vec<String>,
    /// Environment from the definition plus the agent's own variables
    /// (metadata URI); drivers add their port variables.
    pub env: Vec<(String, String)>,
    /// CPU units (1024 = one core); 0 means unlimited.
    pub cpu_units: u32,
    /// Hard memory limit in MiB.
    pub memory_mib: Option<u32>,
    /// Soft memory limit in MiB.
    pub memory_reservation_mib: Option<u32>,
    /// This container's port mappings with their allocated host ports.
    pub ports: Vec<PortAssignment>,
    /// How long `stop` waits after SIGTERM before it kills.
    pub stop_timeout: Duration,
}

impl ContainerSpec {
    /// The labels every driver attaches to the container.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::AGENT.to_string(), self.agent_id.clone()),
            (labels::CLUSTER.to_string(), self.cluster.clone()),
            (labels::TASK_ARN.to_string(), self.task_arn.clone()),
            (labels::TASK_ID.to_string(), self.task_id.clone()),
            (labels::CONTAINER.to_string(), self.name.clone()),
        ])
    }

    /// `PORT` for the first mapping and `BERTH_HOST_PORT_<containerPort>` for
    /// each: how a workload learns its host ports when there is no NAT.
    pub fn host_port_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(first) = self.ports.first() {
            env.push(("PORT".to_string(), first.host_port.to_string()));
        }
        for p in &self.ports {
            env.push((format!("BERTH_HOST_PORT_{}", p.container_port), p.host_port.to_string()));
        }
        env
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Created,
    Running,
    Exited,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitInfo {
    /// `None` when it cannot be known (a re-adopted process that was not our
    /// child when it exited).
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// Human-readable, e.g. `OutOfMemoryError: Container killed due to memory usage`.
    pub reason: Option<String>,
}

/// What a driver knows about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub runtime_id: String,
    pub labels: BTreeMap<String, String>,
    pub state: RunState,
    pub exit: Option<ExitInfo>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Captured output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Logs {
    pub stdout: String,
    pub stderr: String,
}

/// A point-in-time resource sample.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub read_at: Timestamp,
    /// Total CPU time used, in nanoseconds.
    pub cpu_total_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// The result of running a command in a container's context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecResult {
    /// `None` when it timed out or could not run.
    pub exit_code: Option<i32>,
    pub output: String,
    pub timed_out: bool,
}

impl ExecResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// One way of running containers. Methods take the runtime id that
/// [`Driver::create`] returned.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// `docker`, `process`, `fake`.
    fn name(&self) -> &'static str;

    /// What this driver can do on this host (reported at registration).
    fn capabilities(&self) -> Vec<String>;

    /// Prepares a container; fails with [`crate::AgentError::ImageNotFound`]
    /// when the image is not on the host.
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;

    async fn start(&self, id: &str) -> Result<()>;

    /// SIGTERM (or the image's stop signal), then kill after `timeout`.
    /// Returns once the container has exited; stopping an exited container
    /// is not an error.
    async fn stop(&self, id: &str, timeout: Duration) -> Result<()>;

    /// Forgets a container (stopping it first if needed).
    async fn remove(&self, id: &str) -> Result<()>;

    async fn inspect(&self, id: &str) -> Result<ContainerInfo>;

    /// Every container labelled with `agent_id`, in any state.
    async fn list(&self, agent_id: &str) -> Result<Vec<ContainerInfo>>;

    /// Resolves when the container has exited (at once if it already has).
    async fn wait(&self, id: &str) -> Result<ExitInfo>;

    /// Captured stdout/stderr; `tail` keeps the last lines of each.
    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Logs>;

    async fn stats(&self, id: &str) -> Result<Stats>;

    /// Runs `argv` in the container's context (health checks).
    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<ExecResult>;
}

/// Seconds since the epoch, now.
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Keeps the last `n` lines of `s`.
pub(crate) fn tail_lines(s: &str, n: Option<usize>) -> String {
    match n {
        None => s.to_string(),
        Some(n) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut out = lines[start..].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
    }
}
