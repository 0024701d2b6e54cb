//! TLS end to end with real processes: a `berth server --tls-cert/--tls-key`
//! with a self-signed certificate made here, a `berth agent --server
//! https://... --tls-ca` (process driver) that registers and runs a task to
//! RUNNING over `wss://`; an agent without the CA, and one speaking plain
//! HTTP to the TLS port, are refused with errors that say why.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod procs;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procs::{Proc, berth, call, wait};
use serde_json::json;

/// A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn start_server(dir: &Path, cert: &Path, key: &Path) -> (Proc, String) {
    let mut child = Command::new(berth())
        .args(["server", "--listen", "127.0.0.1:0", "--no-auth", "--agent-token", "t0k"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
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
        .filter(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("unexpected server banner: {line}"))
        .to_string();
    (Proc(child), url)
}

fn agent(url: &str, state: &Path, ca: Option<&Path>) -> Command {
    let mut cmd = Command::new(berth());
    cmd.args(["agent", "--server", url, "--cluster", "default", "--token", "t0k"])
        .args(["--driver", "process", "--cpu-units", "2048", "--memory-mib", "2048"])
        .args(["--metadata-listen", "127.0.0.1:0", "--port-range", "64200-64300"])
        .arg("--state-dir")
        .arg(state)
        .env_remove("BERTH_TLS_CA")
        .stdout(Stdio::null());
    if let Some(ca) = ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    cmd
}

/// Runs an agent that must give up; returns its exit status and stderr.
async fn refused_agent(url: &str, state: &Path, ca: Option<&Path>) -> (std::process::ExitStatus, String) {
    let mut child = Proc(agent(url, state, ca).stderr(Stdio::piped()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent kept running instead of giving up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_over_tls() {
    let testapp = Path::new(berth()).with_file_name("berth-testapp");
    assert!(
        testapp.exists(),
        "{} missing: build the workspace binaries first",
        testapp.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (_server, url) = start_server(&dir.path().join("server"), &cert, &key);

    // The API is HTTPS too; a client that trusts the CA gets through.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    call(&http, &url, "CreateCluster", json!({"clusterName": "default"})).await;

    // Plain HTTP on the TLS port is told to use https://.
    let plain = url.replacen("https://", "http://", 1);
    let resp = reqwest::Client::new().get(&plain).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("https://"));

    // An agent that does not trust the certificate gives up, saying why.
    let (status, err) = refused_agent(&url, &dir.path().join("no-ca"), None).await;
    assert!(!status.success());
    assert!(err.contains("not trusted") && err.contains("--tls-ca"), "{err}");

    // An agent speaking plain HTTP to the TLS port gives up too.
    let (status, err) = refused_agent(&plain, &dir.path().join("plain"), None).await;
    assert!(!status.success());
    assert!(err.contains("requires TLS") && err.contains("https://"), "{err}");
    let listed = call(&http, &url, "ListContainerInstances", json!({})).await;
    assert_eq!(listed["containerInstanceArns"], json!([]), "refused agents registered");

    // With the CA: registers over wss:// and runs a task to RUNNING.
    let _agent = Proc(
        agent(&url, &dir.path().join("agent"), Some(&cert))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the agent to register over TLS", 30, || async {
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
    let run = call(&http, &url, "RunTask", json!({"taskDefinition": "echo"})).await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let describe = |arn: String| {
        let http = http.clone();
        let url = url.clone();
        async move { call(&http, &url, "DescribeTasks", json!({"tasks": [arn]})).await["tasks"][0].clone() }
    };
    wait("RUNNING over TLS", 30, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "RUNNING").then_some(t)
    })
    .await;
    call(&http, &url, "StopTask", json!({"task": arn})).await;
    wait("STOPPED", 30, || async {
        let t = describe(arn.clone()).await;
        (t["lastStatus"] == "STOPPED").then_some(t)
    })
    .await;
}
