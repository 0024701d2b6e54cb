//! `berth agent` put together: state dir, driver, metadata endpoint and the
//! server stream, with host resource defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use berth_model::Resources;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::Driver;
use crate::driver::docker::DockerDriver;
use crate::driver::process::ProcessDriver;
use crate::state::StateDir;
use crate::stream::StreamConfig;
use crate::{Agent, AgentError, Result, metadata, stream};

/// Memory kept back for the host and the agent when none is configured.
pub const DEFAULT_MEMORY_RESERVE_MIB: u64 = 256;

/// The ECS default dynamic host port range.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// Which driver runs the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Docker,
    Process,
}

impl std::str::FromStr for DriverKind {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "docker" => Ok(DriverKind::Docker),
            "process" => Ok(DriverKind::Process),
            other => Err(AgentError::Invalid(format!(
                "unknown driver '{other}' (docker or process)"
            ))),
        }
    }
}

/// Everything `berth agent` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub cluster: String,
    pub state_dir: PathBuf,
    pub metadata_listen: SocketAddr,
    pub driver: DriverKind,
    pub stream: StreamConfig,
}

/// CPU units (cores × 1024) and memory MiB of this host, less `reserve_mib`.
pub fn host_resources(reserve_mib: u64) -> Resources {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    Resources::new(cores * 1024, total_mib.saturating_sub(reserve_mib))
}

/// Parses `A-B` (inclusive).
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let bad = || AgentError::Invalid(format!("port range '{s}' is not A-B with 1 <= A <= B <= 65535"));
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Makes the configured driver.
pub async fn make_driver(kind: DriverKind, state_dir: &std::path::Path) -> Result<Arc<dyn Driver>> {
    Ok(match kind {
        DriverKind::Docker => Arc::new(DockerDriver::connect().await?),
        DriverKind::Process => Arc::new(ProcessDriver::new(state_dir.join("process"))?),
    })
}

/// Runs the agent until `shutdown` turns true (tasks keep running after it
/// returns; a restarted agent re-adopts them) or the server refuses it.
pub async fn run(mut cfg: DaemonConfig, driver: Arc<dyn Driver>, shutdown: watch::Receiver<bool>) -> Result<()> {
    let listener = TcpListener::bind(cfg.metadata_listen)
        .await
        .map_err(|e| AgentError::io(format!("bind metadata endpoint {}", cfg.metadata_listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::io("metadata endpoint address", e))?;
    let base = format!("http://{addr}");
    let state = StateDir::open(&cfg.state_dir)?;
    let (agent, outbox) = Agent::open(&cfg.cluster, state, driver, &base).await?;
    tracing::info!(agent = agent.agent_id(), metadata = %base, driver = agent.driver().name(), "agent started");
    let meta = tokio::spawn(metadata::serve(listener, agent.clone(), shutdown.clone()));
    cfg.stream.metadata_endpoint = Some(base);
    let result = stream::run(agent.clone(), outbox, cfg.stream, shutdown).await;
    agent.detach();
    meta.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_resources() {
        assert_eq!(parse_port_range("32768-60999").unwrap(), (32768, 60999));
        assert!(parse_port_range("5-1").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("x").is_err());
        let r = host_resources(0);
        assert!(r.cpu >= 1024 && r.cpu.is_multiple_of(1024), "{r:?}");
        assert!(r.memory_mib > host_resources(128).memory_mib || r.memory_mib == 0);
        assert!("podman".parse::<DriverKind>().is_err());
    }
}
