//! Services end to end against real processes: a `berth server` and two
//! `berth agent`s (different zones, port ranges and state dirs) running the
//! test HTTP server, driven through the ECS API. One service of 4 tasks
//! goes through: creation → steady; kill -9 of a task → replaced, steady
//! again; draining an instance → tasks move, never fewer healthy than the
//! minimum; a rolling deployment at 100%/200% → never fewer than 4 healthy;
//! a revision that crashes after 2 s → circuit breaker fails it and rolls
//! back; scale 4 → 1 with one task protected → that task survives. After
//! every step the discovery DNS (SRV over UDP and TCP) lists exactly the
//! healthy tasks' host ports. Healthy counts during draining and rolling
//! are sampled continuously in the background and every sample is checked.
//!
//! The same scenarios run with the process driver and the docker driver;
//! without a Docker engine or the `berth-testapp:latest` image
//! (`scripts/build-test-image`) the docker variant prints why it is skipped.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod procs;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_dns::{Answer, RecordType, ResponseCode, Transport};
use procs::{Proc, berth, wait};
use serde_json::{Value, json};

const IMAGE: &str = "berth-testapp:latest";
const SERVICE: &str = "web";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Process,
    Docker,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Process => "process",
            Driver::Docker => "docker",
        }
    }
}

/// Everything the suite started; dropping it removes what is left (task
/// processes or containers first, then agents and the server).
struct Cluster {
    driver: Driver,
    name: String,
    url: String,
    dns: SocketAddr,
    /// Host IP (`berth.host-ip`) by container instance ARN.
    ips: std::collections::BTreeMap<String, IpAddr>,
    http: reqwest::Client,
    agent_states: Vec<PathBuf>,
    agents: Vec<Proc>,
    _server: Proc,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, so nothing restarts what is removed next.
        self.agents.clear();
        match self.driver {
            Driver::Process => {
                for state in &self.agent_states {
                    for pid in run_pids(state) {
                        // Only a live shim of ours (pids of exited ones may be reused).
                        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        if !String::from_utf8_lossy(&cmdline).contains("berth-testapp") {
                            continue;
                        }
                        // Each container is its own process group.
                        let _ = Command::new("kill").args(["-9", &format!("-{pid}")]).status();
                    }
                }
            }
            Driver::Docker => {
                let out = Command::new("docker")
                    .args(["ps", "-aq", "--filter", &format!("label=berth.cluster={}", self.name)])
                    .output();
                if let Ok(out) = out {
                    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("docker")
                            .args(["rm", "-f", id])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
    }
}

/// Pids recorded by the process driver under an agent's state dir.
fn run_pids(state: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "run.json")
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(pid) = v["pid"].as_i64()
            {
                out.push(pid as i32);
            }
        }
    }
    out
}

/// The run.json pid of one container (by its runtime id) under `state`.
fn container_pid(state: &Path, runtime_id: &str) -> Option<i32> {
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).ok()?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == runtime_id) && p.join("run.json").exists() {
                    let v: Value = serde_json::from_str(&std::fs::read_to_string(p.join("run.json")).ok()?).ok()?;
                    return v["pid"].as_i64().map(|p| p as i32);
                }
                stack.push(p);
            }
        }
    }
    None
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn start_server(dir: &Path) -> (Proc, String, SocketAddr) {
    let mut child = Command::new(berth())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--no-auth",
            "--agent-token",
            "t0k",
            "--agent-timeout-secs",
            "3",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected server banner: {line}"))
        .to_string();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let dns: SocketAddr = line
        .strip_prefix("berth dns listening on ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected DNS banner: {line}"));
    // Keep the pipe drained so the server never blocks on stdout.
    std::thread::spawn(move || for _ in out.lines() {});
    (Proc(child), url, dns)
}

/// `host_ip` is what the agent reports as its tasks' address (all of
/// 127.0.0.0/8 reaches this host, so each agent gets its own).
fn start_agent(driver: Driver, url: &str, cluster: &str, state: &Path, zone: &str, ports: &str, host_ip: &str) -> Proc {
    Proc(
        Command::new(berth())
            .args(["agent", "--server", url, "--cluster", cluster, "--token", "t0k"])
            .args(["--driver", driver.name()])
            .args(["--cpu-units", "4096", "--memory-mib", "4096"])
            .args([
                "--metadata-listen",
                "127.0.0.1:0",
                "--port-range",
                ports,
                "--host-ip",
                host_ip,
            ])
            .arg("--attribute")
            .arg(format!("ecs.availability-zone={zone}"))
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start berth agent"),
    )
}

impl Cluster {
    async fn call(&self, op: &str, mut body: Value) -> Value {
        if body.get("cluster").is_none() && op != "CreateCluster" && op != "RegisterTaskDefinition" {
            body["cluster"] = json!(self.name);
        }
        let resp = self
            .http
            .post(&self.url)
            .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{op}: {status} {v}");
        v
    }

    /// The service's tasks that still want to run.
    async fn tasks(&self) -> Vec<Value> {
        let l = self
            .call("ListTasks", json!({"serviceName": SERVICE, "desiredStatus": "RUNNING"}))
            .await;
        let arns = l["taskArns"].as_array().cloned().unwrap_or_default();
        if arns.is_empty() {
            return Vec::new();
        }
        let d = self.call("DescribeTasks", json!({"tasks": arns})).await;
        d["tasks"].as_array().cloned().unwrap_or_default()
    }

    async fn healthy(&self) -> Vec<Value> {
        self.tasks().await.into_iter().filter(healthy).collect()
    }

    async fn service(&self) -> Value {
        self.call("DescribeServices", json!({"services": [SERVICE]})).await["services"][0].clone()
    }

    /// SRV ports for the service, over `transport`, for one name form.
    async fn srv_ports(&self, name: &str, transport: Transport) -> Option<BTreeSet<u16>> {
        let r = berth_dns::query(self.dns, name, RecordType::SRV, transport)
            .await
            .ok()?;
        if r.code != ResponseCode::NoError {
            return None;
        }
        Some(
            r.answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Srv { port, .. } => Some(*port),
                    Answer::Addr(_) => None,
                })
                .collect(),
        )
    }

    /// The host IP of a task's container instance.
    fn ip_of(&self, t: &Value) -> IpAddr {
        self.ips[t["containerInstanceArn"].as_str().unwrap()]
    }

    /// The A records of a name.
    async fn a_records(&self, name: &str) -> Option<BTreeSet<IpAddr>> {
        let r = berth_dns::query(self.dns, name, RecordType::A, Transport::Udp)
            .await
            .ok()?;
        (r.code == ResponseCode::NoError).then(|| {
            r.answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Addr(ip) => Some(*ip),
                    Answer::Srv { .. } => None,
                })
                .collect()
        })
    }

    /// Waits until DNS (both name forms, UDP and TCP) lists exactly the
    /// host ports of the healthy tasks, and A lists their hosts' IPs.
    async fn dns_tracks(&self, step: &str) {
        let plain = format!("{SERVICE}.{}.", self.name);
        let tcp = format!("_{SERVICE}._tcp.{}.", self.name);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let healthy = self.healthy().await;
            let want: BTreeSet<u16> = healthy.iter().map(host_port).collect();
            let want_ips: BTreeSet<IpAddr> = healthy.iter().map(|t| self.ip_of(t)).collect();
            let a = self.srv_ports(&plain, Transport::Udp).await;
            let b = self.srv_ports(&tcp, Transport::Tcp).await;
            let ips = self.a_records(&plain).await;
            if a.as_ref() == Some(&want) && b.as_ref() == Some(&want) && ips.as_ref() == Some(&want_ips) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: DNS SRV {a:?} / {b:?} and A {ips:?} do not match the healthy tasks' \
                 ports {want:?} and host IPs {want_ips:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn healthy(t: &Value) -> bool {
    t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING" && t["healthStatus"] == "HEALTHY"
}

fn host_port(t: &Value) -> u16 {
    t["containers"][0]["networkBindings"][0]["hostPort"].as_u64().unwrap() as u16
}

fn id_of(t: &Value) -> String {
    t["taskArn"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

fn revision_of(t: &Value) -> String {
    t["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

/// Samples the number of healthy tasks until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<(f64, usize)>>,
}

impl Sampler {
    fn start(c: &Cluster) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (http, url, name) = (c.http.clone(), c.url.clone(), c.name.clone());
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            // `healthy()` without the Cluster (which is not Sync).
            let call = |op: &'static str, body: Value| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let r = http
                        .post(&url)
                        .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
                        .header("Content-Type", "application/x-amz-json-1.1")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    r.json::<Value>().await.unwrap()
                }
            };
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let l = call(
                    "ListTasks",
                    json!({"cluster": name, "serviceName": SERVICE, "desiredStatus": "RUNNING"}),
                )
                .await;
                let arns = l["taskArns"].as_array().cloned().unwrap_or_default();
                let n = if arns.is_empty() {
                    0
                } else {
                    let d = call("DescribeTasks", json!({"cluster": name, "tasks": arns})).await;
                    d["tasks"]
                        .as_array()
                        .map_or(0, |ts| ts.iter().filter(|t| healthy(t)).count())
                };
                samples.push((now(), n));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        });
        Sampler { stop, handle }
    }

    async fn finish(self, what: &str, min: usize) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.await.unwrap();
        assert!(samples.len() >= 3, "{what}: only {} samples", samples.len());
        let low: Vec<_> = samples.iter().filter(|(_, n)| *n < min).collect();
        assert!(
            low.is_empty(),
            "{what}: healthy tasks dropped below {min} in {} of {} samples: {low:?}",
            low.len(),
            samples.len()
        );
        eprintln!("{what}: {} samples, never below {min} healthy", samples.len());
    }
}

fn taskdef(driver: Driver, testapp: &Path, name: &str, crash: bool) -> Value {
    let (image, probe) = match driver {
        Driver::Process => (testapp.display().to_string(), testapp.display().to_string()),
        Driver::Docker => (IMAGE.to_string(), "/berth-testapp".to_string()),
    };
    let mut command = vec!["--name".to_string(), name.to_string()];
    if crash {
        command.extend(["--exit-after-ms", "2000", "--exit-code", "3"].map(String::from));
    }
    json!({"family": SERVICE, "containerDefinitions": [{
        "name": "app", "image": image, "cpu": 128, "memory": 64, "command": command,
        "portMappings": [{"containerPort": 8080}], "stopTimeout": 2,
        "healthCheck": {"command": ["CMD", probe, "--help"], "interval": 5, "timeout": 2, "retries": 1}
    }]})
}

/// Waits until the service has `n` healthy tasks of `revision`, nothing
/// else wanting to run, one COMPLETED deployment, and a steady-state event
/// newer than `since`.
async fn wait_steady(c: &Cluster, what: &str, n: usize, revision: &str, since: f64) -> Vec<Value> {
    wait(what, 120, || async {
        let tasks = c.tasks().await;
        let ok = tasks.len() == n && tasks.iter().all(|t| healthy(t) && revision_of(t) == revision);
        if !ok {
            return None;
        }
        let s = c.service().await;
        let deployments = s["deployments"].as_array().cloned().unwrap_or_default();
        let completed = deployments.len() == 1 && deployments[0]["rolloutState"] == "COMPLETED";
        let steady = s["events"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["message"].as_str().unwrap_or("").contains("steady state")
                    && e["createdAt"].as_f64().unwrap_or(0.0) >= since
            })
        });
        (completed && steady && s["runningCount"] == n).then_some(tasks)
    })
    .await
}

async fn suite(driver: Driver) {
    let t0 = Instant::now();
    let testapp = Path::new(berth()).with_file_name("berth-testapp");
    assert!(
        testapp.exists(),
        "{} missing: build the workspace binaries first",
        testapp.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (server, url, dns) = start_server(&dir.path().join("server"));
    let name = format!("e2e{}{}", driver.name(), std::process::id());
    let states = vec![dir.path().join("agent-a"), dir.path().join("agent-b")];
    let (base_a, base_b) = match driver {
        Driver::Process => (62000, 62200),
        Driver::Docker => (62400, 62600),
    };
    let agents = vec![
        start_agent(
            driver,
            &url,
            &name,
            &states[0],
            "zone-a",
            &format!("{base_a}-{}", base_a + 199),
            "127.0.0.1",
        ),
        start_agent(
            driver,
            &url,
            &name,
            &states[1],
            "zone-b",
            &format!("{base_b}-{}", base_b + 199),
            "127.0.0.2",
        ),
    ];
    let mut c = Cluster {
        driver,
        name: name.clone(),
        url,
        dns,
        ips: Default::default(),
        http: reqwest::Client::new(),
        agent_states: states,
        agents,
        _server: server,
        _dir: dir,
    };
    c.call("CreateCluster", json!({"clusterName": name})).await;
    let instances: Vec<Value> = wait("both agents to register", 60, || async {
        let l = c.call("ListContainerInstances", json!({})).await;
        let arns = l["containerInstanceArns"].as_array().cloned().unwrap_or_default();
        if arns.len() < 2 {
            return None;
        }
        let d = c
            .call("DescribeContainerInstances", json!({"containerInstances": arns}))
            .await;
        d["containerInstances"].as_array().cloned()
    })
    .await;
    for i in &instances {
        let ip = i["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "berth.host-ip")
            .and_then(|a| a["value"].as_str())
            .unwrap()
            .parse()
            .unwrap();
        c.ips
            .insert(i["containerInstanceArn"].as_str().unwrap().to_string(), ip);
    }
    let distinct: BTreeSet<&IpAddr> = c.ips.values().collect();
    assert_eq!(distinct.len(), 2, "each agent reports its --host-ip: {:?}", c.ips);
    let c = c;
    for rev in 1..=3 {
        let td = taskdef(driver, &testapp, &format!("v{rev}"), rev == 3);
        let r = c.call("RegisterTaskDefinition", td).await;
        assert_eq!(r["taskDefinition"]["revision"], rev);
    }

    // 1. Create: 4 RUNNING and healthy, spread over both zones, steady.
    let since = now();
    c.call(
        "CreateService",
        json!({"serviceName": SERVICE, "taskDefinition": format!("{SERVICE}:1"), "desiredCount": 4,
               // Tasks must stay healthy this long for a deployment to
               // complete; crashes within it count against the breaker.
               "healthCheckGracePeriodSeconds": 4,
               "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200,
                   "deploymentCircuitBreaker": {"enable": true, "rollback": true}}}),
    )
    .await;
    let tasks = wait_steady(&c, "4 healthy tasks after CreateService", 4, "1", since).await;
    let on: BTreeSet<&str> = tasks
        .iter()
        .map(|t| t["containerInstanceArn"].as_str().unwrap())
        .collect();
    assert_eq!(on.len(), 2, "tasks are spread over both instances");
    c.dns_tracks("after create").await;
    // Each task answers on the port DNS hands out.
    for t in &tasks {
        let body = c
            .http
            .get(format!("http://{}:{}/hello", c.ip_of(t), host_port(t)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("v1 GET /hello"), "{body}");
    }
    let listing: Value = c
        .http
        .get(format!("{}/v1/discovery/{name}/{SERVICE}", c.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["tasks"].as_array().map(Vec::len), Some(4), "{listing}");
    eprintln!("[{:?}] created: 4 healthy", t0.elapsed());

    // 2. kill -9 one task's process: replaced, steady again.
    let victim = tasks[0].clone();
    let runtime_id = victim["containers"][0]["runtimeId"].as_str().unwrap().to_string();
    let since = now();
    match driver {
        Driver::Process => {
            let pid = c
                .agent_states
                .iter()
                .find_map(|s| container_pid(s, &runtime_id))
                .unwrap_or_else(|| panic!("no run.json for container {runtime_id}"));
            // The workload runs under a shell shim: kill its children (the
            // test app), then the shim's whole group.
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for child in children.split_whitespace() {
                assert!(Command::new("kill").args(["-9", child]).status().unwrap().success());
            }
            if children.trim().is_empty() {
                assert!(
                    Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap()
                        .success()
                );
            }
        }
        Driver::Docker => {
            let ok = Command::new("docker")
                .args(["kill", "-s", "KILL", &runtime_id])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "docker kill {runtime_id}");
        }
    }
    let victim_id = id_of(&victim);
    wait("the killed task to be STOPPED", 60, || async {
        let d = c
            .call("DescribeTasks", json!({"tasks": [victim["taskArn"].clone()]}))
            .await;
        (d["tasks"][0]["lastStatus"] == "STOPPED").then_some(())
    })
    .await;
    let tasks = wait_steady(&c, "the killed task to be replaced", 4, "1", since).await;
    assert!(tasks.iter().all(|t| id_of(t) != victim_id));
    c.dns_tracks("after kill -9").await;
    eprintln!("[{:?}] kill -9: replaced", t0.elapsed());

    // 3. Drain an instance: its tasks move, never below 100% healthy.
    let drained = instances[0]["containerInstanceArn"].as_str().unwrap().to_string();
    let sampler = Sampler::start(&c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = now();
    c.call(
        "UpdateContainerInstancesState",
        json!({"containerInstances": [drained.clone()], "status": "DRAINING"}),
    )
    .await;
    let tasks = wait("tasks to leave the draining instance", 120, || async {
        let tasks = c.tasks().await;
        (tasks.len() == 4
            && tasks
                .iter()
                .all(|t| healthy(t) && t["containerInstanceArn"] != drained.as_str()))
        .then_some(tasks)
    })
    .await;
    sampler.finish("draining", 4).await;
    assert_eq!(tasks.len(), 4);
    wait_steady(&c, "steady after draining", 4, "1", since).await;
    c.dns_tracks("after draining").await;
    c.call(
        "UpdateContainerInstancesState",
        json!({"containerInstances": [drained.clone()], "status": "ACTIVE"}),
    )
    .await;
    eprintln!("[{:?}] drained", t0.elapsed());

    // 4. Roll to revision 2 at 100% / 200%: never fewer than 4 healthy.
    let sampler = Sampler::start(&c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = now();
    c.call(
        "UpdateService",
        json!({"service": SERVICE, "taskDefinition": format!("{SERVICE}:2")}),
    )
    .await;
    let tasks = wait_steady(&c, "the roll to revision 2", 4, "2", since).await;
    sampler.finish("rolling deployment", 4).await;
    c.dns_tracks("after the roll").await;
    for t in &tasks {
        let body = c
            .http
            .get(format!("http://{}:{}/hello", c.ip_of(t), host_port(t)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("v2 GET /hello"), "{body}");
    }
    eprintln!("[{:?}] rolled to v2", t0.elapsed());

    // 5. A revision that crashes after 2 s: the breaker fails it, rolls back.
    let since = now();
    c.call(
        "UpdateService",
        json!({"service": SERVICE, "taskDefinition": format!("{SERVICE}:3")}),
    )
    .await;
    let failed = wait("the crashing deployment to fail", 120, || async {
        let s = c.service().await;
        let ok = s["events"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                let m = e["message"].as_str().unwrap_or("");
                m.contains("rolling back") && e["createdAt"].as_f64().unwrap_or(0.0) >= since
            })
        });
        ok.then_some(s)
    })
    .await;
    let msgs: Vec<&str> = failed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("circuit breaker") && m.contains("failed")),
        "{msgs:?}"
    );
    wait_steady(&c, "the rollback to revision 2", 4, "2", since).await;
    let s = c.service().await;
    assert!(
        s["taskDefinition"].as_str().unwrap().ends_with(&format!("{SERVICE}:2")),
        "{s}"
    );
    c.dns_tracks("after the rollback").await;
    eprintln!("[{:?}] crash deployment rolled back", t0.elapsed());

    // 6. Scale 4 → 1 with one task protected: that one survives.
    let tasks = c.healthy().await;
    let keep = tasks[tasks.len() - 1].clone();
    let p = c
        .call(
            "UpdateTaskProtection",
            json!({"tasks": [keep["taskArn"].clone()], "protectionEnabled": true, "expiresInMinutes": 60}),
        )
        .await;
    assert_eq!(p["protectedTasks"][0]["protectionEnabled"], true, "{p}");
    let since = now();
    c.call("UpdateService", json!({"service": SERVICE, "desiredCount": 1}))
        .await;
    let tasks = wait_steady(&c, "scale-in to 1", 1, "2", since).await;
    assert_eq!(id_of(&tasks[0]), id_of(&keep), "the protected task survives scale-in");
    c.dns_tracks("after scale-in").await;
    eprintln!("[{:?}] scaled in to the protected task", t0.elapsed());

    // Clean up through the API: no task left running.
    c.call("UpdateService", json!({"service": SERVICE, "desiredCount": 0}))
        .await;
    c.call(
        "UpdateTaskProtection",
        json!({"tasks": [keep["taskArn"].clone()], "protectionEnabled": false}),
    )
    .await;
    wait("every task to stop", 60, || async {
        c.tasks().await.is_empty().then_some(())
    })
    .await;
    c.dns_tracks("after scaling to 0").await;
    c.call("DeleteService", json!({"service": SERVICE})).await;
    eprintln!("[{:?}] {} driver suite done", t0.elapsed(), driver.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_e2e_process_driver() {
    suite(Driver::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_e2e_docker_driver() {
    // Skipped only when asked to (as the agent's docker tests): a machine
    // without Docker must not pass this test silently.
    let skip = std::env::var("BERTH_SKIP_DOCKER").is_ok_and(|v| v == "1");
    if !berth_dev::docker_available().await {
        assert!(
            skip,
            "no Docker engine answers (`docker info` failed); set BERTH_SKIP_DOCKER=1 to skip the docker tests explicitly"
        );
        eprintln!("SKIPPED services_e2e_docker_driver: BERTH_SKIP_DOCKER=1 and no Docker engine");
        return;
    }
    let image = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !image {
        assert!(
            skip,
            "image {IMAGE} missing: run scripts/build-test-image (or set BERTH_SKIP_DOCKER=1)"
        );
        eprintln!("SKIPPED services_e2e_docker_driver: BERTH_SKIP_DOCKER=1 and image {IMAGE} missing");
        return;
    }
    suite(Driver::Docker).await;
}
