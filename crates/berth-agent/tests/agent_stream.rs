//! The whole agent (`daemon::run`: state dir, process driver, metadata
//! endpoint, stream) against a small in-test WebSocket server playing the
//! Berth server's role.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::daemon::{self, DaemonConfig, DriverKind};
use berth_agent::driver::conformance::{eventually, free_port};
use berth_agent::driver::process::ProcessDriver;
use berth_agent::driver::{Driver, RunState};
use berth_agent::stream::StreamConfig;
use berth_agent::{AgentError, Result};
use berth_model::{Resources, TaskStatus};
use berth_proto::{
    AgentMessage, DesiredTask, DesiredTasks, ErrorMessage, PortAssignment, RegisterAck, ServerMessage, TaskStateChange,
    TaskUpdate,
};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    async fn recv(&mut self) -> AgentMessage {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("a frame from the agent in time")
                .expect("stream open")
                .expect("frame");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("agent frames are AgentMessage JSON");
            }
        }
    }

    async fn until<T>(&mut self, mut f: impl FnMut(AgentMessage) -> Option<T>) -> T {
        loop {
            if let Some(v) = f(self.recv().await) {
                return v;
            }
        }
    }

    async fn state(&mut self, arn: &str, status: TaskStatus) -> TaskStateChange {
        self.until(|m| match m {
            AgentMessage::TaskStateChange(st) if st.task_arn == arn && st.last_status == status => Some(st),
            _ => None,
        })
        .await
    }

    async fn send(&mut self, m: ServerMessage) {
        let text = serde_json::to_string(&m).expect("encode");
        self.ws.send(Message::Text(text.into())).await.expect("send to agent");
    }
}

/// Accepts agent connections with `Authorization: Bearer <token>`; others get 401.
async fn fake_server(token: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<Conn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // The handshake callback's signature is tungstenite's.
            #[allow(clippy::result_large_err)]
            let check = move |req: &Request, resp: Response| -> std::result::Result<Response, ErrorResponse> {
                let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                if req.uri().path() == "/v1/agent/stream" && auth == Some(&format!("Bearer {token}")) {
                    Ok(resp)
                } else {
                    let mut e = ErrorResponse::new(Some("bad token".into()));
                    *e.status_mut() = http::StatusCode::UNAUTHORIZED;
                    Err(e)
                }
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await {
                let _ = tx.send(Conn { ws });
            }
        }
    });
    (addr, rx)
}

fn config(server: SocketAddr, token: &str, state: &Path) -> DaemonConfig {
    DaemonConfig {
        cluster: "default".into(),
        state_dir: state.to_path_buf(),
        metadata_listen: "127.0.0.1:0".parse().expect("addr"),
        driver: DriverKind::Process,
        stream: StreamConfig {
            server: format!("http://{server}"),
            token: token.into(),
            hostname: "test-host".into(),
            resources: Resources::new(2048, 1024),
            attributes: vec![("stack".into(), "blue".into())],
            port_range: (40000, 40100),
            ip_addresses: vec!["127.0.0.1".into()],
            metadata_endpoint: None,
            heartbeat: Duration::from_secs(5),
            reconnect_max: Duration::from_millis(200),
            tls_ca: None,
        },
    }
}

fn start_agent(cfg: DaemonConfig) -> (watch::Sender<bool>, tokio::task::JoinHandle<Result<()>>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let driver = daemon::make_driver(cfg.driver, &cfg.state_dir).await?;
        daemon::run(cfg, driver, rx).await
    });
    (tx, handle)
}

fn web_task(port: u16) -> DesiredTask {
    let mut t: DesiredTask = serde_json::from_value(serde_json::json!({
        "taskArn": "arn:aws:ecs:us-east-1:1:task/default/streamtask", "cluster": "default", "desiredStatus": "RUNNING",
        "taskDefinition": {"family": "web", "revision": 2, "taskDefinitionArn": "arn:td/web:2",
            "containerDefinitions": [{"name": "web", "image": common::testapp().display().to_string(),
                "memory": 64, "stopTimeout": 5,
                "environment": [{"name": "NAME", "value": "streamed"}],
                "portMappings": [{"containerPort": 8080}]}]}
    }))
    .expect("task");
    t.host_ports = vec![PortAssignment {
        container_name: "web".into(),
        container_port: 8080,
        host_port: port,
        protocol: Default::default(),
    }];
    t
}

async fn get_json(url: String) -> serde_json::Value {
    let resp = reqwest::get(&url).await.expect("GET");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_runs_pushed_tasks_serves_metadata_and_resyncs_after_reconnect() {
    // The task (and the testapp build it implies) first: the agent expects
    // its RegisterAck within 10 s of connecting.
    let port = free_port();
    let task = web_task(port);
    let arn = task.task_arn.clone();
    let (addr, mut conns) = fake_server("good").await;
    let state = tempfile::tempdir().expect("tempdir");
    let (stop_agent, handle) = start_agent(config(addr, "good", state.path()));

    let mut c1 = conns.recv().await.expect("agent connects");
    let AgentMessage::Register(reg) = c1.recv().await else {
        panic!("first frame must be Register")
    };
    assert_eq!((reg.cluster.as_str(), reg.driver.as_str()), ("default", "process"));
    assert_eq!(reg.container_instance_arn, None, "first registration");
    assert_eq!(reg.resources.cpu, 2048);
    assert_eq!(reg.port_range, (40000, 40100));
    assert_eq!(reg.attributes, vec![("stack".to_string(), "blue".to_string())]);
    let meta = reg.metadata_endpoint.clone().expect("metadata endpoint announced");
    let instance = "arn:aws:ecs:us-east-1:1:container-instance/default/ci-1".to_string();
    c1.send(ServerMessage::RegisterAck(RegisterAck {
        container_instance_arn: instance.clone(),
        heartbeat_interval_ms: 50,
    }))
    .await;
    c1.send(ServerMessage::DesiredTasks(DesiredTasks {
        tasks: vec![task.clone()],
    }))
    .await;
    c1.state(&arn, TaskStatus::Pending).await;
    let running = c1.state(&arn, TaskStatus::Running).await;
    let runtime_id = running.containers[0].runtime_id.clone().expect("runtime id");
    assert_eq!(running.containers[0].network_bindings[0].host_port, port);
    c1.until(|m| matches!(m, AgentMessage::Heartbeat(_)).then_some(()))
        .await;
    let answer = eventually("the task answers on its host port", Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/x"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await;
    assert!(answer.starts_with("streamed GET /x"), "{answer}");

    // Host endpoints in ECS shapes.
    let md = get_json(format!("{meta}/v1/metadata")).await;
    assert_eq!(md["Cluster"], "default");
    assert_eq!(md["ContainerInstanceArn"], instance.as_str());
    let all = get_json(format!("{meta}/v1/tasks")).await;
    assert_eq!(all["Tasks"].as_array().map(Vec::len), Some(1));
    let one = get_json(format!("{meta}/v1/tasks?taskarn={arn}")).await;
    assert_eq!(one["KnownStatus"], "RUNNING");
    assert_eq!(one["Family"], "web");
    assert_eq!(one["Containers"][0]["DockerId"], runtime_id.as_str());
    assert_eq!(one["Containers"][0]["Ports"][0]["HostPort"], port);
    let by_id = get_json(format!("{meta}/v1/tasks?dockerid={runtime_id}")).await;
    assert_eq!(by_id["Arn"], arn.as_str());
    let missing = reqwest::get(format!("{meta}/v1/tasks?taskarn=nope"))
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    let v4 = format!("{meta}/v4/streamtask/web");
    let container = get_json(v4.clone()).await;
    assert_eq!(container["Name"], "web");
    assert_eq!(container["KnownStatus"], "RUNNING");
    let task_md = get_json(format!("{v4}/task")).await;
    assert_eq!(task_md["TaskARN"], arn.as_str());
    assert_eq!(task_md["Containers"][0]["DockerId"], runtime_id.as_str());
    let stats = get_json(format!("{v4}/stats")).await;
    assert!(stats["memory_stats"]["usage"].as_u64().unwrap_or(0) > 0, "{stats}");
    let logs = get_json(format!("{meta}/v1/tasks/streamtask/containers/web/logs?tail=5")).await;
    assert!(logs["stdout"].as_str().unwrap_or("").contains("listening"), "{logs}");
    let task_stats = get_json(format!("{v4}/task/stats")).await;
    assert!(task_stats.get(&runtime_id).is_some(), "{task_stats}");

    // The server goes away; the task keeps running; the agent comes back
    // as the same instance and re-sends its state; a repeated desired set
    // starts nothing new.
    drop(c1);
    let mut c2 = conns.recv().await.expect("agent reconnects");
    let AgentMessage::Register(reg2) = c2.recv().await else {
        panic!("Register first")
    };
    assert_eq!(reg2.container_instance_arn.as_deref(), Some(instance.as_str()));
    c2.send(ServerMessage::RegisterAck(RegisterAck {
        container_instance_arn: instance.clone(),
        heartbeat_interval_ms: 50,
    }))
    .await;
    let resent = c2.state(&arn, TaskStatus::Running).await;
    assert_eq!(resent.containers[0].runtime_id.as_deref(), Some(runtime_id.as_str()));
    c2.send(ServerMessage::DesiredTasks(DesiredTasks {
        tasks: vec![task.clone()],
    }))
    .await;
    c2.send(ServerMessage::TaskUpdate(TaskUpdate::Add { task: task.clone() }))
        .await;
    c2.until(|m| matches!(m, AgentMessage::Heartbeat(_)).then_some(()))
        .await;
    let procs = ProcessDriver::new(state.path().join("process")).expect("driver");
    let agent_id = reg2.agent_id.clone();
    let listed = procs.list(&agent_id).await.expect("list");
    assert_eq!(listed.len(), 1, "one container, never a second: {listed:?}");
    assert_eq!(listed[0].state, RunState::Running);

    c2.send(ServerMessage::TaskUpdate(TaskUpdate::Stop {
        task_arn: arn.clone(),
        reason: Some("Scaled in".into()),
    }))
    .await;
    let stopped = c2.state(&arn, TaskStatus::Stopped).await;
    assert_eq!(stopped.containers[0].exit_code, Some(0), "SIGTERM, graceful");
    assert_eq!(stopped.stopped_reason.as_deref(), Some("Scaled in"));
    // Once the server leaves it out of the full set, the agent forgets it.
    c2.send(ServerMessage::DesiredTasks(DesiredTasks { tasks: vec![] }))
        .await;
    let procs = Arc::new(procs);
    eventually(
        "the stopped task's container to be removed",
        Duration::from_secs(20),
        || {
            let procs = procs.clone();
            let agent_id = agent_id.clone();
            async move { procs.list(&agent_id).await.ok().filter(Vec::is_empty) }
        },
    )
    .await;

    stop_agent.send(true).expect("signal shutdown");
    handle.await.expect("join").expect("agent exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused() {
    let (addr, _conns) = fake_server("right").await;
    let state = tempfile::tempdir().expect("tempdir");
    let (_stop, handle) = start_agent(config(addr, "wrong", state.path()));
    let result = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the agent gives up at once")
        .expect("join");
    assert!(matches!(result, Err(AgentError::Refused { .. })), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_other_than_auth_are_retried_auth_ones_end_the_agent() {
    let (addr, mut conns) = fake_server("t").await;
    let state = tempfile::tempdir().expect("tempdir");
    let (_stop, handle) = start_agent(config(addr, "t", state.path()));
    let mut c = conns.recv().await.expect("connects");
    assert!(matches!(c.recv().await, AgentMessage::Register(_)));
    c.send(ServerMessage::Error(ErrorMessage {
        code: "ClusterNotFoundException".into(),
        message: "no cluster default".into(),
    }))
    .await;
    let mut again = tokio::time::timeout(Duration::from_secs(30), conns.recv())
        .await
        .expect("the agent tries again")
        .expect("connects");
    assert!(matches!(again.recv().await, AgentMessage::Register(_)));
    again
        .send(ServerMessage::Error(ErrorMessage {
            code: "Unauthorized".into(),
            message: "token revoked".into(),
        }))
        .await;
    let result = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("ends")
        .expect("join");
    match result {
        Err(AgentError::Refused { code, .. }) => assert_eq!(code, "Unauthorized"),
        other => panic!("{other:?}"),
    }
}
