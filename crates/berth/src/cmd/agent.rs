//! `berth agent`: run the host agent, or measure its drivers' floors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_agent::daemon::{self, DEFAULT_MEMORY_RESERVE_MIB, DEFAULT_PORT_RANGE, DaemonConfig, DriverKind};
use berth_agent::stream::StreamConfig;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Driver launch floors: plain fork/exec or `docker run -d`, beside the
    /// same launch through Berth's driver.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The server's URL, e.g. http://127.0.0.1:8080; https://... connects
    /// over TLS (wss://), trusting the system roots plus --tls-ca.
    #[arg(long, env = "BERTH_SERVER")]
    server: Option<String>,
    /// Extra CA certificate(s), PEM, trusted for an https:// server (e.g. the
    /// certificate of a self-signed `berth server --tls-cert`).
    #[arg(long, env = "BERTH_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    #[arg(long, env = "BERTH_CLUSTER", default_value = "default")]
    cluster: String,
    /// The join token configured on the server (--agent-token).
    #[arg(long, env = "BERTH_AGENT_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "docker")]
    driver: String,
    /// CPU units to offer (default: host cores x 1024).
    #[arg(long)]
    cpu_units: Option<u64>,
    /// Memory MiB to offer (default: host memory minus a reserve).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Network bandwidth to register, Mbit/s (a consumable the scheduler
    /// packs on; 0: not tracked).
    #[arg(long, default_value_t = 0)]
    network_mbps: u64,
    /// GPUs to register.
    #[arg(long, default_value_t = 0)]
    gpus: u64,
    /// Elastic network interfaces `awsvpc` tasks can take an IP on (each
    /// bound to one security-group set at a time); 0: none.
    #[arg(long, default_value_t = 0)]
    enis: u32,
    /// IP addresses each ENI holds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    ips_per_eni: u32,
    /// Custom attribute K=V (repeatable).
    #[arg(long = "attribute", value_name = "K=V")]
    attributes: Vec<String>,
    /// Dynamic host port range A-B.
    #[arg(long)]
    port_range: Option<String>,
    /// Introspection and task metadata endpoint.
    #[arg(long, default_value = "127.0.0.1:51678")]
    metadata_listen: SocketAddr,
    #[arg(long, default_value = "/var/lib/berth/agent")]
    state_dir: PathBuf,
    /// Address that published ports bind to (docker driver).
    #[arg(long, default_value = "0.0.0.0")]
    bind_ip: String,
    /// The IP other hosts reach this host's tasks at (the instance's
    /// `berth.host-ip` attribute, which discovery DNS and the load balancer
    /// use). Default: this host's address on the route to the server
    /// (127.0.0.1 when the server is on loopback).
    #[arg(long)]
    host_ip: Option<std::net::IpAddr>,
}

/// The local address the kernel would use to reach `server_url`'s host (a
/// connected UDP socket sends nothing); loopback when it cannot tell.
fn route_ip(server_url: &str) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let Ok(url) = reqwest::Url::parse(server_url) else {
        return loopback;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return loopback;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Some(target) = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return loopback;
    };
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    UdpSocket::bind(bind)
        .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
        .map_or(loopback, |a| a.ip())
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[arg(long, default_value = "process")]
    driver: String,
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Image (docker) or executable (process) to launch.
    #[arg(long)]
    image: Option<String>,
    #[arg(long, default_value = "/tmp/berth-agent-bench")]
    state_dir: PathBuf,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Bench(b)) => bench(b).await,
        None => run_agent(args.run).await,
    }
}

async fn run_agent(a: RunArgs) -> anyhow::Result<()> {
    let Some(server) = a.server else {
        bail!("--server URL is required")
    };
    let host_ip = a.host_ip.unwrap_or_else(|| route_ip(&server));
    let Some(token) = a.token else {
        bail!("--token is required")
    };
    let kind: DriverKind = a.driver.parse()?;
    let mut resources = daemon::host_resources(DEFAULT_MEMORY_RESERVE_MIB);
    if let Some(c) = a.cpu_units {
        resources.cpu = c;
    }
    if let Some(m) = a.memory_mib {
        resources.memory_mib = m;
    }
    resources.network_mbps = a.network_mbps;
    resources.gpus = a.gpus;
    resources.enis = (0..a.enis)
        .map(|_| berth_model::Eni {
            security_groups: Default::default(),
            ips: a.ips_per_eni,
        })
        .collect();
    let attributes = a
        .attributes
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--attribute {kv}: expected K=V"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let port_range = match a.port_range {
        Some(r) => daemon::parse_port_range(&r)?,
        None => DEFAULT_PORT_RANGE,
    };
    std::fs::create_dir_all(&a.state_dir).with_context(|| format!("create {}", a.state_dir.display()))?;
    let driver: std::sync::Arc<dyn berth_agent::driver::Driver> = match kind {
        DriverKind::Docker => std::sync::Arc::new(
            berth_agent::driver::docker::DockerDriver::connect()
                .await?
                .with_bind_ip(a.bind_ip.clone()),
        ),
        DriverKind::Process => daemon::make_driver(kind, &a.state_dir).await?,
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let cfg = DaemonConfig {
        cluster: a.cluster,
        state_dir: a.state_dir,
        metadata_listen: a.metadata_listen,
        driver: kind,
        stream: StreamConfig {
            server,
            token,
            hostname,
            resources,
            attributes,
            port_range,
            ip_addresses: vec![host_ip.to_string()],
            metadata_endpoint: None,
            heartbeat: Duration::from_secs(3),
            reconnect_max: Duration::from_secs(5),
            tls_ca: a.tls_ca,
        },
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    daemon::run(cfg, driver, rx).await?;
    Ok(())
}

async fn bench(b: BenchArgs) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};

    use berth_agent::bench;
    let kind: DriverKind = b.driver.parse()?;
    let n = b.tasks.max(1);
    let image = match (&b.image, kind) {
        (Some(i), _) => i.clone(),
        (None, DriverKind::Process) => std::env::current_exe()?
            .with_file_name("berth-testapp")
            .display()
            .to_string(),
        (None, DriverKind::Docker) => "berth-testapp:latest".to_string(),
    };
    // End to end: RunTask until the API's event stream shows the task
    // RUNNING, on a one-agent cluster in this process. Between two tasks
    // (the previous one STOPPED and its containers removed) one floor sample
    // and one driver-level sample are taken, so all three are interleaved and
    // meet the same host.
    let dir = tempfile::tempdir()?;
    let cluster = berth_dev::DevCluster::start(berth_dev::DevConfig {
        data_dir: dir.path().to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        agents: vec![berth_dev::AgentSpec {
            name: "bench".into(),
            zone: "bench-1a".into(),
            driver: kind,
            resources: berth_model::Resources::new(64 * 1024, 64 * 1024),
        }],
        credentials: None,
        agent_token: "bench".into(),
        agent_timeout: Duration::from_secs(30),
    })
    .await?;
    let floor: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let floor_plain: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let through: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let push = |v: &Arc<Mutex<Vec<Duration>>>, s: Vec<Duration>| {
        v.lock().unwrap_or_else(|p| p.into_inner()).extend(s);
    };
    let run = match kind {
        DriverKind::Process => {
            let driver = Arc::new(berth_agent::driver::process::ProcessDriver::new(
                b.state_dir.join("process"),
            )?);
            let spec = bench_spec(&image);
            berth_dev::bench::run_task_latency_with(&cluster, &image, n, |_arn| {
                let (driver, spec, image) = (driver.clone(), spec.clone(), image.clone());
                let (floor, through) = (floor.clone(), through.clone());
                async move {
                    let f = bench::process_floor(std::slice::from_ref(&image), 1)
                        .await
                        .map_err(dev_err)?;
                    push(&floor, f);
                    let t = bench::driver_launch(driver.as_ref(), &spec, 1).await.map_err(dev_err)?;
                    push(&through, t);
                    Ok(())
                }
            })
            .await
        }
        DriverKind::Docker => {
            let driver = Arc::new(
                berth_agent::driver::docker::DockerDriver::connect()
                    .await?
                    .with_bind_ip("0.0.0.0"),
            );
            let spec = bench_spec(&image);
            // The task's engine work: port 8080 published on 0.0.0.0, 16 MiB
            // (the bench task definition's settings).
            let like_task = bench::FloorOptions {
                publish: Some(("0.0.0.0".into(), 8080)),
                memory_mib: Some(16),
            };
            berth_dev::bench::run_task_latency_with(&cluster, &image, n, |arn| {
                let (driver, spec, image, like_task) = (driver.clone(), spec.clone(), image.clone(), like_task.clone());
                let (floor, floor_plain, through) = (floor.clone(), floor_plain.clone(), through.clone());
                async move {
                    // Like the floor's own containers, the task's is gone
                    // before the next launch.
                    bench::remove_task_containers(&driver, &arn).await.map_err(dev_err)?;
                    let docker = driver.client();
                    let f = bench::docker_floor_with(docker, &image, 1, &like_task)
                        .await
                        .map_err(dev_err)?;
                    push(&floor, f);
                    let f = bench::docker_floor(docker, &image, 1).await.map_err(dev_err)?;
                    push(&floor_plain, f);
                    let t = bench::driver_launch(driver.as_ref(), &spec, 1).await.map_err(dev_err)?;
                    push(&through, t);
                    Ok(())
                }
            })
            .await
        }
    };
    cluster.stop().await;
    let run = run?;
    let api = bench::summarize(&run.samples);
    let take = |v: &Arc<Mutex<Vec<Duration>>>| bench::summarize(&v.lock().unwrap_or_else(|p| p.into_inner()));
    let (floor, floor_plain, through) = (take(&floor), take(&floor_plain), take(&through));
    let mut out = serde_json::json!({
        "driver": b.driver,
        "tasks": n,
        "scope": "RunTask until the API's event stream shows RUNNING (embedded store, one local agent, port 8080 \
                  published on a free host port); floor, driver and end-to-end samples interleaved, each after \
                  the previous container is gone",
        "launch_p50_ms": api.p50_ms,
        "launch_p99_ms": api.p99_ms,
        "driver_launch_p50_ms": through.p50_ms,
        "driver_launch_p99_ms": through.p99_ms,
        "floor_p50_ms": floor.p50_ms,
        "floor_p99_ms": floor.p99_ms,
        "overhead_p50_ms": api.p50_ms - floor.p50_ms,
        "failed_launches": run.failed.len(),
    });
    if kind == DriverKind::Docker {
        out["floor"] = "docker create+start of the image with the task's -p 0.0.0.0:PORT:8080 -m 16m".into();
        out["floor_plain_p50_ms"] = floor_plain.p50_ms.into();
        out["overhead_vs_plain_p50_ms"] = (api.p50_ms - floor_plain.p50_ms).into();
    } else {
        out["floor"] = "fork/exec of the program".into();
    }
    if !run.failed.is_empty() {
        out["failures"] = run.failed.into();
    }
    if b.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn dev_err(e: berth_agent::AgentError) -> berth_dev::DevError {
    berth_dev::DevError::Io(e.to_string())
}

fn bench_spec(image: &str) -> berth_agent::driver::ContainerSpec {
    berth_agent::driver::ContainerSpec {
        agent_id: format!("bench-{}", std::process::id()),
        cluster: "bench".into(),
        task_arn: "arn:aws:ecs:us-east-1:000000000000:task/bench/bench".into(),
        task_id: "bench".into(),
        name: "app".into(),
        image: image.to_string(),
        entry_point: Vec::new(),
        command: Vec::new(),
        env: vec![("PORT".into(), "0".into())],
        cpu_units: 0,
        memory_mib: None,
        memory_reservation_mib: None,
        ports: Vec::new(),
        stop_timeout: Duration::from_secs(2),
    }
}

#[cfg(test)]
mod route_tests {
    use super::route_ip;

    #[test]
    fn host_ip_defaults_to_the_route_to_the_server() {
        assert_eq!(route_ip("http://127.0.0.1:8080").to_string(), "127.0.0.1");
        assert_eq!(route_ip("not a url").to_string(), "127.0.0.1");
    }
}
