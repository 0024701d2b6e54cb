//! `berth lb ...`: a standalone load balancer over a static target list, and
//! the benchmark that compares Berth's load balancer with nginx.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_lb::harness::{self, Child, Nginx};
use berth_lb::loadgen::{self, LoadReport, LoadSpec};
use berth_lb::{Algorithm, Config, HealthCheck, Lb, ListenerConfig, ProxySettings, TargetGroupConfig};
use tokio::process::Command;

use super::bench::parse_duration;

#[derive(Debug, clap::Subcommand)]
pub enum LbCommand {
    /// Run a load balancer in front of a static list of targets.
    Run(RunArgs),
    /// Run backends, Berth's LB and nginx in one go and compare them.
    Bench(LbBenchArgs),
    /// Run the data plane standalone, following a server's load balancers,
    /// target groups and registered targets (and reporting health back).
    #[command(
        after_help = "Example:\n  berth lb follow --server http://10.0.0.1:8080 --profile berth --metrics-listen 127.0.0.1:9100"
    )]
    Follow(FollowArgs),
    /// Create a load balancer (a listener on a host port, rules, default target group).
    Create(super::cli::lb::LbCreateArgs),
    /// List load balancers with their listeners' addresses.
    Ls(super::cli::lb::LbLsArgs),
    /// A load balancer with its target groups' targets and health.
    Describe(super::cli::lb::LbNameArgs),
    /// Delete a load balancer.
    Rm(super::cli::lb::LbNameArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A target (repeat for more).
    #[arg(long = "target", required = true)]
    pub targets: Vec<SocketAddr>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Health-check path; `none` disables active checks.
    #[arg(long, default_value = "/health")]
    pub health_path: String,
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub health_interval: Duration,
    /// `p2c` (least outstanding of two random choices) or `rr`.
    #[arg(long, default_value = "p2c")]
    pub algorithm: String,
    /// Attempts per request, the first included.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// Listener threads, each with its own single-threaded runtime (default:
    /// one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut g = TargetGroupConfig::new("default", self.targets.clone());
        g.algorithm = match self.algorithm.as_str() {
            "p2c" | "least-outstanding" => Algorithm::LeastOutstanding,
            "rr" | "round-robin" => Algorithm::RoundRobin,
            other => bail!("unknown algorithm '{other}' (p2c or rr)"),
        };
        g.health_check = (self.health_path != "none").then(|| HealthCheck {
            path: self.health_path.clone(),
            interval: self.health_interval,
            timeout: self.health_interval.min(Duration::from_secs(2)),
            ..HealthCheck::default()
        });
        g.max_attempts = self.max_attempts;
        g.request_timeout = self.request_timeout;
        Ok(Config {
            listeners: vec![ListenerConfig {
                bind: None,
                name: "main".into(),
                rules: vec![],
                default_target_group: Some("default".into()),
            }],
            target_groups: vec![g],
        })
    }
}

async fn run_lb(a: RunArgs) -> anyhow::Result<()> {
    let lb = Lb::new(ProxySettings::default());
    lb.apply(a.config()?)?;
    if let Some(m) = a.metrics {
        let ml = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("binding {m}"))?;
        println!("berth lb metrics listening on {}", ml.local_addr()?);
        let lb = lb.clone();
        tokio::spawn(async move { lb.serve_metrics(ml, std::future::pending()).await });
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let server = lb.serve_threads(a.listen, "main", threads)?;
    println!("berth lb listening on {}", server.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LbBenchArgs {
    /// Backends behind each load balancer.
    #[arg(long, default_value_t = 4)]
    pub backends: usize,
    /// Client connections.
    // No `-c`: under `berth lb` it is the global `--cluster`.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Measured time per load balancer and scenario.
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "8s")]
    pub duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// The measured time is split into this many rounds; each round visits
    /// every scenario and load balancer, in alternating order, so that noise
    /// from other work on the machine hits all of them alike.
    #[arg(long, default_value_t = 8)]
    pub rounds: u32,
    /// Latency of the slow backend in the slow scenario (ms).
    #[arg(long, default_value_t = 20)]
    pub slow_ms: u64,
    /// Scenarios to run (default all): healthy, failing, slow. The JSON keys
    /// of a scenario that did not run are left out.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// nginx binary (default: found on PATH or in /usr/sbin).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One backend set: per backend, its extra testapp flags.
struct Scenario {
    name: &'static str,
    backends: Vec<Vec<String>>,
}

fn scenarios(a: &LbBenchArgs) -> Vec<Scenario> {
    let n = a.backends.max(2);
    let healthy = vec![vec![]; n];
    // Half the backends fail a share of requests that makes 10% overall.
    let failing_half = n / 2;
    let rate = 0.10 * n as f64 / failing_half as f64;
    let failing = (0..n)
        .map(|i| {
            if i < failing_half {
                vec!["--fail-rate".into(), format!("{rate}")]
            } else {
                vec![]
            }
        })
        .collect();
    let slow = (0..n)
        .map(|i| {
            if i == 0 {
                vec!["--latency-ms".into(), a.slow_ms.to_string()]
            } else {
                vec![]
            }
        })
        .collect();
    vec![
        Scenario {
            name: "healthy",
            backends: healthy,
        },
        Scenario {
            name: "failing",
            backends: failing,
        },
        Scenario {
            name: "slow",
            backends: slow,
        },
    ]
}

struct Pair {
    berth: LoadReport,
    nginx: LoadReport,
}

fn spec(url: &str, a: &LbBenchArgs, d: Duration) -> LoadSpec {
    let mut spec = LoadSpec::new(url);
    spec.connections = a.connections;
    spec.timeout = Duration::from_secs(10);
    spec.duration = Some(d);
    spec
}

/// The processes of one scenario: its backends, Berth's LB and nginx.
struct Running {
    _backends: Vec<Child>,
    _berth: Child,
    nginx: Nginx,
    berth_url: String,
    nginx_url: String,
}

async fn start_scenario(s: &Scenario, testapp: &Path, nginx_bin: &Path) -> anyhow::Result<Running> {
    let mut backends: Vec<Child> = Vec::new();
    for (i, extra) in s.backends.iter().enumerate() {
        backends.push(harness::testapp(testapp, &format!("{}-{i}", s.name), extra).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["lb", "run", "--listen", "127.0.0.1:0", "--health-interval", "500ms"]);
    for t in &addrs {
        cmd.arg("--target").arg(t.to_string());
    }
    let berth = harness::spawn_listening(cmd, "berth lb", Duration::from_secs(10)).await?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let nginx = Nginx::start(nginx_bin, &addrs, workers, 3).await?;
    Ok(Running {
        berth_url: format!("http://{}/", berth.addr),
        nginx_url: format!("http://{}/", nginx.addr),
        _backends: backends,
        _berth: berth,
        nginx,
    })
}

/// Starts every scenario, warms each load balancer up, then measures in
/// rounds that visit every (scenario, load balancer) pair, alternating the
/// order, so that noise from other work on the machine spreads evenly over
/// all the numbers that are compared with each other.
async fn measure_all(
    scenarios: &[Scenario],
    a: &LbBenchArgs,
    testapp: &Path,
    nginx_bin: &Path,
) -> anyhow::Result<Vec<Pair>> {
    let mut running = Vec::new();
    for s in scenarios {
        running.push(start_scenario(s, testapp, nginx_bin).await?);
    }
    let mut urls = Vec::new();
    for r in &running {
        urls.push((r.berth_url.clone(), true));
        urls.push((r.nginx_url.clone(), false));
    }
    if !a.warmup.is_zero() {
        for (url, _) in &urls {
            loadgen::run(&spec(url, a, a.warmup)).await?;
        }
    }
    let rounds = a.rounds.max(1);
    let d = a.duration / rounds;
    let mut reports = vec![LoadReport::default(); urls.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..urls.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let r = loadgen::run(&spec(&urls[i].0, a, d)).await?;
            reports[i].merge(&r);
        }
    }
    for r in running {
        r.nginx.stop().await;
    }
    let mut it = reports.into_iter();
    let mut pairs = Vec::new();
    while let (Some(berth), Some(nginx)) = (it.next(), it.next()) {
        pairs.push(Pair { berth, nginx });
    }
    Ok(pairs)
}

async fn bench(a: LbBenchArgs) -> anyhow::Result<()> {
    let testapp = harness::sibling_binary("berth-testapp")?;
    let Some(nginx_bin) = a.nginx.clone().or_else(harness::nginx_binary) else {
        bail!("nginx not found: install it with scripts/install-nginx (apt-get install -y nginx)");
    };
    let mut out = serde_json::Map::new();
    let mut text = String::new();
    let ms = |v: f64| serde_json::json!((v * 1000.0).round() / 1000.0);
    let mut healthy_rps = 0.0;
    let chosen: Vec<Scenario> = scenarios(&a)
        .into_iter()
        .filter(|s| a.only.is_empty() || a.only.iter().any(|o| o == s.name))
        .collect();
    let pairs = measure_all(&chosen, &a, &testapp, &nginx_bin).await?;
    for (s, pair) in chosen.iter().zip(pairs) {
        let prefix = if s.name == "healthy" {
            String::new()
        } else {
            format!("{}_", s.name)
        };
        for (lb, r) in [("berth", &pair.berth), ("nginx", &pair.nginx)] {
            out.insert(format!("{lb}_{prefix}rps"), serde_json::json!(r.rps().round()));
            out.insert(format!("{lb}_{prefix}p50_ms"), ms(r.latency.p50));
            out.insert(format!("{lb}_{prefix}p99_ms"), ms(r.latency.p99));
            out.insert(format!("{lb}_{prefix}p999_ms"), ms(r.latency.p999));
            out.insert(format!("{lb}_{prefix}errors"), serde_json::json!(r.failed()));
            out.insert(format!("{lb}_{prefix}error_rate"), serde_json::json!(r.error_rate()));
            text.push_str(&format!(
                "{:<8} {:<6} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  errors {} ({:.3}%)\n",
                s.name,
                lb,
                r.rps(),
                r.latency.p50,
                r.latency.p99,
                r.latency.p999,
                r.failed(),
                r.error_rate() * 100.0
            ));
        }
        let ratio = pair.berth.rps() / pair.nginx.rps().max(1e-9);
        out.insert(
            format!("{prefix}rps_ratio"),
            serde_json::json!((ratio * 1000.0).round() / 1000.0),
        );
        text.push_str(&format!("{:<8} berth/nginx requests/s ratio {ratio:.3}\n", s.name));
        if s.name == "healthy" {
            healthy_rps = pair.berth.rps();
        }
        if s.name == "failing" && healthy_rps > 0.0 {
            let kept = pair.berth.rps() / healthy_rps.max(1e-9);
            out.insert(
                "berth_failing_vs_healthy_rps".into(),
                serde_json::json!((kept * 1000.0).round() / 1000.0),
            );
            text.push_str(&format!(
                "failing  berth keeps {:.1}% of its healthy throughput\n",
                kept * 100.0
            ));
        }
    }
    out.insert("backends".into(), serde_json::json!(a.backends.max(2)));
    out.insert("connections".into(), serde_json::json!(a.connections));
    out.insert("duration_s".into(), serde_json::json!(a.duration.as_secs_f64()));
    out.insert("failing_backend_error_rate".into(), serde_json::json!(0.10));
    out.insert("slow_backend_ms".into(), serde_json::json!(a.slow_ms));
    if a.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// `berth lb VERB ...`, or `berth lb --server URL ...`: the data plane
/// following a server (the same as `berth lb follow --server URL ...`).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: Option<LbCommand>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

pub async fn run_args(a: LbArgs) -> anyhow::Result<()> {
    match a.command {
        Some(c) => run(c).await,
        None => follow(a.follow).await,
    }
}

pub async fn run(cmd: LbCommand) -> anyhow::Result<()> {
    match cmd {
        LbCommand::Run(a) => run_lb(a).await,
        LbCommand::Bench(a) => bench(a).await,
        LbCommand::Follow(a) => follow(a).await,
        LbCommand::Create(a) => super::cli::finish(super::cli::lb::lb_create(a).await),
        LbCommand::Ls(a) => super::cli::finish(super::cli::lb::lb_ls(a).await),
        LbCommand::Describe(a) => super::cli::finish(super::cli::lb::lb_describe(a).await),
        LbCommand::Rm(a) => super::cli::finish(super::cli::lb::lb_rm(a).await),
    }
}

#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The Berth server to follow (same as --endpoint).
    #[arg(long)]
    pub server: Option<String>,
    /// Address the listeners bind on (their ports come from the load balancers).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_ip: std::net::IpAddr,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Listener threads per listener.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[command(flatten)]
    pub common: super::cli::Common,
}

fn records_of(v: &serde_json::Value) -> berth_control::lbfollow::LbRecords {
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    berth_control::lbfollow::LbRecords {
        lbs: list("loadBalancers")
            .into_iter()
            .filter_map(|x| serde_json::from_value(x).ok())
            .collect(),
        groups: list("targetGroups")
            .into_iter()
            .filter_map(|x| serde_json::from_value(x).ok())
            .collect(),
        targets: list("targets")
            .into_iter()
            .filter_map(|x| {
                Some((
                    x["targetGroup"].as_str()?.to_string(),
                    serde_json::from_value(x["target"].clone()).ok()?,
                ))
            })
            .collect(),
    }
}

/// `berth lb follow --server URL`: the data plane over HTTP. Long-polls
/// `GetLbConfig` for changes past the last revision, applies them, and
/// reports target health and listener addresses with `ReportTargetHealth`.
async fn follow(mut a: FollowArgs) -> anyhow::Result<()> {
    use berth_control::lbfollow::{Report, report};
    use serde_json::json;
    let Some(server) = a.server.clone() else {
        anyhow::bail!("--server URL is required (the Berth server whose load balancers to serve)");
    };
    a.common.endpoint = Some(server.clone());
    let client = a.common.client()?;
    let elb = |op: &'static str, body: serde_json::Value| {
        let client = client.clone();
        async move {
            client
                .extension(&format!("/v1/elb/{op}"), "the load balancer API", &body)
                .await
        }
    };
    let lb = Lb::new(ProxySettings::default());
    if let Some(m) = a.metrics_listen {
        let ml = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("binding {m}"))?;
        println!("berth lb metrics listening on {}", ml.local_addr()?);
        let lb = lb.clone();
        tokio::spawn(async move { lb.serve_metrics(ml, std::future::pending()).await });
    }
    let (tx, rx) = tokio::sync::watch::channel(Config::default());
    let runner = lb.clone();
    let threads = a.threads.max(1);
    tokio::spawn(async move { runner.run(rx, threads).await });
    let first = elb("GetLbConfig", json!({})).await?;
    let records = std::sync::Arc::new(std::sync::Mutex::new(records_of(&first)));
    let mut revision = first["revision"].as_i64().unwrap_or(0);
    tx.send_replace(records_of(&first).config(a.bind_ip));
    println!("berth lb following {server} at revision {revision}");
    // Health and listener addresses go back to the server when they change.
    let (lb2, rec2, client2) = (lb.clone(), records.clone(), client.clone());
    tokio::spawn(async move {
        let mut last = Report::default();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let r = {
                let recs = rec2.lock().unwrap_or_else(|e| e.into_inner());
                report(&lb2, &recs)
            };
            if r == last {
                continue;
            }
            let health: Vec<_> = r
                .health
                .iter()
                .map(|((g, id), (state, in_flight))| {
                    json!({"targetGroup": g, "id": id, "state": state, "inFlight": in_flight})
                })
                .collect();
            let bound: Vec<_> = r
                .bound
                .iter()
                .map(|((l, p), addr)| json!({"loadBalancer": l, "port": p, "address": addr}))
                .collect();
            match client2
                .extension(
                    "/v1/elb/ReportTargetHealth",
                    "the load balancer API",
                    &json!({"health": health, "bound": bound}),
                )
                .await
            {
                Ok(_) => last = r,
                Err(e) => tracing::warn!(error = %e, "reporting target health failed"),
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let poll = elb("GetLbConfig", json!({"afterRevision": revision, "waitSeconds": 20}));
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            r = poll => r,
        };
        match next {
            Ok(v) => {
                let rev = v["revision"].as_i64().unwrap_or(revision);
                if rev != revision {
                    revision = rev;
                    let recs = records_of(&v);
                    tx.send_replace(recs.config(a.bind_ip));
                    *records.lock().unwrap_or_else(|e| e.into_inner()) = recs;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "following the server failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}
