//! `berth server`: serves the ECS API; `berth server bench`: measures it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_server::{Auth, Credentials, ServerConfig};
use berth_store::DynStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One durable redb file under --data-dir (the default).
    Embedded,
    /// In memory; everything is lost on exit (tests, benchmarks).
    Memory,
    /// An etcd cluster (--etcd-endpoints); needs the `etcd` build feature.
    Etcd,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the embedded store keeps its file.
    #[arg(long, default_value = ".berth/data")]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "embedded")]
    pub store: StoreKind,
    /// Comma-separated etcd endpoints, for --store etcd.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// AWS shared-credentials file with the access keys requests must be signed with.
    #[arg(long, conflicts_with = "no_auth")]
    pub credentials: Option<PathBuf>,
    /// Accept unsigned requests (development only).
    #[arg(long)]
    pub no_auth: bool,
    /// Region for unsigned requests (signed ones use their credential scope).
    #[arg(long, default_value = berth_model::DEFAULT_REGION)]
    pub region: String,
    /// Account id in ARNs.
    #[arg(long, default_value = berth_model::DEFAULT_ACCOUNT)]
    pub account_id: String,
    /// Shared secret agents present when they connect.
    #[arg(long, env = "BERTH_AGENT_TOKEN")]
    pub agent_token: Option<String>,
    /// Seconds without heartbeats before an agent counts as gone (and as long
    /// again before its tasks are marked STOPPED).
    #[arg(long, default_value_t = 10.0)]
    pub agent_timeout_secs: f64,
    /// Serve the whole listener over HTTPS with this certificate chain (PEM);
    /// needs --tls-key. Agents then use --server https://... (and --tls-ca
    /// for a self-signed certificate).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the discovery DNS server (A and SRV records of every service's
    /// healthy tasks) listens, UDP and TCP; `off` disables it. Unset: tries
    /// 127.0.0.1:8600 and goes on without DNS (with a warning) when taken.
    #[arg(long, value_name = "ADDR|off")]
    pub dns_listen: Option<String>,
    /// A domain suffix DNS also answers under (`berth`: `web.default.berth.`
    /// as well as `web.default.`).
    #[arg(long, value_name = "DOMAIN")]
    pub dns_domain: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// Drive the API over HTTP with many tasks stored; one JSON line per operation.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print JSON lines only.
    #[arg(long)]
    pub json: bool,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Tasks stored before measuring.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Seconds each operation is driven.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Store backend to measure on (embedded uses a temporary file).
    #[arg(long, value_enum, default_value = "embedded")]
    pub store: StoreKind,
}

async fn open_store(kind: StoreKind, data_dir: &std::path::Path, etcd: &[String]) -> anyhow::Result<DynStore> {
    Ok(match kind {
        StoreKind::Memory => Arc::new(berth_store::MemoryStore::new()),
        StoreKind::Embedded => {
            let path = super::store::store_file(data_dir);
            Arc::new(berth_store::EmbeddedStore::open(&path).with_context(|| format!("opening {}", path.display()))?)
        }
        StoreKind::Etcd => open_etcd(etcd).await?,
    })
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: &[String]) -> anyhow::Result<DynStore> {
    if endpoints.is_empty() {
        bail!("--store etcd needs --etcd-endpoints URL[,URL...]");
    }
    Ok(Arc::new(
        berth_store::EtcdStore::connect(endpoints)
            .await
            .context("connecting to etcd")?,
    ))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_endpoints: &[String]) -> anyhow::Result<DynStore> {
    bail!("this berth was built without etcd support; rebuild with `--features etcd`")
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(ServerCommand::Bench(b)) = args.command {
        return bench(b).await;
    }
    let auth = match (&args.credentials, args.no_auth) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let creds = Credentials::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Auth::SigV4(creds)
        }
        (None, true) => {
            eprintln!(
                "WARNING: --no-auth: the API accepts unsigned requests from anyone who can reach it (development only)"
            );
            Auth::Disabled
        }
        (None, false) => bail!("pass --credentials FILE (AWS shared-credentials format) or --no-auth"),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(super::tls::server_config(cert, key)?),
        _ => None,
    };
    let store = open_store(args.store, &args.data_dir, &args.etcd_endpoints).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let gateway = berth_gateway::GatewayConfig {
        agent_token: args.agent_token.clone(),
        disconnect_timeout: std::time::Duration::from_secs_f64(args.agent_timeout_secs),
        arns: berth_model::ArnContext {
            region: args.region.clone(),
            account: args.account_id.clone(),
        },
        ..Default::default()
    };
    let config = ServerConfig {
        auth,
        default_region: args.region,
        account_id: args.account_id,
        agent_token: args.agent_token,
        ..ServerConfig::default()
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Service discovery follows the store; its DNS listener is optional.
    let discovery = berth_dns::Discovery::new();
    let dns = start_dns(&discovery, args.dns_listen.as_deref(), args.dns_domain.clone()).await?;
    // One write: readers that take the first line and close the pipe must
    // not make a later line fail.
    let mut banner = format!("berth server listening on {scheme}://{addr}\n");
    if let Some(d) = &dns {
        banner.push_str(&format!("berth dns listening on {} (udp+tcp)\n", d.local_addr));
    }
    print!("{banner}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    // Controllers run beside the API: the task launcher places what RunTask queues.
    let launcher = tokio::spawn(
        berth_control::Launcher::new(store.clone(), berth_control::LauncherConfig::default())
            .run(std::future::pending::<()>()),
    );
    // One listener: every route, the agent stream at /v1/agent/stream included.
    let store_for_controllers = store.clone();
    let app = berth_dev::server_app(store.clone(), config, gateway, &discovery);
    let follower = tokio::spawn(discovery.follow(store_for_controllers.clone(), std::future::pending::<()>()));
    // The reconciler, the target controller and the compactor run on one
    // server at a time (leader election over the store: several servers
    // can share one etcd); the launcher is safe to run everywhere.
    let me = format!(
        "{}-{}-{:08x}",
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "server".into(), |h| h.trim().to_string()),
        std::process::id(),
        rand::random::<u32>()
    );
    let elector = |role: &str| {
        berth_control::Elector::new(
            store_for_controllers.clone(),
            berth_records::keys::leader(role),
            me.clone(),
            std::time::Duration::from_secs(5),
        )
    };
    let st = store_for_controllers.clone();
    let targets = tokio::spawn(berth_control::run_as_leader(
        elector("targets"),
        std::future::pending::<()>(),
        move |stop| berth_control::TargetController::new(st.clone()).run(stop),
    ));
    // The journal keeps an hour of history (resumable watches, pagination).
    let st = store_for_controllers.clone();
    let compactor = tokio::spawn(berth_control::run_as_leader(
        elector("compactor"),
        std::future::pending::<()>(),
        move |stop| {
            let c = berth_control::Compactor::new(st.clone(), berth_control::CompactorConfig::default());
            async move {
                tokio::select! {
                    r = c.run() => r,
                    () = stop => Ok(()),
                }
            }
        },
    ));
    let st = store_for_controllers.clone();
    let reconciler = tokio::spawn(berth_control::run_as_leader(
        elector("reconciler"),
        std::future::pending::<()>(),
        move |stop| berth_control::Reconciler::new(st.clone()).run(stop),
    ));
    let served = match tls {
        Some(tls) => super::tls::serve(listener, app, tls, shutdown).await,
        None => {
            axum::serve(axum::serve::ListenerExt::tap_io(listener, berth_server::no_delay), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    launcher.abort();
    compactor.abort();
    reconciler.abort();
    targets.abort();
    follower.abort();
    if let Some(d) = dns {
        d.stop();
    }
    served?;
    Ok(())
}

/// The default DNS address when `--dns-listen` is not given.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:8600";

/// Starts the DNS listener per `--dns-listen`: `off` → none; unset → the
/// default address, or none (with a warning) when it is taken; an address
/// → that one, or an error.
async fn start_dns(
    discovery: &berth_dns::Discovery,
    listen: Option<&str>,
    domain: Option<String>,
) -> anyhow::Result<Option<berth_dns::DnsServer>> {
    let (text, required) = match listen {
        Some("off") => return Ok(None),
        Some(a) => (a, true),
        None => (DEFAULT_DNS_LISTEN, false),
    };
    let addr: std::net::SocketAddr = text
        .parse()
        .with_context(|| format!("--dns-listen: {text:?} is not an IP:PORT address (or `off`)"))?;
    match berth_dns::DnsServer::start(discovery.clone(), berth_dns::DnsConfig { listen: addr, domain }).await {
        Ok(d) => Ok(Some(d)),
        Err(e) if !required => {
            eprintln!("WARNING: discovery DNS not started ({e}); pass --dns-listen ADDR to choose another address");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("--dns-listen {addr}: {e}")),
    }
}

async fn bench(b: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("berth-server-bench-{}", std::process::id()));
    let store = open_store(b.store, &dir, &[]).await?;
    let cfg = berth_server::bench::BenchConfig {
        clients: b.clients.max(1),
        stored_tasks: b.tasks,
        duration: Duration::from_secs_f64(b.seconds.max(0.1)),
    };
    if !b.json {
        eprintln!(
            "seeding {} tasks into the {:?} store, then {} clients for {}s per operation",
            b.tasks, b.store, cfg.clients, b.seconds
        );
    }
    let result = berth_server::bench::run_bench(store, cfg, |r| {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(())
}
