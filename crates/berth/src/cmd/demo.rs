//! `berth demo`: the scaling demo in one command — a three-agent cluster in a
//! temporary directory, a web service (plus a flaky backend failing 10% of
//! requests) behind Berth's load balancer, a load test, a scale-up and a
//! second load test, then teardown. Every stage is named; the first failure
//! ends the demo with that stage and a non-zero exit code.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_agent::daemon::DriverKind;
use berth_client::{Client, Settings};
use berth_dev::{AgentSpec, DevCluster, DevConfig};
use berth_lb::loadgen::{self, LoadReport, LoadSpec};
use berth_model::Resources;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Short load tests (CI).
    #[arg(long)]
    quick: bool,
    /// `process` or `docker` (default: docker when the engine answers and the
    /// `berth-testapp:latest` image exists, else process).
    #[arg(long)]
    driver: Option<String>,
    /// Seconds per load test.
    #[arg(long)]
    seconds: Option<f64>,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

/// A named stage: a spinner with the elapsed time on a terminal, plain
/// `==>` lines otherwise (CI logs). A stage dropped without [`Stage::done`]
/// failed, and says so.
struct Stage {
    name: &'static str,
    started: Instant,
    bar: Option<ProgressBar>,
    finished: bool,
}

/// The spinner of the running stage, so detail lines print above it.
static CURRENT: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

fn stage(name: &'static str) -> Stage {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(name);
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut cur) = CURRENT.lock() {
            *cur = Some(bar.clone());
        }
        Some(bar)
    } else {
        eprintln!("==> {name}");
        None
    };
    Stage {
        name,
        started: Instant::now(),
        bar,
        finished: false,
    }
}

/// A detail line of the running stage.
fn note(line: impl AsRef<str>) {
    let line = format!("    {}", line.as_ref());
    match CURRENT.lock().ok().and_then(|c| c.clone()) {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

impl Stage {
    fn done(mut self) {
        self.finished = true;
        let line = format!("{} ok ({:.1} s)", self.name, self.started.elapsed().as_secs_f64());
        match self.bar.take() {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(format!("✓ {line}"));
            }
            None => eprintln!("    {line}"),
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Ok(mut cur) = CURRENT.lock() {
            *cur = None;
        }
        if !self.finished
            && let Some(bar) = self.bar.take()
        {
            bar.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.abandon_with_message(format!("✗ {} failed", self.name));
        }
    }
}

async fn image_present() -> bool {
    tokio::process::Command::new("docker")
        .args(["image", "inspect", "berth-testapp:latest"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<Value>>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out after {} s waiting for {what}", deadline.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host ports of the RUNNING tasks, once there are `n` of them.
/// Calls the load balancer API extension.
async fn elb(client: &Client, op: &str, body: Value) -> anyhow::Result<Value> {
    Ok(client
        .extension(&format!("/v1/elb/{op}"), "the load balancer API", &body)
        .await?)
}

async fn wait_running(client: &Client, service: &str, n: u64) -> anyhow::Result<()> {
    wait_for(
        &format!("{service} to run {n} tasks"),
        Duration::from_secs(120),
        || async {
            let d = client
                .call(
                    "DescribeServices",
                    &json!({"cluster": "default", "services": [service]}),
                )
                .await?;
            let s = &d["services"][0];
            Ok((s["runningCount"].as_u64() == Some(n) && s["pendingCount"].as_u64() == Some(0)).then(|| s.clone()))
        },
    )
    .await
    .map(|_| ())
}

/// Waits until every task of the cluster has really stopped (the agents
/// report STOPPED): tasks outlive their agent by design (a restarted agent
/// re-adopts them), so the demo must not stop the cluster before this.
async fn wait_all_stopped(client: &Client) -> anyhow::Result<()> {
    wait_for("every task to stop", Duration::from_secs(60), || async {
        if !client
            .call_all(
                "ListTasks",
                &json!({"cluster": "default", "desiredStatus": "RUNNING"}),
                "taskArns",
            )
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        let stopping = client
            .call_all(
                "ListTasks",
                &json!({"cluster": "default", "desiredStatus": "STOPPED"}),
                "taskArns",
            )
            .await?;
        for chunk in stopping.chunks(100) {
            let d = client
                .call("DescribeTasks", &json!({"cluster": "default", "tasks": chunk}))
                .await?;
            let all = d["tasks"]
                .as_array()
                .is_some_and(|ts| ts.iter().all(|t| t["lastStatus"] == "STOPPED"));
            if !all {
                return Ok(None);
            }
        }
        Ok(Some(Value::Null))
    })
    .await
    .map(|_| ())
}

/// Waits until at least `n` targets of group `web` pass their health checks.
async fn wait_healthy(client: &Client, n: usize) -> anyhow::Result<usize> {
    let v = wait_for(&format!("{n} healthy targets"), Duration::from_secs(60), || async {
        let d = elb(client, "DescribeTargetHealth", json!({"targetGroup": "web"})).await?;
        let healthy = d["targets"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|t| t["state"] == "healthy").count());
        Ok((healthy >= n).then_some(json!(healthy)))
    })
    .await?;
    Ok(v.as_u64().unwrap_or(0) as usize)
}

struct Row {
    phase: String,
    tasks: usize,
    report: LoadReport,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 8.0 });
    let exe = std::env::current_exe().context("locating the berth binary")?;
    let dir = tempfile::tempdir().context("creating the demo's directory")?;

    let s = stage("choose driver");
    let driver = match args.driver.as_deref() {
        Some(d) => d.parse::<DriverKind>()?,
        None if berth_dev::docker_available().await && image_present().await => DriverKind::Docker,
        None => DriverKind::Process,
    };
    let testapp = berth_dev::testapp_next_to(&exe);
    let image = match driver {
        DriverKind::Docker => "berth-testapp:latest".to_string(),
        DriverKind::Process => testapp
            .as_ref()
            .map(|p| p.display().to_string())
            .context("berth-testapp is not next to berth: run `cargo build --release -p berth-testapp` first")?,
    };
    note(format!("driver: {driver:?} (workload image: {image})"));
    s.done();

    let s = stage("start a three-agent cluster");
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let cluster = DevCluster::start(DevConfig {
        data_dir: dir.path().to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        agents: zones
            .iter()
            .enumerate()
            .map(|(i, z)| AgentSpec {
                name: format!("agent-{}", i + 1),
                zone: z.to_string(),
                driver,
                resources: Resources::new(2048, 2048),
            })
            .collect(),
        credentials: None,
        agent_token: "demo-token".into(),
        agent_timeout: Duration::from_secs(10),
    })
    .await
    .context("stage 'start a three-agent cluster'")?;
    let client = Client::new(Settings {
        endpoint: cluster.url.clone(),
        region: "us-east-1".into(),
        cluster: "default".into(),
        keys: None,
    })?;
    note(format!("API at {}", cluster.url));
    s.done();
    let result = demo(&client, &image, seconds, args.connections).await;
    let s2 = stage("tear down");
    for svc in ["web", "flaky"] {
        let _ = client
            .call(
                "UpdateService",
                &json!({"cluster": "default", "service": svc, "desiredCount": 0}),
            )
            .await;
    }
    for svc in ["web", "flaky"] {
        let _ = wait_running(&client, svc, 0).await;
        let _ = client
            .call(
                "DeleteService",
                &json!({"cluster": "default", "service": svc, "force": true}),
            )
            .await;
    }
    let stopped = wait_all_stopped(&client).await;
    cluster.stop().await;
    if stopped.is_ok() {
        s2.done();
    }
    let rows = result?;
    stopped.context("stage 'tear down'")?;
    println!();
    println!(
        "{:<22} {:>6} {:>12} {:>9} {:>9} {:>10} {:>8}",
        "phase", "tasks", "requests/s", "p50 ms", "p99 ms", "requests", "errors"
    );
    for r in &rows {
        println!(
            "{:<22} {:>6} {:>12.0} {:>9.2} {:>9.2} {:>10} {:>8}",
            r.phase,
            r.tasks,
            r.report.rps(),
            r.report.latency.p50,
            r.report.latency.p99,
            r.report.total(),
            r.report.failed()
        );
    }
    if let [a, b] = &rows[..] {
        println!(
            "\nscaling {} -> {} tasks changed throughput by {:+.0}% (client-visible errors: {} then {})",
            a.tasks,
            b.tasks,
            (b.report.rps() / a.report.rps().max(1.0) - 1.0) * 100.0,
            a.report.failed(),
            b.report.failed()
        );
    }
    Ok(())
}

async fn demo(client: &Client, image: &str, seconds: f64, connections: usize) -> anyhow::Result<Vec<Row>> {
    let s = stage("wait for the agents");
    wait_for("three connected agents", Duration::from_secs(60), || async {
        // The first agent creates the default cluster; until then the list fails.
        let Ok(l) = client
            .call_all(
                "ListContainerInstances",
                &json!({"cluster": "default"}),
                "containerInstanceArns",
            )
            .await
        else {
            return Ok(None);
        };
        if l.len() < 3 {
            return Ok(None);
        }
        let d = client
            .call(
                "DescribeContainerInstances",
                &json!({"cluster": "default", "containerInstances": l}),
            )
            .await?;
        let connected = d["containerInstances"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|c| c["agentConnected"] == true).count());
        Ok((connected >= 3).then_some(d))
    })
    .await
    .context("stage 'wait for the agents'")?;
    s.done();

    let s = stage("register the workload and create the services");
    for (family, env) in [
        ("web", json!([{"name": "NAME", "value": "web"}])),
        (
            "flaky",
            json!([{"name": "NAME", "value": "flaky"}, {"name": "FAIL_RATE", "value": "0.1"}]),
        ),
    ] {
        client
            .call(
                "RegisterTaskDefinition",
                &json!({"family": family, "containerDefinitions": [{
                    "name": "app", "image": image, "cpu": 128, "memory": 64, "essential": true,
                    "environment": env, "portMappings": [{"containerPort": 8080}]}]}),
            )
            .await
            .context("stage 'register the workload'")?;
    }
    // One target group behind the load balancer; both services register in
    // it through `loadBalancers`, as ECS services do with an ALB.
    let tg = elb(
        client,
        "CreateTargetGroup",
        json!({"targetGroupName": "web", "deregistrationDelaySeconds": 2,
               "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                               "healthyThreshold": 2, "unhealthyThreshold": 2}}),
    )
    .await
    .context("stage 'create the target group'")?;
    let tg_arn = tg["targetGroups"][0]["targetGroupArn"].clone();
    for (svc, n) in [("web", 2), ("flaky", 1)] {
        client
            .call(
                "CreateService",
                &json!({"cluster": "default", "serviceName": svc, "taskDefinition": svc, "desiredCount": n,
                        "loadBalancers": [{"targetGroupArn": tg_arn, "containerName": "app", "containerPort": 8080}]}),
            )
            .await
            .context("stage 'create the services'")?;
    }
    wait_running(client, "web", 2)
        .await
        .context("stage 'create the services'")?;
    wait_running(client, "flaky", 1)
        .await
        .context("stage 'create the services'")?;
    s.done();

    let s = stage("put the load balancer in front");
    elb(
        client,
        "CreateLoadBalancer",
        json!({"loadBalancerName": "demo", "listeners": [{"port": 0, "defaultTargetGroup": "web"}]}),
    )
    .await
    .context("stage 'load balancer'")?;
    let lb_addr = wait_for("the load balancer's listener", Duration::from_secs(30), || async {
        let d = elb(client, "DescribeLoadBalancers", json!({"names": ["demo"]})).await?;
        Ok(d["loadBalancers"][0]["listeners"][0]["address"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| json!(a.to_string())))
    })
    .await
    .context("stage 'load balancer'")?;
    let lb_addr: SocketAddr = lb_addr.as_str().unwrap_or_default().parse()?;
    let n = wait_healthy(client, 3).await.context("stage 'load balancer'")?;
    note(format!(
        "http://{lb_addr} -> {n} targets registered by the reconciler (one fails 10% of requests)"
    ));
    s.done();

    let mut rows = Vec::new();
    let load = |n: usize, phase: &str| {
        let phase = phase.to_string();
        async move {
            let mut spec = LoadSpec::new(format!("http://{lb_addr}/"));
            spec.connections = connections;
            spec.duration = Some(Duration::from_secs_f64(seconds));
            let report = loadgen::run(&spec).await?;
            Ok::<Row, anyhow::Error>(Row {
                phase,
                tasks: n,
                report,
            })
        }
    };
    let s = stage("load test");
    rows.push(load(n, "before scaling").await.context("stage 'load test'")?);
    s.done();

    let s = stage("scale web 2 -> 5");
    client
        .call(
            "UpdateService",
            &json!({"cluster": "default", "service": "web", "desiredCount": 5}),
        )
        .await
        .context("stage 'scale'")?;
    wait_running(client, "web", 5).await.context("stage 'scale'")?;
    let after = wait_healthy(client, 6).await.context("stage 'scale'")?;
    s.done();

    let s = stage("load test after scaling");
    rows.push(
        load(after, "after scaling")
            .await
            .context("stage 'load test after scaling'")?,
    );
    s.done();
    Ok(rows)
}
