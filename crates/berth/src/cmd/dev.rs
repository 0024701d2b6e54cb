//! `berth dev`: everything on one machine in one process — the server on the
//! embedded store (state kept in `./.berth` across restarts), the agent
//! stream, the controllers and one local agent (docker when an engine
//! answers, else the process driver). SigV4 is on: the generated
//! credentials go to `DATA_DIR/credentials` and to the `berth` profile of
//! the AWS shared-credentials file, so `aws --profile berth` and the berth
//! CLI work at once. Ctrl-C stops the tasks (unless `--keep-tasks`) and
//! exits cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_agent::daemon::{self, DriverKind};
use berth_dev::{AgentSpec, DevCluster, DevConfig, DevDns, GeneratedKeys};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where state lives (kept across restarts).
    #[arg(long, default_value = ".berth")]
    data_dir: PathBuf,
    /// API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `docker` or `process` (default: docker when the engine answers).
    #[arg(long)]
    driver: Option<String>,
    /// Leave tasks running on exit (a restarted `berth dev` re-adopts them).
    #[arg(long)]
    keep_tasks: bool,
    /// Accept unsigned requests (no credentials are generated).
    #[arg(long)]
    no_auth: bool,
    /// Do not write the `berth` profile into ~/.aws/credentials.
    #[arg(long)]
    no_aws_profile: bool,
    /// Discovery DNS address (UDP and TCP), `off` to disable. Unset:
    /// 127.0.0.1:8600, or a free port when that one is taken.
    #[arg(long, value_name = "ADDR|off")]
    dns_listen: Option<String>,
    /// A domain suffix DNS also answers under (`berth`: `web.default.berth.`).
    #[arg(long, value_name = "DOMAIN")]
    dns_domain: Option<String>,
    /// Run in the background: return once the cluster answers (log in
    /// DATA_DIR/dev.log, pid in DATA_DIR/dev.pid); `berth dev --stop` ends it.
    #[arg(long, conflicts_with = "stop")]
    detach: bool,
    /// Stop the `berth dev` running in the background from this data dir
    /// (as Ctrl-C would: tasks stopped unless it was started with --keep-tasks).
    #[arg(long)]
    stop: bool,
}

const READY_LINE: &str = "Ctrl-C stops.";

/// Starts `berth dev` again without `--detach` as a background process in
/// its own session, and returns once its banner says it is ready.
// Synchronous, before any runtime work: polls another process with a deadline.
#[allow(clippy::disallowed_methods)]
fn detach(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let pid_path = data_dir.join("dev.pid");
    if let Some(pid) = running_pid(&pid_path) {
        anyhow::bail!(
            "berth dev is already running from {} (pid {pid}); `berth dev --stop` ends it",
            data_dir.display()
        );
    }
    let log_path = data_dir.join("dev.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--detach").collect();
    let exe = std::env::current_exe().context("locating the berth binary")?;
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("opening the log")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting berth dev in the background")?;
    std::fs::write(&pid_path, child.id().to_string()).with_context(|| format!("writing {}", pid_path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains(READY_LINE) {
            let banner = text.split(READY_LINE).next().unwrap_or_default();
            print!("{banner}");
            println!(
                "Running in the background (pid {}); log: {}\nStop it with: berth dev --stop{}",
                child.id(),
                log_path.display(),
                if data_dir == Path::new(".berth") {
                    String::new()
                } else {
                    format!(" --data-dir {}", data_dir.display())
                }
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(&pid_path);
            anyhow::bail!("berth dev exited during start-up ({status}):\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = std::fs::remove_file(&pid_path);
            anyhow::bail!("berth dev did not become ready within 120 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid in `path` when that process is still alive.
fn running_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid)
}

/// Sends SIGINT to the background `berth dev` and waits until it is gone.
// Synchronous, before any runtime work: polls another process with a deadline.
#[allow(clippy::disallowed_methods)]
fn stop_detached(data_dir: &Path) -> anyhow::Result<()> {
    let pid_path = data_dir.join("dev.pid");
    let Some(pid) = running_pid(&pid_path) else {
        let _ = std::fs::remove_file(&pid_path);
        anyhow::bail!("no berth dev is running in the background from {}", data_dir.display());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).context("signalling berth dev")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while nix::sys::signal::kill(pid, None).is_ok() {
        if Instant::now() > deadline {
            anyhow::bail!("berth dev (pid {pid}) did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&pid_path);
    println!("berth dev stopped");
    Ok(())
}

/// Reads the credentials kept in the data dir, or generates and saves them.
fn credentials(data_dir: &Path) -> anyhow::Result<(String, GeneratedKeys)> {
    let path = data_dir.join("credentials");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let field = |k: &str| {
            text.lines().find_map(|l| {
                l.split_once('=')
                    .filter(|(a, _)| a.trim() == k)
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        if let (Some(id), Some(secret)) = (field("aws_access_key_id"), field("aws_secret_access_key")) {
            let keys = GeneratedKeys {
                access_key_id: id,
                secret_access_key: secret,
            };
            return Ok((text, keys));
        }
    }
    let keys = GeneratedKeys::new();
    let text = keys.profile("berth");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok((text, keys))
}

/// Puts (or replaces) the `[berth]` profile in the AWS shared-credentials file.
fn write_aws_profile(keys: &GeneratedKeys) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".aws/credentials"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            skipping = t == "[berth]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&keys.profile("berth"));
    out.push_str("region = us-east-1\n");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.detach {
        return detach(&args.data_dir);
    }
    if args.stop {
        return stop_detached(&args.data_dir);
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let driver = match args.driver.as_deref() {
        Some(d) => d.parse::<DriverKind>()?,
        None if berth_dev::docker_available().await => DriverKind::Docker,
        None => DriverKind::Process,
    };
    let (creds, keys) = if args.no_auth {
        (None, None)
    } else {
        let (text, keys) = credentials(&args.data_dir)?;
        (Some(text), Some(keys))
    };
    let resources = daemon::host_resources(daemon::DEFAULT_MEMORY_RESERVE_MIB);
    let config = DevConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        agents: vec![AgentSpec {
            name: "local".into(),
            zone: "local-1a".into(),
            driver,
            resources,
        }],
        credentials: creds,
        agent_token: format!("dev-{}", GeneratedKeys::new().secret_access_key),
        agent_timeout: Duration::from_secs(10),
    };
    let dns_listen = match args.dns_listen.as_deref() {
        Some("off") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--dns-listen: {a:?} is not an IP:PORT address (or `off`)"))?,
        ),
        None => Some(pick_dns_port().await),
    };
    let cluster = DevCluster::start_with_dns(
        config,
        DevDns {
            listen: dns_listen,
            domain: args.dns_domain.clone(),
        },
    )
    .await?;
    println!("berth dev: server, controllers and one local agent ({driver:?} driver)");
    println!("  API:       {}", cluster.url);
    match cluster.dns_addr {
        Some(d) => println!(
            "  DNS:       {d} (udp+tcp; try: dig @{} -p {} SRV web.default)",
            d.ip(),
            d.port()
        ),
        None => println!("  DNS:       off"),
    }
    println!("  data dir:  {} (state survives restarts)", args.data_dir.display());
    match &keys {
        Some(k) => {
            println!("  access key: {}", k.access_key_id);
            println!("  secret key: {}", k.secret_access_key);
            if !args.no_aws_profile {
                match write_aws_profile(k) {
                    Ok(p) => println!("  profile:   'berth' written to {}", p.display()),
                    Err(e) => println!("  profile:   not written ({e:#})"),
                }
            }
            println!(
                "\ntry:  aws ecs --endpoint-url {} --profile berth --region us-east-1 list-clusters",
                cluster.url
            );
        }
        None => {
            println!("  WARNING: --no-auth: the API accepts unsigned requests (development only)");
            println!(
                "\ntry:  aws ecs --endpoint-url {} --no-sign-request --region us-east-1 list-clusters",
                cluster.url
            );
        }
    }
    println!("      berth --endpoint {} ps\n\n{READY_LINE}", cluster.url);
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping...");
    if !args.keep_tasks {
        stop_all_tasks(&cluster, keys.as_ref()).await;
    }
    cluster.stop().await;
    Ok(())
}

/// Scales services to 0 and stops standalone tasks, waiting (bounded) for
/// the agent to report them stopped.
async fn stop_all_tasks(cluster: &DevCluster, keys: Option<&GeneratedKeys>) {
    let client = match berth_client::Client::new(berth_client::Settings {
        endpoint: cluster.url.clone(),
        region: "us-east-1".into(),
        cluster: "default".into(),
        keys: keys.map(|k| berth_client::Keys {
            access_key_id: k.access_key_id.clone(),
            secret_access_key: k.secret_access_key.clone(),
            source: "berth dev".into(),
        }),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot stop tasks: {e}");
            return;
        }
    };
    let clusters = client
        .call_all("ListClusters", &json!({}), "clusterArns")
        .await
        .unwrap_or_default();
    let mut stopping: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for c in &clusters {
        let services = client
            .call_all("ListServices", &json!({"cluster": c}), "serviceArns")
            .await
            .unwrap_or_default();
        for s in services {
            let _ = client
                .call("UpdateService", &json!({"cluster": c, "service": s, "desiredCount": 0}))
                .await;
        }
        let tasks = client
            .call_all(
                "ListTasks",
                &json!({"cluster": c, "desiredStatus": "RUNNING"}),
                "taskArns",
            )
            .await
            .unwrap_or_default();
        for t in &tasks {
            let _ = client
                .call(
                    "StopTask",
                    &json!({"cluster": c, "task": t, "reason": "berth dev stopped"}),
                )
                .await;
        }
        if let Some(c) = c.as_str() {
            stopping.push((c.to_string(), tasks));
        }
    }
    // Wait (bounded) until the agent has reported every one of them stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (c, tasks) in stopping {
        for chunk in tasks.chunks(100) {
            while Instant::now() < deadline {
                let d = client
                    .call("DescribeTasks", &json!({"cluster": c, "tasks": chunk}))
                    .await;
                let all_stopped = d.is_ok_and(|d| {
                    d["tasks"]
                        .as_array()
                        .is_some_and(|ts| ts.iter().all(|t| t["lastStatus"] == "STOPPED"))
                });
                if all_stopped {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// 127.0.0.1:8600 when both its UDP and TCP ports are free, else a free port.
async fn pick_dns_port() -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], 8600));
    let free = match tokio::net::UdpSocket::bind(preferred).await {
        Ok(_udp) => tokio::net::TcpListener::bind(preferred).await.is_ok(),
        Err(_) => false,
    };
    if free {
        preferred
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}
