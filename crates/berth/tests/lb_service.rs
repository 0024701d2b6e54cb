//! Services behind Berth's load balancer, end to end: a real dev cluster
//! (store, API, controllers, process-driver agents running `berth-testapp`),
//! a target group and a load balancer created through the API, and the
//! reconciler registering the service's tasks. Traffic through the LB
//! survives a task killed with SIGKILL and a rolling deployment; a backend
//! that hangs times out and is ejected; malformed requests get a 400 without
//! disturbing other clients; the API refuses bad input naming the field.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_agent::daemon::DriverKind;
use berth_dev::{AgentSpec, DevCluster, DevConfig};
use berth_lb::loadgen::{self, LoadSpec};
use berth_model::Resources;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn testapp() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name("berth-testapp");
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first",
        p.display()
    );
    p
}

/// A dev cluster with `agents` process-driver agents that take tasks, plus
/// one first agent without capacity: the first agent's port slice starts at
/// 61000, the port every local dev cluster hands out first, so a process
/// left over from another run on this host cannot fail these tests.
async fn cluster(dir: &Path, agents: usize) -> DevCluster {
    DevCluster::start(DevConfig {
        data_dir: dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        agents: (0..=agents)
            .map(|i| AgentSpec {
                name: format!("agent-{i}"),
                zone: format!("us-east-1{}", (b'a' + i as u8) as char),
                driver: DriverKind::Process,
                resources: if i == 0 {
                    Resources::new(1, 1)
                } else {
                    Resources::new(4096, 4096)
                },
            })
            .collect(),
        credentials: None,
        agent_token: "t".into(),
        agent_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap()
}

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn ecs(&self, op: &str, body: Value) -> Value {
        let (status, v) = self.ecs_raw(op, body).await;
        assert!(status < 300, "{op}: {status} {v}");
        v
    }

    async fn ecs_raw(&self, op: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/", self.url))
            .header("x-amz-target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn elb_raw(&self, op: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/elb/{op}", self.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn elb(&self, op: &str, body: Value) -> Value {
        let (status, v) = self.elb_raw(op, body).await;
        assert!(status < 300, "{op}: {status} {v}");
        v
    }

    async fn targets(&self, group: &str) -> Vec<Value> {
        self.elb("DescribeTargetHealth", json!({"targetGroup": group})).await["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn healthy(&self, group: &str) -> Vec<Value> {
        self.targets(group)
            .await
            .into_iter()
            .filter(|t| t["state"] == "healthy")
            .collect()
    }
}

async fn wait<F, Fut, T>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `n` healthy targets; on timeout, shows what there was.
async fn wait_healthy(api: &Api, group: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let h = api.healthy(group).await;
        if h.len() == n {
            return h;
        }
        if tokio::time::Instant::now() > deadline {
            let tasks = api.ecs("ListTasks", json!({"desiredStatus": "STOPPED"})).await;
            let first: Vec<Value> = tasks["taskArns"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .take(2)
                .collect();
            let d = api.ecs("DescribeTasks", json!({"tasks": first})).await;
            let svcs = api.ecs("ListServices", json!({})).await;
            let s = api
                .ecs("DescribeServices", json!({"services": svcs["serviceArns"]}))
                .await;
            panic!(
                "timed out waiting for {n} healthy targets in {group}: {:#}\ntasks: {d:#}\nservices: {s:#}",
                json!(api.targets(group).await)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(api: &Api, agents: usize) {
    wait("agents", 60, || async {
        let (s, v) = api.ecs_raw("ListContainerInstances", json!({})).await;
        (s == 200 && v["containerInstanceArns"].as_array().map_or(0, Vec::len) > agents).then_some(())
    })
    .await;
}

/// A dev cluster with `agents` agents (see [`cluster`]) and its API, once
/// the agents have registered. Dropped in reverse order: the API, the
/// cluster, the reaper of leftover workloads, then the directory.
async fn start(agents: usize) -> (tempfile::TempDir, Reap, DevCluster, Api) {
    let dir = tempfile::tempdir().unwrap();
    let reap = Reap(dir.path().to_path_buf());
    let cluster = cluster(dir.path(), agents).await;
    let api = Api {
        http: reqwest::Client::new(),
        url: cluster.url.clone(),
    };
    setup(&api, agents).await;
    (dir, reap, cluster, api)
}

async fn register(api: &Api, family: &str, env: Value) {
    api.ecs(
        "RegisterTaskDefinition",
        json!({"family": family, "containerDefinitions": [{
            "name": "app", "image": testapp().display().to_string(), "cpu": 64, "memory": 32,
            "essential": true, "environment": env, "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;
}

async fn target_group(api: &Api, name: &str) -> String {
    let v = api
        .elb(
            "CreateTargetGroup",
            json!({"targetGroupName": name, "deregistrationDelaySeconds": 2, "requestTimeoutSeconds": 1,
                   "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                                   "healthyThreshold": 2, "unhealthyThreshold": 2}}),
        )
        .await;
    let arn = v["targetGroups"][0]["targetGroupArn"].as_str().unwrap().to_string();
    assert!(arn.starts_with("arn:aws:elasticloadbalancing:us-east-1:"), "{arn}");
    assert!(arn.contains(&format!(":targetgroup/{name}/")), "{arn}");
    arn
}

async fn load_balancer(api: &Api, name: &str, group: &str) -> SocketAddr {
    api.elb(
        "CreateLoadBalancer",
        json!({"loadBalancerName": name, "listeners": [{"port": 0, "defaultTargetGroup": group}]}),
    )
    .await;
    wait("the listener address", 30, || async {
        let d = api.elb("DescribeLoadBalancers", json!({"names": [name]})).await;
        d["loadBalancers"][0]["listeners"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
    })
    .await
}

/// Continuous GET load through the LB until `stop` is set.
fn background_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<loadgen::LoadReport> {
    tokio::spawn(async move {
        let mut spec = LoadSpec::new(format!("http://{addr}/"));
        spec.connections = 4;
        spec.duration = Some(Duration::from_secs(600));
        spec.stop = Some(stop);
        loadgen::run(&spec).await.unwrap()
    })
}

/// Pids of the live `berth-testapp` processes the agents started (from the
/// process driver's `run.json` records).
fn task_pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "run.json")
                && !p.with_file_name("exit.json").exists()
                && let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap_or_default())
                && let Some(pid) = v["pid"].as_i64()
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                // The driver's record names the wrapper shell; the workload is its child.
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
                match children.split_whitespace().next().and_then(|c| c.parse::<i32>().ok()) {
                    Some(c) => out.push(c),
                    None => out.push(pid as i32),
                }
            }
        }
    }
    out
}

/// Kills the workload processes under a test's directory when dropped, so a
/// failing test leaves nothing running.
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in task_pids(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn teardown(api: &Api, cluster: DevCluster, dir: &Path, services: &[&str]) {
    for s in services {
        api.ecs("UpdateService", json!({"service": s, "desiredCount": 0})).await;
    }
    for s in services {
        wait("services to stop", 60, || async {
            let d = api.ecs("DescribeServices", json!({"services": [s]})).await;
            (d["services"][0]["runningCount"] == 0 && d["services"][0]["pendingCount"] == 0).then_some(())
        })
        .await;
        api.ecs("DeleteService", json!({"service": s, "force": true})).await;
    }
    wait("task processes to exit", 60, || async {
        task_pids(dir).is_empty().then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_behind_lb_survives_kill_and_rolling_deployment() {
    let (dir, _reap, cluster, api) = start(3).await;
    register(&api, "web", json!([{"name": "NAME", "value": "v1"}])).await;
    let arn = target_group(&api, "web").await;
    let svc = api
        .ecs(
            "CreateService",
            json!({"serviceName": "web", "taskDefinition": "web", "desiredCount": 3,
                   "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200},
                   "loadBalancers": [{"targetGroupArn": arn, "containerName": "app", "containerPort": 8080}]}),
        )
        .await;
    assert_eq!(svc["service"]["loadBalancers"][0]["targetGroupArn"], json!(arn));
    let addr = load_balancer(&api, "front", "web").await;

    // Three registered, healthy targets; traffic flows.
    let first = wait_healthy(&api, "web", 3).await;
    let body = reqwest::get(format!("http://{addr}/hello")).await.unwrap();
    assert_eq!(body.status(), 200);
    assert!(body.text().await.unwrap().contains("v1"));
    let d = api.ecs("DescribeServices", json!({"services": ["web"]})).await;
    assert_eq!(d["services"][0]["loadBalancers"][0]["containerPort"], 8080);

    // SIGKILL one task's process under load: retries hide it, and a
    // replacement is registered and receives traffic once healthy.
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = task_pids(dir.path());
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids[0] > 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let old: Vec<String> = first
        .iter()
        .map(|t| t["taskArn"].as_str().unwrap().to_string())
        .collect();
    let replaced = wait("a replacement target to be healthy", 90, || async {
        let h = api.healthy("web").await;
        let fresh = h
            .iter()
            .filter(|t| !old.contains(&t["taskArn"].as_str().unwrap().to_string()))
            .count();
        (h.len() == 3 && fresh == 1).then_some(h)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(report.total() > 0);
    // At most the requests in flight on the killed target's connections
    // (4 connections) may fail when their retry is refused by the budget.
    assert!(report.failed() <= 4, "client-visible failures after a kill: {report:?}");
    let m = cluster.lb.metrics_text();
    let fresh = replaced
        .iter()
        .find(|t| !old.contains(&t["taskArn"].as_str().unwrap().to_string()))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The replacement serves: send until its counter moves.
    wait("the replacement to receive requests", 30, || async {
        let _ = reqwest::get(format!("http://{addr}/x")).await;
        let m = cluster.lb.metrics_text();
        m.lines()
            .any(|l| l.contains(&fresh) && l.contains("requests") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    drop(m);

    // Rolling deployment under continuous load: zero failed requests.
    register(&api, "web", json!([{"name": "NAME", "value": "v2"}])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.ecs("UpdateService", json!({"service": "web", "taskDefinition": "web"}))
        .await;
    wait("the deployment to complete", 180, || async {
        let d = api.ecs("DescribeServices", json!({"services": ["web"]})).await;
        let deps = d["services"][0]["deployments"].as_array().cloned().unwrap_or_default();
        let done = deps.len() == 1 && deps[0]["rolloutState"] == "COMPLETED";
        (done && api.healthy("web").await.len() == 3 && api.targets("web").await.len() == 3).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(report.total() > 0);
    assert_eq!(
        report.failed(),
        0,
        "failed requests during a rolling deployment: {report:?}"
    );
    let body = reqwest::get(format!("http://{addr}/hello"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("v2"), "{body}");
    teardown(&api, cluster, dir.path(), &["web"]).await;
}

/// Scaling in a service behind the LB: the task leaving is DEACTIVATING
/// while its target drains, the request it was serving completes, and it
/// stops as soon as nothing is in flight, long before the group's
/// deregistration delay. DescribeServices shows the targets' health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_ends_when_in_flight_requests_finish() {
    let (dir, _reap, cluster, api) = start(2).await;
    register(&api, "drain", json!([])).await;
    let v = api
        .elb(
            "CreateTargetGroup",
            json!({"targetGroupName": "drain", "deregistrationDelaySeconds": 600, "requestTimeoutSeconds": 60,
                   "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                                   "healthyThreshold": 2, "unhealthyThreshold": 2}}),
        )
        .await;
    let arn = v["targetGroups"][0]["targetGroupArn"].as_str().unwrap().to_string();
    api.ecs(
        "CreateService",
        json!({"serviceName": "drain", "taskDefinition": "drain", "desiredCount": 2,
               "loadBalancers": [{"targetGroupArn": arn, "containerName": "app", "containerPort": 8080}]}),
    )
    .await;
    let addr = load_balancer(&api, "front", "drain").await;
    wait_healthy(&api, "drain", 2).await;

    // DescribeServices lists the service's targets and their health.
    let d = api.ecs("DescribeServices", json!({"services": ["drain"]})).await;
    let th = d["services"][0]["loadBalancers"][0]["targetHealth"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(th.len(), 2, "{th:?}");
    assert!(
        th.iter().all(|t| t["state"] == "healthy" && t["taskArn"].is_string()),
        "{th:?}"
    );

    // Slow requests in flight on both targets.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let r = reqwest::get(format!("http://{addr}/slow/6000")).await.unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    wait("requests in flight on both targets", 30, || async {
        let st = cluster.lb.status();
        let busy = st.iter().filter(|s| s.group == "drain" && s.in_flight > 0).count();
        (busy == 2).then_some(())
    })
    .await;

    api.ecs("UpdateService", json!({"service": "drain", "desiredCount": 1}))
        .await;
    let leaving = wait("a task to be DEACTIVATING", 30, || async {
        let l = api.ecs("ListTasks", json!({"serviceName": "drain"})).await;
        let d = api.ecs("DescribeTasks", json!({"tasks": l["taskArns"]})).await;
        d["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["lastStatus"] == "DEACTIVATING")
            .map(|t| t["taskArn"].as_str().unwrap().to_string())
    })
    .await;
    let draining = api.targets("drain").await;
    assert!(
        draining
            .iter()
            .any(|t| t["taskArn"] == leaving.as_str() && t["state"] == "draining"),
        "{draining:?}"
    );
    // In-flight requests on the draining target complete.
    for h in slow {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Then the task stops: the 600 s deregistration delay is not waited out.
    wait("the drained task to stop", 60, || async {
        let d = api.ecs("DescribeTasks", json!({"tasks": [leaving]})).await;
        (d["tasks"][0]["lastStatus"] == "STOPPED").then_some(())
    })
    .await;
    let left = api.targets("drain").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["taskArn"], leaving.as_str());
    teardown(&api, cluster, dir.path(), &["drain"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_is_ejected_and_malformed_requests_get_400() {
    let (dir, _reap, cluster, api) = start(1).await;
    register(&api, "ok", json!([{"name": "NAME", "value": "ok"}])).await;
    // Its health checks pass, but every other request hangs.
    register(&api, "hang", json!([{"name": "LATENCY_MS", "value": "600000"}])).await;
    let arn = target_group(&api, "mixed").await;
    for (name, n) in [("ok", 2), ("hang", 1)] {
        api.ecs(
            "CreateService",
            json!({"serviceName": name, "taskDefinition": name, "desiredCount": n,
                   "loadBalancers": [{"targetGroupArn": "mixed", "containerName": "app", "containerPort": 8080}]}),
        )
        .await;
    }
    let _ = arn;
    let addr = load_balancer(&api, "front", "mixed").await;
    wait_healthy(&api, "mixed", 3).await;

    // Requests that hit the hung target time out and are retried elsewhere;
    // the target is ejected.
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(addr, stop.clone());
    wait("the hung target to be ejected", 60, || async {
        api.targets("mixed")
            .await
            .iter()
            .any(|t| t["health"] == "ejected")
            .then_some(())
    })
    .await;

    // Malformed requests get a 400 while the load keeps flowing.
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let head = String::from_utf8_lossy(&buf);
        assert!(head.starts_with("HTTP/1.1 400"), "answer to garbage: {head:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(report.total() > 0);
    assert_eq!(report.failed(), 0, "client-visible failures: {report:?}");
    teardown(&api, cluster, dir.path(), &["ok", "hang"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_api_rejects_bad_input_naming_the_field() {
    let (dir, _reap, cluster, api) = start(1).await;
    let bad = |v: &(u16, Value), field: &str| {
        assert_eq!(v.0, 400, "{v:?}");
        assert_eq!(v.1["__type"], "InvalidParameterException", "{v:?}");
        assert!(
            v.1["message"].as_str().unwrap().contains(field),
            "{v:?} should name {field}"
        );
    };
    let r = api
        .elb_raw("CreateTargetGroup", json!({"targetGroupName": "bad name"}))
        .await;
    bad(&r, "targetGroupName");
    let r = api
        .elb_raw(
            "CreateTargetGroup",
            json!({"targetGroupName": "g", "healthCheck": {"intervalSeconds": 0}}),
        )
        .await;
    bad(&r, "healthCheck.intervalSeconds");
    let r = api
        .elb_raw(
            "CreateTargetGroup",
            json!({"targetGroupName": "g", "healthCheck": {"matcher": "2xx"}}),
        )
        .await;
    bad(&r, "healthCheck.matcher");
    let r = api
        .elb_raw("CreateTargetGroup", json!({"targetGroupName": "g", "protocol": "UDP"}))
        .await;
    bad(&r, "protocol");
    let r = api
        .elb_raw(
            "CreateTargetGroup",
            json!({"targetGroupName": "g", "deregistrationDelaySeconds": "x"}),
        )
        .await;
    bad(&r, "deregistrationDelaySeconds");
    api.elb("CreateTargetGroup", json!({"targetGroupName": "g"})).await;
    let r = api
        .elb_raw(
            "CreateLoadBalancer",
            json!({"loadBalancerName": "l", "listeners": [{"port": 0, "defaultTargetGroup": "nope"}]}),
        )
        .await;
    bad(&r, "listeners[0].defaultTargetGroup");
    let r = api
        .elb_raw(
            "CreateLoadBalancer",
            json!({"loadBalancerName": "l", "listeners": [{"port": 0, "rules": [{"pathPrefix": "api", "targetGroup": "g"}]}]}),
        )
        .await;
    bad(&r, "listeners[0].rules[0].pathPrefix");
    let r = api
        .elb_raw("CreateLoadBalancer", json!({"loadBalancerName": "l", "listeners": []}))
        .await;
    bad(&r, "listeners");
    let (s, v) = api
        .elb_raw("DescribeTargetHealth", json!({"targetGroup": "nope"}))
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ResourceNotFoundException")),
        "{v}"
    );
    let (s, v) = api.elb_raw("Nope", json!({})).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("UnknownOperationException")),
        "{v}"
    );
    let (s, v) = api
        .http
        .post(format!("{}/v1/elb/CreateTargetGroup", api.url))
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(s, 400);
    assert!(v.text().await.unwrap().contains("SerializationException"));

    // Services: unknown group, container or port.
    register(&api, "web", json!([])).await;
    for (lb, field) in [
        (
            json!({"targetGroupArn": "nope", "containerName": "app", "containerPort": 8080}),
            "loadBalancers[0].targetGroupArn",
        ),
        (
            json!({"targetGroupArn": "g", "containerName": "other", "containerPort": 8080}),
            "loadBalancers[0].containerName",
        ),
        (
            json!({"targetGroupArn": "g", "containerName": "app", "containerPort": 9999}),
            "loadBalancers[0].containerPort",
        ),
    ] {
        let r = api
            .ecs_raw(
                "CreateService",
                json!({"serviceName": "s", "taskDefinition": "web", "desiredCount": 0, "loadBalancers": [lb]}),
            )
            .await;
        bad(&r, field);
    }
    // A group in use cannot be deleted.
    api.ecs(
        "CreateService",
        json!({"serviceName": "s", "taskDefinition": "web", "desiredCount": 0,
               "loadBalancers": [{"targetGroupArn": "g", "containerName": "app", "containerPort": 8080}]}),
    )
    .await;
    let r = api.elb_raw("DeleteTargetGroup", json!({"targetGroup": "g"})).await;
    bad(&r, "targetGroup");
    teardown(&api, cluster, dir.path(), &["s"]).await;
}
