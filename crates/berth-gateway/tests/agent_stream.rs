//! The agent stream end to end over real HTTP and WebSocket, with a scripted
//! agent, beside the API, the launcher, the reconciler and the plan route:
//! join-token check, registration, task push on RunTask and StopTask, state
//! changes recorded (resources released on STOPPED), a lost agent's tasks
//! stopped after the timeout, forced deregistration; and services reaching
//! their desired count, replacing a crashed task, sparing a protected task on
//! scale-in, and a plan dry run.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_gateway::GatewayConfig;
use berth_model::{Resources, TaskStatus};
use berth_proto::{AgentMessage, ContainerState, Register, ServerMessage, TaskStateChange, TaskUpdate};
use berth_store::{DynStore, Journal};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "s3cret";

struct Cluster {
    url: String,
    http: reqwest::Client,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Cluster {
    async fn start(disconnect_timeout: Duration) -> Cluster {
        let store: DynStore = Arc::new(Journal::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gateway = GatewayConfig {
            agent_token: Some(TOKEN.into()),
            heartbeat_interval: Duration::from_millis(200),
            disconnect_timeout,
            ..Default::default()
        };
        let app = berth_server::router(store.clone(), berth_server::ServerConfig::default())
            .merge(berth_gateway::router(store.clone(), gateway))
            .merge(berth_control::plan_router(store.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let (ltx, lrx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            berth_control::Launcher::new(store.clone(), Default::default()).run(async move {
                let _ = lrx.await;
            }),
        );
        let (rtx, rrx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(berth_control::Reconciler::new(store).run(async move {
            let _ = rrx.await;
        }));
        Cluster {
            url,
            http: reqwest::Client::new(),
            _stop: vec![tx, ltx, rtx],
        }
    }

    async fn call(&self, op: &str, body: Value) -> Value {
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

    async fn task(&self, arn: &str) -> Value {
        let d = self
            .call("DescribeTasks", json!({"cluster": "c", "tasks": [arn]}))
            .await;
        d["tasks"][0].clone()
    }

    async fn wait_task(&self, arn: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.task(arn).await;
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "task never became {what}: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn instance(&self, arn: &str) -> Value {
        let d = self
            .call(
                "DescribeContainerInstances",
                json!({"cluster": "c", "containerInstances": [arn]}),
            )
            .await;
        d["containerInstances"][0].clone()
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{}/v1/agent/stream", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

fn register(previous: Option<String>) -> AgentMessage {
    AgentMessage::Register(Register {
        protocol_version: berth_proto::PROTOCOL_VERSION,
        cluster: "c".into(),
        container_instance_arn: previous,
        agent_id: "agent-test-1".into(),
        hostname: "host".into(),
        resources: Resources::new(2048, 4096),
        attributes: vec![("ecs.availability-zone".into(), "us-east-1a".into())],
        port_range: (40000, 40100),
        ip_addresses: vec!["127.0.0.1".into()],
        agent_version: "test".into(),
        driver: "process".into(),
        capabilities: vec![],
        metadata_endpoint: None,
    })
}

async fn send(ws: &mut Ws, m: &AgentMessage) {
    ws.send(Message::Text(serde_json::to_string(m).unwrap().into()))
        .await
        .unwrap();
}

async fn recv(ws: &mut Ws) -> ServerMessage {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("server message within the deadline")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn state(arn: &str, status: TaskStatus, exit: Option<i32>) -> AgentMessage {
    AgentMessage::TaskStateChange(TaskStateChange {
        task_arn: arn.into(),
        last_status: status,
        containers: vec![ContainerState {
            name: "app".into(),
            runtime_id: Some("pid-1".into()),
            last_status: status,
            exit_code: exit,
            reason: None,
            network_bindings: vec![],
            health_status: Default::default(),
        }],
        health_status: Default::default(),
        pull_started_at: None,
        started_at: Some(1.0),
        stopping_at: None,
        stopped_at: None,
        stop_code: exit.map(|_| "EssentialContainerExited".into()),
        stopped_reason: exit.map(|_| "Essential container in task exited".into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_lifecycle_over_the_stream() {
    let c = Cluster::start(Duration::from_secs(1)).await;
    c.call("CreateCluster", json!({"clusterName": "c"})).await;
    c.call(
        "RegisterTaskDefinition",
        json!({"family": "web", "containerDefinitions": [
            {"name": "app", "image": "berth-testapp", "cpu": 256, "memory": 512,
             "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;

    // A wrong token is refused before the upgrade.
    assert!(connect(&c.url, "wrong").await.is_err());

    let mut ws = connect(&c.url, TOKEN).await.unwrap();
    send(&mut ws, &register(None)).await;
    let ServerMessage::RegisterAck(ack) = recv(&mut ws).await else {
        panic!("expected registerAck")
    };
    let ci_arn = ack.container_instance_arn.clone();
    let ServerMessage::DesiredTasks(d) = recv(&mut ws).await else {
        panic!("expected desiredTasks")
    };
    assert!(d.tasks.is_empty());
    assert_eq!(c.instance(&ci_arn).await["agentConnected"], true);

    // RunTask reaches the agent, with a host port from its range.
    let run = c
        .call("RunTask", json!({"cluster": "c", "taskDefinition": "web"}))
        .await;
    let task_arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let ServerMessage::TaskUpdate(TaskUpdate::Add { task }) = recv(&mut ws).await else {
        panic!("expected add")
    };
    assert_eq!(task.task_arn, task_arn);
    assert_eq!(task.host_ports.len(), 1);
    assert!((40000..=40100).contains(&task.host_ports[0].host_port));

    send(&mut ws, &state(&task_arn, TaskStatus::Running, None)).await;
    c.wait_task(&task_arn, "RUNNING", |t| t["lastStatus"] == "RUNNING")
        .await;
    assert_eq!(c.instance(&ci_arn).await["runningTasksCount"], 1);

    // StopTask reaches the agent; its STOPPED report frees the resources.
    c.call("StopTask", json!({"cluster": "c", "task": task_arn})).await;
    let ServerMessage::TaskUpdate(TaskUpdate::Stop { task_arn: stop_arn, .. }) = recv(&mut ws).await else {
        panic!("expected stop")
    };
    assert_eq!(stop_arn, task_arn);
    send(&mut ws, &state(&task_arn, TaskStatus::Stopped, Some(143))).await;
    let t = c
        .wait_task(&task_arn, "STOPPED", |t| t["lastStatus"] == "STOPPED")
        .await;
    assert_eq!(t["containers"][0]["exitCode"], 143);
    let ci = c.instance(&ci_arn).await;
    assert_eq!(ci["runningTasksCount"], 0);
    let cpu_left = ci["remainingResources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "CPU")
        .unwrap()["integerValue"]
        .clone();
    assert_eq!(cpu_left, 2048, "a stopped task gives its CPU back");

    // A task running when the agent vanishes is stopped after the timeout.
    let run = c
        .call("RunTask", json!({"cluster": "c", "taskDefinition": "web"}))
        .await;
    let lost_arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let ServerMessage::TaskUpdate(TaskUpdate::Add { .. }) = recv(&mut ws).await else {
        panic!("expected add")
    };
    send(&mut ws, &state(&lost_arn, TaskStatus::Running, None)).await;
    c.wait_task(&lost_arn, "RUNNING", |t| t["lastStatus"] == "RUNNING")
        .await;
    drop(ws);
    let t = c
        .wait_task(&lost_arn, "stopped by the lost-agent timer", |t| {
            t["lastStatus"] == "STOPPED"
        })
        .await;
    assert!(
        t["stoppedReason"].as_str().unwrap().contains("stopped/terminated"),
        "{t}"
    );
    assert_eq!(c.instance(&ci_arn).await["agentConnected"], false);

    // The agent comes back under its old ARN and keeps its instance.
    let mut ws = connect(&c.url, TOKEN).await.unwrap();
    send(&mut ws, &register(Some(ci_arn.clone()))).await;
    let ServerMessage::RegisterAck(ack) = recv(&mut ws).await else {
        panic!("expected registerAck")
    };
    assert_eq!(ack.container_instance_arn, ci_arn);
    assert_eq!(c.instance(&ci_arn).await["agentConnected"], true);

    // Forced deregistration stops the instance's tasks: the agent is told.
    let ServerMessage::DesiredTasks(_) = recv(&mut ws).await else {
        panic!("expected desiredTasks")
    };
    let run = c
        .call("RunTask", json!({"cluster": "c", "taskDefinition": "web"}))
        .await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let ServerMessage::TaskUpdate(TaskUpdate::Add { .. }) = recv(&mut ws).await else {
        panic!("expected add")
    };
    send(&mut ws, &state(&arn, TaskStatus::Running, None)).await;
    c.wait_task(&arn, "RUNNING", |t| t["lastStatus"] == "RUNNING").await;
    c.call(
        "DeregisterContainerInstance",
        json!({"cluster": "c", "containerInstance": ci_arn, "force": true}),
    )
    .await;
    let ServerMessage::TaskUpdate(TaskUpdate::Stop { task_arn, .. }) = recv(&mut ws).await else {
        panic!("expected stop after forced deregistration")
    };
    assert_eq!(task_arn, arn);
    assert_eq!(c.task(&arn).await["desiredStatus"], "STOPPED");
}

async fn service(c: &Cluster) -> Value {
    let d = c
        .call("DescribeServices", json!({"cluster": "c", "services": ["web"]}))
        .await;
    d["services"][0].clone()
}

/// Reads frames until `want` tasks were added (answering each with RUNNING),
/// collecting stops on the way.
async fn run_adds(ws: &mut Ws, want: usize, running: &mut Vec<String>, stopped: &mut Vec<String>) {
    let mut added = 0;
    while added < want {
        match recv(ws).await {
            ServerMessage::TaskUpdate(TaskUpdate::Add { task }) => {
                send(ws, &state(&task.task_arn, TaskStatus::Running, None)).await;
                running.push(task.task_arn);
                added += 1;
            }
            ServerMessage::TaskUpdate(TaskUpdate::Stop { task_arn, .. }) => {
                send(ws, &state(&task_arn, TaskStatus::Stopped, Some(0))).await;
                running.retain(|a| a != &task_arn);
                stopped.push(task_arn);
            }
            _ => {}
        }
    }
}

async fn wait_service(c: &Cluster, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = service(c).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "service never {what}: {s:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_keeps_desired_count_through_crash_and_scale_in() {
    let c = Cluster::start(Duration::from_secs(60)).await;
    c.call("CreateCluster", json!({"clusterName": "c"})).await;
    c.call(
        "RegisterTaskDefinition",
        json!({"family": "web", "containerDefinitions": [
            {"name": "app", "image": "berth-testapp", "cpu": 128, "memory": 128,
             "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;
    let mut ws = connect(&c.url, TOKEN).await.unwrap();
    send(&mut ws, &register(None)).await;
    let ServerMessage::RegisterAck(_) = recv(&mut ws).await else {
        panic!("expected registerAck")
    };
    let ServerMessage::DesiredTasks(_) = recv(&mut ws).await else {
        panic!("expected desiredTasks")
    };

    c.call(
        "CreateService",
        json!({"cluster": "c", "serviceName": "web", "taskDefinition": "web", "desiredCount": 3}),
    )
    .await;
    let (mut running, mut stopped) = (Vec::new(), Vec::new());
    run_adds(&mut ws, 3, &mut running, &mut stopped).await;
    let s = wait_service(&c, "steady at 3", |s| s["runningCount"] == 3).await;
    assert_eq!(s["deployments"].as_array().unwrap().len(), 1);
    wait_service(&c, "reporting a steady state", |s| {
        s["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains("steady state"))
        })
    })
    .await;

    // A dry run of scaling to 5: two tasks to start, placed, nothing stopped,
    // and nothing actually changes.
    let plan: Value = c
        .http
        .post(format!("{}/v1/services/plan", c.url))
        .body(json!({"cluster": "c", "service": "web", "desiredCount": 5}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["start"]["count"], 2, "{plan}");
    assert_eq!(plan["start"]["placements"].as_array().unwrap().len(), 2, "{plan}");
    assert!(plan["stop"].as_array().unwrap().is_empty(), "{plan}");
    assert_eq!(service(&c).await["desiredCount"], 3, "a plan changes nothing");
    let missing = c
        .http
        .post(format!("{}/v1/services/plan", c.url))
        .body(json!({"cluster": "c", "service": "nope"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(missing.headers()["x-amzn-errortype"], "ServiceNotFoundException");

    // A task crashes: the agent reports it, and a replacement arrives.
    let crashed = running.remove(0);
    send(&mut ws, &state(&crashed, TaskStatus::Stopped, Some(1))).await;
    run_adds(&mut ws, 1, &mut running, &mut stopped).await;
    wait_service(&c, "back at 3", |s| s["runningCount"] == 3).await;
    assert_eq!(running.len(), 3);

    // Protect one task, then scale in to 1: two stops arrive, and the
    // protected task is the one that keeps running.
    let keep = running[1].clone();
    let p = c
        .call(
            "UpdateTaskProtection",
            json!({"cluster": "c", "tasks": [keep], "protectionEnabled": true, "expiresInMinutes": 60}),
        )
        .await;
    assert_eq!(p["protectedTasks"][0]["protectionEnabled"], true, "{p}");
    let g = c
        .call("GetTaskProtection", json!({"cluster": "c", "tasks": [keep]}))
        .await;
    assert_eq!(g["protectedTasks"][0]["protectionEnabled"], true, "{g}");
    c.call(
        "UpdateService",
        json!({"cluster": "c", "service": "web", "desiredCount": 1}),
    )
    .await;
    while stopped.len() < 2 {
        if let ServerMessage::TaskUpdate(TaskUpdate::Stop { task_arn, .. }) = recv(&mut ws).await {
            send(&mut ws, &state(&task_arn, TaskStatus::Stopped, Some(0))).await;
            running.retain(|a| a != &task_arn);
            stopped.push(task_arn);
        }
    }
    wait_service(&c, "at 1", |s| s["runningCount"] == 1 && s["desiredCount"] == 1).await;
    assert_eq!(running, vec![keep], "the protected task survives scale-in");
}

/// `awsvpc` tasks: RunTask needs a network configuration; each task takes
/// an IP on an ENI the agent registered, bound to its security groups; when
/// the ENIs are full the next task waits with an ENI reason, and a stopped
/// task's IP lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awsvpc_tasks_take_eni_ips_and_give_them_back() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    c.call("CreateCluster", json!({"clusterName": "c"})).await;
    c.call(
        "RegisterTaskDefinition",
        json!({"family": "vpc", "networkMode": "awsvpc", "containerDefinitions": [
            {"name": "app", "image": "berth-testapp", "cpu": 64, "memory": 64}]}),
    )
    .await;
    let mut ws = connect(&c.url, TOKEN).await.unwrap();
    let AgentMessage::Register(mut reg) = register(None) else {
        unreachable!()
    };
    reg.resources.enis = vec![berth_model::Eni {
        security_groups: Default::default(),
        ips: 2,
    }];
    send(&mut ws, &AgentMessage::Register(reg)).await;
    assert!(matches!(recv(&mut ws).await, ServerMessage::RegisterAck(_)));
    assert!(matches!(recv(&mut ws).await, ServerMessage::DesiredTasks(_)));

    // Without a network configuration: a 400 naming the member.
    let resp = c
        .http
        .post(&c.url)
        .header("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.RunTask")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(json!({"cluster": "c", "taskDefinition": "vpc"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["__type"], "InvalidParameterException");
    assert!(
        body["message"].as_str().unwrap().contains("networkConfiguration"),
        "{body}"
    );

    let run = |n: u32| {
        c.call(
            "RunTask",
            json!({"cluster": "c", "taskDefinition": "vpc", "count": n,
                   "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-a"]}}}),
        )
    };
    let first = run(2).await;
    let mut added = Vec::new();
    for _ in 0..2 {
        let ServerMessage::TaskUpdate(TaskUpdate::Add { task }) = recv(&mut ws).await else {
            panic!("expected add")
        };
        added.push(task.task_arn);
    }
    added.sort();
    let mut want: Vec<String> = first["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskArn"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(added, want, "two IPs, two tasks placed");

    // The ENI is full: the third waits and says why.
    let third = run(1).await["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let t = c
        .wait_task(&third, "pending for want of an ENI IP", |t| {
            t["pendingReasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x.as_str().is_some_and(|s| s.contains("ENI"))))
        })
        .await;
    assert!(t["containerInstanceArn"].is_null(), "{t}");

    // One stops: its IP goes back and the third is placed.
    let gone = &added[0];
    send(&mut ws, &state(gone, TaskStatus::Running, None)).await;
    c.call("StopTask", json!({"cluster": "c", "task": gone})).await;
    let ServerMessage::TaskUpdate(TaskUpdate::Stop { .. }) = recv(&mut ws).await else {
        panic!("expected stop")
    };
    send(&mut ws, &state(gone, TaskStatus::Stopped, Some(0))).await;
    let ServerMessage::TaskUpdate(TaskUpdate::Add { task }) = recv(&mut ws).await else {
        panic!("expected the waiting task")
    };
    assert_eq!(task.task_arn, third);
}
