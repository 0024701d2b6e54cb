//! Scheduling through the ECS API on a real dev cluster (store, API,
//! controllers, process-driver agents running `berth-testapp`):
//!
//! - a DAEMON service on two agents runs two tasks, one each; a third agent
//!   joining gets one; draining an instance removes its task; ListServices
//!   with `schedulingStrategy` lists it as DAEMON only;
//! - on a full cluster, a critical service under its capacity guarantee is
//!   placed by preempting flex batch tasks, which stop with `TaskPreempted`
//!   and a reason naming the task that needed the room, while the flex task
//!   with scale-in protection keeps running.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_agent::daemon::{self, DaemonConfig, DriverKind};
use berth_agent::stream::StreamConfig;
use berth_dev::{AgentSpec, DevCluster, DevConfig};
use berth_model::Resources;
use serde_json::{Value, json};

fn testapp() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name("berth-testapp");
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first",
        p.display()
    );
    p
}

fn agent(i: usize, cpu: u64, mem: u64) -> AgentSpec {
    AgentSpec {
        name: format!("agent-{i}"),
        zone: format!("us-east-1{}", (b'a' + i as u8) as char),
        driver: DriverKind::Process,
        resources: Resources::new(cpu, mem),
    }
}

async fn cluster(dir: &Path, agents: Vec<AgentSpec>) -> DevCluster {
    DevCluster::start(DevConfig {
        data_dir: dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        agents,
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
        let r = self
            .http
            .post(format!("{}/", self.url))
            .header("x-amz-target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{op}: {status} {v}");
        v
    }

    async fn tasks(&self, desired: &str) -> Vec<Value> {
        let arns = self
            .ecs("ListTasks", json!({"desiredStatus": desired, "maxResults": 100}))
            .await["taskArns"]
            .clone();
        if arns.as_array().unwrap().is_empty() {
            return Vec::new();
        }
        self.ecs("DescribeTasks", json!({"tasks": arns})).await["tasks"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn running(&self, group: &str) -> Vec<Value> {
        self.tasks("RUNNING")
            .await
            .into_iter()
            .filter(|t| t["group"] == group && t["lastStatus"] == "RUNNING")
            .collect()
    }

    async fn register(&self, family: &str, cpu: u64, memory: u64) {
        self.ecs(
            "RegisterTaskDefinition",
            json!({"family": family, "cpu": cpu.to_string(), "memory": memory.to_string(), "containerDefinitions": [{
                "name": "app", "image": testapp().display().to_string(), "essential": true,
                "portMappings": [{"containerPort": 8080}]}]}),
        )
        .await;
    }

    async fn instances(&self) -> Vec<Value> {
        let arns = self.ecs("ListContainerInstances", json!({})).await["containerInstanceArns"].clone();
        self.ecs("DescribeContainerInstances", json!({"containerInstances": arns}))
            .await["containerInstances"]
            .as_array()
            .cloned()
            .unwrap()
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

/// Stops every task through the API and waits for them to be gone, so that
/// no process outlives the test.
async fn stop_all(api: &Api) {
    for t in api.tasks("RUNNING").await {
        api.ecs("StopTask", json!({"task": t["taskArn"].clone()})).await;
    }
    wait("every task to stop", 60, || async {
        let left = api.tasks("RUNNING").await;
        let live = api
            .tasks("STOPPED")
            .await
            .into_iter()
            .filter(|t| t["lastStatus"] != "STOPPED")
            .count();
        (left.is_empty() && live == 0).then_some(())
    })
    .await;
}

/// The container instance each running task of `group` is on.
async fn hosts_of(api: &Api, group: &str) -> Vec<String> {
    let mut v: Vec<String> = api
        .running(group)
        .await
        .iter()
        .map(|t| t["containerInstanceArn"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_service_runs_one_task_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), vec![agent(0, 2048, 2048), agent(1, 2048, 2048)]).await;
    let api = Api {
        http: reqwest::Client::new(),
        url: c.url.clone(),
    };
    api.register("logs", 256, 128).await;
    wait("two instances", 30, || async {
        (api.instances().await.len() == 2).then_some(())
    })
    .await;
    api.ecs(
        "CreateService",
        json!({"serviceName": "logs", "taskDefinition": "logs", "schedulingStrategy": "DAEMON"}),
    )
    .await;
    let two = wait("a daemon task on each of two instances", 60, || async {
        let h = hosts_of(&api, "service:logs").await;
        (h.len() == 2 && h[0] != h[1]).then_some(h)
    })
    .await;
    let listed = |strategy: &'static str| {
        let api = &api;
        async move {
            api.ecs("ListServices", json!({"schedulingStrategy": strategy})).await["serviceArns"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(listed("DAEMON").await, 1);
    assert_eq!(listed("REPLICA").await, 0);

    // A third agent joins: it gets one.
    let state_dir = dir.path().join("agents").join("agent-2");
    let (stop_third, rx) = tokio::sync::watch::channel(false);
    let third = tokio::spawn(async move {
        let driver = daemon::make_driver(DriverKind::Process, &state_dir).await.unwrap();
        let cfg = DaemonConfig {
            cluster: "default".into(),
            state_dir,
            metadata_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            driver: DriverKind::Process,
            stream: StreamConfig {
                server: c.url.clone(),
                token: "t".into(),
                hostname: "agent-2".into(),
                resources: Resources::new(2048, 2048),
                attributes: vec![("ecs.availability-zone".into(), "us-east-1c".into())],
                port_range: (64000, 64999),
                ip_addresses: vec!["127.0.0.1".into()],
                metadata_endpoint: None,
                heartbeat: Duration::from_secs(2),
                reconnect_max: Duration::from_secs(2),
                tls_ca: None,
            },
        };
        let _ = daemon::run(cfg, driver, rx).await;
        c
    });
    let three = wait("a daemon task on the joining instance", 60, || async {
        let h = hosts_of(&api, "service:logs").await;
        (h.len() == 3).then_some(h)
    })
    .await;
    let mut distinct = three.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one per instance: {three:?}");

    // Draining one removes its task, and it is not replaced elsewhere.
    let drained = two[0].clone();
    api.ecs(
        "UpdateContainerInstancesState",
        json!({"containerInstances": [drained.clone()], "status": "DRAINING"}),
    )
    .await;
    let left = wait("the drained instance's daemon task to stop", 60, || async {
        let h = hosts_of(&api, "service:logs").await;
        (h.len() == 2 && !h.contains(&drained)).then_some(h)
    })
    .await;
    assert_eq!(left.len(), 2);
    let svc = &api.ecs("DescribeServices", json!({"services": ["logs"]})).await["services"][0];
    assert_eq!(svc["schedulingStrategy"], "DAEMON", "{svc}");
    assert_eq!(svc["desiredCount"], 2, "{svc}");

    api.ecs("DeleteService", json!({"service": "logs", "force": true}))
        .await;
    stop_all(&api).await;
    let _ = stop_third.send(true);
    let c = third.await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_service_preempts_flex_batch_tasks_but_not_protected_ones() {
    let dir = tempfile::tempdir().unwrap();
    // One agent with room for four 1-core tasks.
    let c = cluster(dir.path(), vec![agent(0, 4096, 4096)]).await;
    let api = Api {
        http: reqwest::Client::new(),
        url: c.url.clone(),
    };
    api.register("batch", 1024, 1024).await;
    api.register("db", 1024, 1024).await;
    let cluster_arn =
        api.ecs("DescribeClusters", json!({"clusters": ["default"]})).await["clusters"][0]["clusterArn"].clone();
    api.ecs(
        "TagResource",
        json!({"resourceArn": cluster_arn,
               "tags": [{"key": "berth:guarantee:service:db", "value": "tier=0,cpu=2048,memory=2048"}]}),
    )
    .await;
    api.ecs(
        "RunTask",
        json!({"taskDefinition": "batch", "count": 4, "group": "batch",
               "tags": [{"key": "berth:tier", "value": "flex"}]}),
    )
    .await;
    let batch = wait("four flex batch tasks running", 60, || async {
        let r = api.running("batch").await;
        (r.len() == 4).then_some(r)
    })
    .await;
    // The cluster is full; protect the oldest batch task.
    let keep = batch[0]["taskArn"].clone();
    api.ecs(
        "UpdateTaskProtection",
        json!({"cluster": "default", "tasks": [keep.clone()], "protectionEnabled": true, "expiresInMinutes": 60}),
    )
    .await;
    api.ecs(
        "CreateService",
        json!({"serviceName": "db", "taskDefinition": "db", "desiredCount": 2,
               "tags": [{"key": "berth:tier", "value": "critical"}]}),
    )
    .await;
    wait("the critical service's two tasks running", 90, || async {
        (api.running("service:db").await.len() == 2).then_some(())
    })
    .await;
    let all = api.tasks("STOPPED").await;
    let preempted: Vec<&Value> = all.iter().filter(|t| t["stopCode"] == "TaskPreempted").collect();
    assert_eq!(preempted.len(), 2, "two batch tasks made room: {all:#?}");
    let db: Vec<String> = api
        .running("service:db")
        .await
        .iter()
        .map(|t| t["taskArn"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    for t in &preempted {
        assert_eq!(t["group"], "batch", "{t}");
        assert_ne!(t["taskArn"], keep, "the protected task was preempted");
        let reason = t["stoppedReason"].as_str().unwrap();
        assert!(
            reason.contains("to make room for task") && db.iter().any(|id| reason.contains(id.as_str())),
            "{reason} names none of {db:?}"
        );
    }
    let still: Vec<Value> = api.running("batch").await;
    assert_eq!(still.len(), 2);
    assert!(
        still.iter().any(|t| t["taskArn"] == keep),
        "the protected task keeps running"
    );

    api.ecs("DeleteService", json!({"service": "db", "force": true})).await;
    stop_all(&api).await;
    c.stop().await;
}
