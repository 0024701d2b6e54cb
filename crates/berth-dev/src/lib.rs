//! A whole Berth cluster in one process, for `berth dev`, `berth demo` and
//! end-to-end tests: the embedded store, the ECS API and the agent stream on
//! one listener, the task launcher, the service reconciler, the load balancer
//! target controller and data plane, discovery (DNS on its own port, the
//! HTTP listing on the API's), and any number
//! of local agents (each with its own state dir, metadata endpoint, zone
//! attribute and slice of the dynamic port range, so several can share a
//! host).
//!
//! This crate only wires the other crates together; it holds no policy of
//! its own and must not be depended on by them.

pub mod bench;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::{self, DriverKind};
use berth_agent::stream::StreamConfig;
use berth_model::Resources;
use berth_server::{Auth, Credentials, ServerConfig};
use berth_store::{DynStore, Journal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors starting or running the cluster.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error(transparent)]
    Agent(#[from] berth_agent::AgentError),
    #[error("{0}")]
    Io(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

/// One local agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub zone: String,
    pub driver: DriverKind,
    pub resources: Resources,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// The store lives in `data_dir/berth.db`, agents under `data_dir/agents/`.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub agents: Vec<AgentSpec>,
    /// SigV4 credentials (AWS shared-credentials text); `None` disables auth.
    pub credentials: Option<String>,
    pub agent_token: String,
    /// Seconds of agent silence before its tasks are given up.
    pub agent_timeout: Duration,
}

/// Every HTTP route of a Berth server, as `berth server` and `berth dev`
/// both serve them: the ECS API with the load balancer API and the event
/// stream, the service plan and the discovery listing, all behind the
/// server's one authentication-and-error layer; the agent stream (which
/// authenticates agents by their join token) beside it.
pub fn server_app(
    store: DynStore,
    config: ServerConfig,
    gateway: berth_gateway::GatewayConfig,
    discovery: &berth_dns::Discovery,
) -> axum::Router {
    let extensions = vec![
        berth_server::Extension {
            path: berth_control::PLAN_PATH,
            operation: "PlanService",
            router: berth_control::plan_router(store.clone()),
        },
        berth_server::Extension {
            path: berth_dns::DISCOVERY_PATH,
            operation: "DiscoverService",
            router: berth_dns::router(discovery.clone()),
        },
    ];
    let agents = berth_gateway::router(store.clone(), gateway);
    berth_server::app(store, config, extensions, agents)
}

/// The discovery DNS server of a dev cluster (see `berth-dns`).
#[derive(Debug, Clone)]
pub struct DevDns {
    /// UDP and TCP address; port 0 picks a free one; `None`: no DNS listener
    /// (the HTTP listing is always served).
    pub listen: Option<SocketAddr>,
    /// Optional domain suffix (`berth`: `web.default.berth.`).
    pub domain: Option<String>,
}

impl Default for DevDns {
    /// A free port on 127.0.0.1, no suffix.
    fn default() -> Self {
        DevDns {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            domain: None,
        }
    }
}

/// A generated access key pair.
#[derive(Debug, Clone)]
pub struct GeneratedKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl GeneratedKeys {
    pub fn new() -> Self {
        let id: [u8; 8] = rand::random();
        let secret: [u8; 20] = rand::random();
        GeneratedKeys {
            access_key_id: format!("AKBERTH{}", hex::encode_upper(id)),
            secret_access_key: hex::encode(secret),
        }
    }

    /// The keys as an AWS shared-credentials profile.
    pub fn profile(&self, name: &str) -> String {
        format!(
            "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key_id, self.secret_access_key
        )
    }
}

impl Default for GeneratedKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// A running cluster; [`DevCluster::stop`] ends it.
pub struct DevCluster {
    pub url: String,
    pub addr: SocketAddr,
    /// Where the discovery DNS server answers (UDP and TCP), if it runs.
    pub dns_addr: Option<SocketAddr>,
    pub store: DynStore,
    /// The load balancer data plane (listeners of the load balancers created
    /// through the API).
    pub lb: berth_lb::Lb,
    dns: Option<berth_dns::DnsServer>,
    stop: watch::Sender<bool>,
    agent_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    agents: Vec<JoinHandle<()>>,
    pub agent_names: Vec<String>,
}

impl std::fmt::Debug for DevCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCluster")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Ports above Linux's default ephemeral range (32768-60999): host ports
/// handed to tasks there never collide with this host's outgoing
/// connections, which take ephemeral ports at random.
pub const LOCAL_PORT_RANGE: (u16, u16) = (61000, 65535);

/// Dynamic host ports for the `i`-th local agent: disjoint slices of
/// [`LOCAL_PORT_RANGE`], since the agents share one host's ports.
pub fn port_slice(i: usize, of: usize) -> (u16, u16) {
    let (lo, hi) = LOCAL_PORT_RANGE;
    let width = (u32::from(hi) - u32::from(lo) + 1) / of.max(1) as u32;
    let start = u32::from(lo) + width * i as u32;
    (start as u16, (start + width - 1) as u16)
}

impl DevCluster {
    /// Starts the cluster with discovery DNS on a free port of 127.0.0.1.
    pub async fn start(cfg: DevConfig) -> Result<DevCluster, DevError> {
        Self::start_with_dns(cfg, DevDns::default()).await
    }

    /// Starts the cluster with discovery DNS as `dns` says.
    pub async fn start_with_dns(cfg: DevConfig, dns: DevDns) -> Result<DevCluster, DevError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| DevError::Io(format!("{}: {e}", cfg.data_dir.display())))?;
        let store: DynStore = Arc::new(Journal::open(berth_store::data_file(&cfg.data_dir))?);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| DevError::Io(format!("binding {}: {e}", cfg.listen)))?;
        let addr = listener.local_addr().map_err(|e| DevError::Io(e.to_string()))?;
        let url = format!("http://{addr}");
        let auth = match &cfg.credentials {
            Some(text) => Auth::SigV4(Credentials::parse(text).map_err(DevError::Credentials)?),
            None => Auth::Disabled,
        };
        let config = ServerConfig {
            auth,
            agent_token: Some(cfg.agent_token.clone()),
            ..ServerConfig::default()
        };
        let gateway = berth_gateway::GatewayConfig {
            agent_token: Some(cfg.agent_token.clone()),
            disconnect_timeout: cfg.agent_timeout,
            ..Default::default()
        };
        let (stop, stop_rx) = watch::channel(false);
        let discovery = berth_dns::Discovery::new();
        let dns_server = match dns.listen {
            Some(listen) => Some(
                berth_dns::DnsServer::start(
                    discovery.clone(),
                    berth_dns::DnsConfig {
                        listen,
                        domain: dns.domain.clone(),
                    },
                )
                .await
                .map_err(|e| DevError::Io(format!("discovery DNS on {listen}: {e}")))?,
            ),
            None => None,
        };
        let app = server_app(store.clone(), config, gateway, &discovery);
        let mut rx = stop_rx.clone();
        let follower = discovery.follow(store.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = follower.await {
                tracing::error!(error = %e, "discovery follower failed");
            }
        }));
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(axum::serve::ListenerExt::tap_io(listener, berth_server::no_delay), app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "API server failed");
            }
        }));
        let mut rx = stop_rx.clone();
        let launcher = berth_control::Launcher::new(store.clone(), Default::default());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = launcher.run(shutdown).await {
                tracing::error!(error = %e, "launcher failed");
            }
        }));
        let mut rx = stop_rx.clone();
        let reconciler = berth_control::Reconciler::new(store.clone());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = reconciler.run(shutdown).await {
                tracing::error!(error = %e, "reconciler failed");
            }
        }));
        // The journal keeps an hour of history; compacted away behind it.
        let compactor = berth_control::Compactor::new(store.clone(), berth_control::CompactorConfig::default());
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = compactor.run() => if let Err(e) = r {
                    tracing::error!(error = %e, "compactor failed");
                },
                _ = rx.wait_for(|s| *s) => {}
            }
        }));
        let mut rx = stop_rx.clone();
        let targets = berth_control::TargetController::new(store.clone());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = targets.run(shutdown).await {
                tracing::error!(error = %e, "target controller failed");
            }
        }));
        // The load balancer data plane, following the store's /lb/ records;
        // listeners bind on the API's address (port 0 picks one, reported
        // in DescribeLoadBalancers).
        let lb = berth_lb::Lb::new(berth_lb::ProxySettings::default());
        let mut rx = stop_rx.clone();
        let follower = berth_control::LbFollower::new(store.clone(), lb.clone(), cfg.listen.ip());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = follower.run(shutdown).await {
                tracing::error!(error = %e, "load balancer data plane failed");
            }
        }));
        let (agent_stop, agent_rx) = watch::channel(false);
        let mut agents = Vec::new();
        let n = cfg.agents.len();
        for (i, spec) in cfg.agents.iter().enumerate() {
            let state_dir = cfg.data_dir.join("agents").join(&spec.name);
            let driver = daemon::make_driver(spec.driver, &state_dir).await?;
            let dcfg = daemon::DaemonConfig {
                cluster: "default".into(),
                state_dir: state_dir.clone(),
                metadata_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                driver: spec.driver,
                stream: StreamConfig {
                    server: url.clone(),
                    token: cfg.agent_token.clone(),
                    hostname: spec.name.clone(),
                    resources: spec.resources.clone(),
                    attributes: vec![("ecs.availability-zone".into(), spec.zone.clone())],
                    port_range: port_slice(i, n),
                    ip_addresses: vec!["127.0.0.1".into()],
                    metadata_endpoint: None,
                    heartbeat: Duration::from_secs(2),
                    reconnect_max: Duration::from_secs(2),
                    tls_ca: None,
                },
            };
            let rx = agent_rx.clone();
            let name = spec.name.clone();
            agents.push(tokio::spawn(async move {
                if let Err(e) = daemon::run(dcfg, driver, rx).await {
                    tracing::error!(agent = name, error = %e, "agent failed");
                }
            }));
        }
        Ok(DevCluster {
            url,
            addr,
            dns_addr: dns_server.as_ref().map(|d| d.local_addr),
            dns: dns_server,
            store,
            lb,
            stop,
            agent_stop,
            tasks,
            agents,
            agent_names: cfg.agents.iter().map(|a| a.name.clone()).collect(),
        })
    }

    /// Stops agents first (their tasks keep running unless the caller
    /// stopped them through the API), then the controllers and the API.
    pub async fn stop(self) {
        let _ = self.agent_stop.send(true);
        for a in self.agents {
            let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
        }
        let _ = self.stop.send(true);
        if let Some(d) = self.dns {
            d.stop();
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Whether a Docker engine answers on this machine.
pub async fn docker_available() -> bool {
    tokio::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The `berth-testapp` binary next to `exe` (the workload of the demo).
pub fn testapp_next_to(exe: &Path) -> Option<PathBuf> {
    let p = exe.with_file_name("berth-testapp");
    p.exists().then_some(p)
}
