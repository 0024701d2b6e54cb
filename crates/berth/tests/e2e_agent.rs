//! Real processes end to end: a `berth server` and a `berth agent` (process
//! driver) as children. Run a task, see it RUNNING through the ECS API, reach
//! its dynamic host port, stop it and see STOPPED with its exit code; then
//! kill -9 the agent and restart it — the running task is re-adopted, not
//! started twice; then kill -9 the agent for longer than the timeout — the
//! server marks the task STOPPED, and the agent, once back, stops the
//! process it still had.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod procs;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use procs::{Proc, berth, call, wait};
use serde_json::{Value, json};

fn start_server(dir: &std::path::Path) -> (Proc, String) {
    let mut child = Command::new(berth())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--agent-token",
            "t0k",
            "--agent-timeout-secs",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth server");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected server banner: {line}"))
        .to_string();
    (Proc(child), url)
}

fn start_agent(url: &str, state: &std::path::Path) -> Proc {
    Proc(
        Command::new(berth())
            .args([
                "agent",
                "--server",
                url,
                "--cluster",
                "default",
                "--token",
                "t0k",
                "--driver",
                "process",
            ])
            .args([
                "--cpu-units",
                "2048",
                "--memory-mib",
                "2048",
                "--metadata-listen",
                "127.0.0.1:0",
            ])
            .args(["--port-range", "64000-64100"])
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start berth agent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_processes() {
    let testapp = std::path::Path::new(berth()).with_file_name("berth-testapp");
    assert!(
        testapp.exists(),
        "{} missing: build the workspace binaries first",
        testapp.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&dir.path().join("server"));
    let http = reqwest::Client::new();
    call(&http, &url, "CreateCluster", json!({"clusterName": "default"})).await;
    let state = dir.path().join("agent");
    let mut agent = start_agent(&url, &state);
    let ci = wait("the agent to register", 30, || async {
        let l = call(&http, &url, "ListContainerInstances", json!({})).await;
        l["containerInstanceArns"][0].as_str().map(|s| json!(s))
    })
    .await;
    call(
        &http,
        &url,
        "RegisterTaskDefinition",
        json!({"family": "echo", "containerDefinitions": [{
            "name": "app", "image": testapp.display().to_string(), "cpu": 128, "memory": 64,
            "portMappings": [{"containerPort": 8080}], "stopTimeout": 2}]}),
    )
    .await;

    // Run, see RUNNING, reach the dynamic host port.
    let run = call(&http, &url, "RunTask", json!({"taskDefinition": "echo"})).await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let describe = |arn: String| {
        let http = http.clone();
        let url = url.clone();
        async move { call(&http, &url, "DescribeTasks", json!({"tasks": [arn]})).await["tasks"][0].clone() }
    };
    let t = wait("RUNNING", 30, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "RUNNING").then_some(t)
    })
    .await;
    assert_eq!(t["containerInstanceArn"].as_str(), ci.as_str());
    let port = t["containers"][0]["networkBindings"][0]["hostPort"].as_u64().unwrap();
    assert!((64000..=64100).contains(&port));
    let body = wait("the task to answer on its host port", 30, || async {
        let r = http.get(format!("http://127.0.0.1:{port}/hello")).send().await.ok()?;
        let text = r.text().await.ok()?;
        Some(json!(text))
    })
    .await;
    assert!(body.as_str().unwrap().contains("GET /hello"), "{body}");

    // Stop: STOPPED with the exit code the process had (SIGTERM honoured: 0).
    call(&http, &url, "StopTask", json!({"task": arn})).await;
    let t = wait("STOPPED", 30, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "STOPPED").then_some(t)
    })
    .await;
    assert!(t["containers"][0]["exitCode"].is_i64(), "{t}");
    assert!(
        TcpStream::connect(("127.0.0.1", port as u16)).is_err(),
        "the stopped task's port still answers"
    );

    // kill -9 the agent; the task keeps running and is re-adopted, not duplicated.
    let run = call(&http, &url, "RunTask", json!({"taskDefinition": "echo"})).await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let t = wait("RUNNING", 30, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "RUNNING").then_some(t)
    })
    .await;
    let port = t["containers"][0]["networkBindings"][0]["hostPort"].as_u64().unwrap() as u16;
    let runtime_id = t["containers"][0]["runtimeId"].clone();
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the task must outlive its agent"
    );
    drop(agent);
    let agent = start_agent(&url, &state);
    wait("the agent to reconnect", 30, || async {
        let d = call(
            &http,
            &url,
            "DescribeContainerInstances",
            json!({"containerInstances": [ci.clone()]}),
        )
        .await;
        (d["containerInstances"][0]["agentConnected"] == true).then_some(Value::Null)
    })
    .await;
    let t = describe(arn.clone()).await;
    assert_eq!(t["lastStatus"], "RUNNING");
    assert_eq!(t["containers"][0]["runtimeId"], runtime_id, "re-adopted, not restarted");
    let listed = call(&http, &url, "ListTasks", json!({"desiredStatus": "RUNNING"})).await;
    assert_eq!(listed["taskArns"].as_array().unwrap().len(), 1, "no duplicate task");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());

    // kill -9 for longer than the timeout: the server gives the task up.
    drop(agent);
    let t = wait("the lost task to be STOPPED", 60, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "STOPPED").then_some(t)
    })
    .await;
    assert!(
        t["stoppedReason"].as_str().unwrap_or("").contains("stopped/terminated"),
        "{t}"
    );
    // When the agent comes back, the server no longer wants that task: the
    // agent stops the process it still has, so nothing is orphaned.
    let _agent = start_agent(&url, &state);
    wait("the given-up task's process to be stopped", 60, || async {
        TcpStream::connect(("127.0.0.1", port)).is_err().then_some(Value::Null)
    })
    .await;
}

/// Every `run.json` (pid of a started container process) under `dir`.
fn run_records(dir: &std::path::Path, out: &mut Vec<Value>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            run_records(&p, out);
        } else if p.file_name().is_some_and(|n| n == "run.json")
            && let Ok(v) = serde_json::from_slice(&std::fs::read(&p).unwrap_or_default())
        {
            out.push(v);
        }
    }
}

/// `NAME=VALUE` entries of a live process's environment.
fn environ(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// RunTask overrides reach the process the agent starts (environment) and
/// the agent's view of the task (task-level cpu/memory), and the instance
/// reserves the overridden cpu/memory, not the definition's.
#[tokio::test]
async fn run_task_overrides_reach_the_agent_and_the_reservation() {
    let testapp = std::path::Path::new(berth()).with_file_name("berth-testapp");
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&dir.path().join("server"));
    let http = reqwest::Client::new();
    call(&http, &url, "CreateCluster", json!({"clusterName": "default"})).await;
    let state = dir.path().join("agent");
    let _agent = start_agent(&url, &state);
    let ci = wait("the agent to register", 30, || async {
        let l = call(&http, &url, "ListContainerInstances", json!({})).await;
        l["containerInstanceArns"][0].as_str().map(|s| json!(s))
    })
    .await;
    call(
        &http,
        &url,
        "RegisterTaskDefinition",
        json!({"family": "env", "containerDefinitions": [{
            "name": "app", "image": testapp.display().to_string(), "cpu": 128, "memory": 64,
            "environment": [{"name": "KEEP", "value": "1"}, {"name": "GREETING", "value": "hello"}],
            "portMappings": [{"containerPort": 8080}], "stopTimeout": 2}]}),
    )
    .await;
    let run = call(
        &http,
        &url,
        "RunTask",
        json!({"taskDefinition": "env", "overrides": {
            "containerOverrides": [{"name": "app", "environment": [
                {"name": "GREETING", "value": "overridden"}, {"name": "EXTRA", "value": "yes"}]}],
            "cpu": "512", "memory": "256"}}),
    )
    .await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let task_id = arn.rsplit('/').next().unwrap().to_string();
    wait("RUNNING", 30, || async {
        let t = call(&http, &url, "DescribeTasks", json!({"tasks": [arn.clone()]})).await["tasks"][0].clone();
        (t["lastStatus"] == "RUNNING").then_some(t)
    })
    .await;

    // The running process has the overridden environment.
    let env = wait("the task's process", 30, || async {
        let mut runs = Vec::new();
        run_records(&state, &mut runs);
        runs.iter()
            .filter_map(|r| r["pid"].as_u64())
            .map(environ)
            .find(|e| e.iter().any(|kv| kv.starts_with("GREETING=")))
    })
    .await;
    for want in ["GREETING=overridden", "EXTRA=yes", "KEEP=1"] {
        assert!(env.iter().any(|kv| kv == want), "{want} missing from {env:?}");
    }

    // The instance reserves the task-level override, not 128/64.
    let d = call(
        &http,
        &url,
        "DescribeContainerInstances",
        json!({"containerInstances": [ci.clone()]}),
    )
    .await;
    let inst = &d["containerInstances"][0];
    let remaining = |name: &str| {
        inst["remainingResources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["integerValue"].as_i64())
    };
    assert_eq!(remaining("CPU"), Some(2048 - 512), "{inst}");
    assert_eq!(remaining("MEMORY"), Some(2048 - 256), "{inst}");

    // The agent's own view of the task (its metadata endpoint) has the
    // task-level limits it was sent.
    let endpoint = inst["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "berth.metadata-endpoint")
        .and_then(|a| a["value"].as_str())
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let base = if endpoint.starts_with("http") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let meta: Value = http
        .get(format!("{base}/v4/{task_id}/app/task"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["Limits"]["CPU"], json!(0.5), "{meta}");
    assert_eq!(meta["Limits"]["Memory"], json!(256), "{meta}");
}
