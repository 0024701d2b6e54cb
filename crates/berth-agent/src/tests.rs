//! The agent core against the fake driver: supervision, ordering, health,
//! reconcile and re-adoption.

use std::sync::Arc;
use std::time::Duration;

use berth_model::{HealthStatus, TaskDefinition, TaskStatus};
use berth_proto::{
    AgentMessage, DesiredTask, DesiredTasks, PortAssignment, ServerMessage, TaskStateChange, TaskUpdate,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::Agent;
use crate::driver::fake::FakeDriver;
use crate::driver::{Driver, labels};
use crate::reconcile::NOT_DESIRED;
use crate::state::StateDir;

fn taskdef(containers: serde_json::Value) -> TaskDefinition {
    serde_json::from_value(serde_json::json!({
        "family": "web", "revision": 3, "taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/web:3",
        "containerDefinitions": containers
    }))
    .expect("task definition")
}

fn desired(id: &str, td: TaskDefinition) -> DesiredTask {
    DesiredTask {
        task_arn: format!("arn:aws:ecs:us-east-1:1:task/default/{id}"),
        cluster: "default".into(),
        desired_status: TaskStatus::Running,
        task_definition: td,
        host_ports: Vec::new(),
        stop_reason: None,
    }
}

fn add(t: &DesiredTask) -> ServerMessage {
    ServerMessage::TaskUpdate(TaskUpdate::Add { task: t.clone() })
}

fn stop(t: &DesiredTask, reason: &str) -> ServerMessage {
    ServerMessage::TaskUpdate(TaskUpdate::Stop {
        task_arn: t.task_arn.clone(),
        reason: Some(reason.into()),
    })
}

async fn open(dir: &std::path::Path, driver: &FakeDriver) -> (Agent, UnboundedReceiver<AgentMessage>) {
    let d: Arc<dyn Driver> = Arc::new(driver.reopen());
    Agent::open(
        "default",
        StateDir::open(dir).expect("state dir"),
        d,
        "http://127.0.0.1:51678",
    )
    .await
    .expect("open agent")
}

/// Reads reports until one about `arn` satisfies `pred`; every state seen
/// on the way is passed to `seen`.
async fn until_state(
    rx: &mut UnboundedReceiver<AgentMessage>,
    arn: &str,
    mut seen: impl FnMut(&TaskStateChange),
    pred: impl Fn(&TaskStateChange) -> bool,
) -> TaskStateChange {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("state reached before the deadline")
            .expect("channel open");
        if let AgentMessage::TaskStateChange(st) = msg
            && st.task_arn == arn
        {
            seen(&st);
            if pred(&st) {
                return st;
            }
        }
    }
}

fn status(s: TaskStatus) -> impl Fn(&TaskStateChange) -> bool {
    move |st| st.last_status == s
}

#[tokio::test]
async fn task_runs_gets_its_env_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let mut t = desired(
        "t1",
        taskdef(serde_json::json!([{"name": "app", "image": "testapp", "memory": 64,
            "environment": [{"name": "GREETING", "value": "hi"}],
            "portMappings": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 9090}]}])),
    );
    t.host_ports = vec![PortAssignment {
        container_name: "app".into(),
        container_port: 8080,
        host_port: 40001,
        protocol: Default::default(),
    }];
    agent.apply(&add(&t)).await;
    let running = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Running)).await;
    assert!(running.started_at.is_some());
    let c = &running.containers[0];
    assert_eq!(c.last_status, TaskStatus::Running);
    assert_eq!(c.network_bindings.len(), 1);
    assert_eq!(c.network_bindings[0].host_port, 40001);
    let env = fake.env_of(c.runtime_id.as_deref().unwrap()).unwrap();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("GREETING").as_deref(), Some("hi"));
    assert_eq!(get("PORT").as_deref(), Some("40001"));
    assert_eq!(
        get("BERTH_HOST_PORT_9090").as_deref(),
        Some("9090"),
        "static port used as is"
    );
    assert_eq!(
        get("ECS_CONTAINER_METADATA_URI_V4").as_deref(),
        Some("http://127.0.0.1:51678/v4/t1/app")
    );

    agent.apply(&add(&t)).await;
    assert_eq!(fake.total_starts(), 1, "a repeated Add starts nothing");
    agent.apply(&stop(&t, "Scaling down")).await;
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.stop_code.as_deref(), Some("UserInitiated"));
    assert_eq!(stopped.stopped_reason.as_deref(), Some("Scaling down"));
    assert_eq!(stopped.containers[0].exit_code, Some(0));
    assert!(stopped.stopped_at.is_some() && stopped.stopping_at.is_some());
}

#[tokio::test]
async fn essential_exit_stops_the_task_non_essential_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t2",
        taskdef(serde_json::json!([
            {"name": "main", "image": "testapp", "memory": 64},
            {"name": "side", "image": "testapp", "memory": 64, "essential": false,
             "command": ["--exit-after-ms", "30", "--exit-code", "5"]}])),
    );
    agent.apply(&add(&t)).await;
    let side_done = until_state(&mut rx, &t.task_arn, |_| {}, |st| st.containers[1].exit_code == Some(5)).await;
    assert_eq!(
        side_done.last_status,
        TaskStatus::Running,
        "non-essential exit leaves the task running"
    );
    assert!(side_done.stopping_at.is_none());
    let main_id = side_done.containers[0].runtime_id.clone().unwrap();
    fake.crash(&main_id, 2);
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.stop_code.as_deref(), Some("EssentialContainerExited"));
    assert_eq!(
        stopped.stopped_reason.as_deref(),
        Some("Essential container in task exited")
    );
    assert_eq!(stopped.containers[0].exit_code, Some(2));
}

#[tokio::test]
async fn depends_on_orders_starts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t3",
        taskdef(serde_json::json!([
            {"name": "sidecar", "image": "testapp", "memory": 64, "essential": false,
             "dependsOn": [{"containerName": "app", "condition": "START"}]},
            {"name": "app", "image": "testapp", "memory": 64,
             "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
            {"name": "init", "image": "testapp", "memory": 64, "essential": false,
             "command": ["--exit-after-ms", "50", "--exit-code", "0"]}])),
    );
    agent.apply(&add(&t)).await;
    let mut violations = Vec::new();
    let running = until_state(
        &mut rx,
        &t.task_arn,
        |st| {
            let (side, app, init) = (&st.containers[0], &st.containers[1], &st.containers[2]);
            if app.runtime_id.is_some() && init.exit_code != Some(0) {
                violations.push("app created before init succeeded");
            }
            if side.runtime_id.is_some() && app.last_status < TaskStatus::Running {
                violations.push("sidecar created before app started");
            }
        },
        status(TaskStatus::Running),
    )
    .await;
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(running.containers[1].last_status, TaskStatus::Running);
    assert_eq!(running.containers[0].last_status, TaskStatus::Running);
    assert_eq!(running.containers[2].exit_code, Some(0));
}

#[tokio::test]
async fn dependents_stop_before_their_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t11",
        taskdef(serde_json::json!([
            {"name": "db", "image": "testapp", "memory": 64},
            {"name": "app", "image": "testapp", "memory": 64,
             "dependsOn": [{"containerName": "db", "condition": "START"}]},
            {"name": "proxy", "image": "testapp", "memory": 64,
             "dependsOn": [{"containerName": "app", "condition": "START"}]}])),
    );
    agent.apply(&add(&t)).await;
    until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Running)).await;
    agent.apply(&stop(&t, "bye")).await;
    let mut order = Vec::new();
    until_state(
        &mut rx,
        &t.task_arn,
        |st| {
            for c in &st.containers {
                if c.last_status == TaskStatus::Stopped && !order.contains(&c.name) {
                    order.push(c.name.clone());
                }
            }
        },
        status(TaskStatus::Stopped),
    )
    .await;
    assert_eq!(order, vec!["proxy", "app", "db"], "reverse dependency order");
}

#[tokio::test]
async fn unmet_dependency_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t4",
        taskdef(serde_json::json!([
            {"name": "init", "image": "testapp", "memory": 64, "essential": false,
             "command": ["--exit-after-ms", "20", "--exit-code", "3"]},
            {"name": "app", "image": "testapp", "memory": 64,
             "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}])),
    );
    agent.apply(&add(&t)).await;
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.stop_code.as_deref(), Some("TaskFailedToStart"));
    assert!(
        stopped.stopped_reason.as_deref().unwrap_or("").contains("SUCCESS"),
        "{stopped:?}"
    );
    assert!(stopped.containers[1].runtime_id.is_none(), "app was never created");
    assert_eq!(fake.total_starts(), 1);
}

#[tokio::test]
async fn health_checks_gate_healthy_dependencies_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t5",
        taskdef(serde_json::json!([
            {"name": "db", "image": "testapp", "memory": 64,
             "healthCheck": {"command": ["CMD", "true"], "interval": 1, "retries": 1}},
            {"name": "app", "image": "testapp", "memory": 64,
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]},
            {"name": "flaky", "image": "testapp", "memory": 64, "essential": false,
             "healthCheck": {"command": ["CMD", "false"], "interval": 1, "retries": 1}}])),
    );
    agent.apply(&add(&t)).await;
    let mut healths = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut app_started_healthy = None;
    while healths.len() < 2 || app_started_healthy.is_none() {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        match msg {
            AgentMessage::ContainerHealth(h) => healths.push((h.container_name, h.health_status, h.task_health_status)),
            AgentMessage::TaskStateChange(st) if st.containers[1].runtime_id.is_some() => {
                app_started_healthy.get_or_insert(st.containers[0].health_status);
            }
            _ => {}
        }
    }
    assert_eq!(
        app_started_healthy,
        Some(HealthStatus::Healthy),
        "app waited for db HEALTHY"
    );
    assert!(
        healths.contains(&("db".into(), HealthStatus::Healthy, HealthStatus::Healthy)),
        "{healths:?}"
    );
    assert!(
        healths
            .iter()
            .any(|(n, h, _)| n == "flaky" && *h == HealthStatus::Unhealthy),
        "{healths:?}"
    );
    let st = agent.tasks()[&t.task_arn].state.clone();
    assert_eq!(
        st.health_status,
        HealthStatus::Healthy,
        "only essential containers count"
    );
}

#[tokio::test]
async fn missing_image_is_cannot_pull() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t6",
        taskdef(serde_json::json!([{"name": "a", "image": "missing:1", "memory": 64}])),
    );
    agent.apply(&add(&t)).await;
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.stop_code.as_deref(), Some("TaskFailedToStart"));
    let reason = stopped.stopped_reason.unwrap_or_default();
    assert!(reason.starts_with("CannotPullContainerError"), "{reason}");
    assert!(
        stopped.containers[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("missing:1")
    );
}

#[tokio::test]
async fn restart_readopts_running_tasks_and_never_starts_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let t = desired(
        "t7",
        taskdef(serde_json::json!([{"name": "a", "image": "testapp", "memory": 64}])),
    );
    let done = desired(
        "t8",
        taskdef(serde_json::json!([{"name": "a", "image": "testapp", "memory": 64,
            "command": ["--exit-after-ms", "10", "--exit-code", "1"]}])),
    );
    {
        let (agent, mut rx) = open(dir.path(), &fake).await;
        agent
            .apply(&ServerMessage::DesiredTasks(DesiredTasks {
                tasks: vec![t.clone(), done.clone()],
            }))
            .await;
        until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Running)).await;
        until_state(&mut rx, &done.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
        agent.detach();
    }
    assert_eq!(fake.total_starts(), 2);
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let snapshot = agent.snapshot();
    assert_eq!(snapshot.len(), 2);
    // The server re-sends everything (at-least-once): nothing starts again,
    // the finished task included.
    agent
        .apply(&ServerMessage::DesiredTasks(DesiredTasks {
            tasks: vec![t.clone(), done.clone()],
        }))
        .await;
    agent.apply(&add(&t)).await;
    assert_eq!(fake.total_starts(), 2, "re-adopted, not restarted");
    assert_eq!(agent.tasks()[&t.task_arn].state.last_status, TaskStatus::Running);
    assert_eq!(agent.tasks()[&done.task_arn].state.last_status, TaskStatus::Stopped);
    // The adopted task is supervised: a stop reaches it.
    agent.apply(&stop(&t, "bye")).await;
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.containers[0].exit_code, Some(0));
}

#[tokio::test]
async fn full_set_stops_the_unwanted_then_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    let t = desired(
        "t9",
        taskdef(serde_json::json!([{"name": "a", "image": "testapp", "memory": 64}])),
    );
    agent.apply(&add(&t)).await;
    until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Running)).await;
    let empty = ServerMessage::DesiredTasks(DesiredTasks { tasks: vec![] });
    agent.apply(&empty).await;
    let stopped = until_state(&mut rx, &t.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(stopped.stopped_reason.as_deref(), Some(NOT_DESIRED));
    agent.apply(&empty).await;
    assert!(agent.tasks().is_empty(), "forgotten once stopped and absent");
    assert!(
        fake.list(agent.agent_id()).await.unwrap().is_empty(),
        "containers removed"
    );
    assert!(StateDir::open(dir.path()).unwrap().load_tasks().unwrap().is_empty());
}

#[tokio::test]
async fn orphans_are_removed_and_unknown_stops_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new();
    let agent_id = StateDir::open(dir.path()).unwrap().identity().unwrap().agent_id;
    let mut spec = crate::driver::conformance::spec(
        &crate::driver::conformance::Fixture {
            make_driver: Arc::new(|| Arc::new(FakeDriver::new())),
            image: "testapp".into(),
            missing_image: "missing".into(),
            probe_ok: vec![],
            probe_fail: vec![],
            serves_http: false,
            enforces_memory: false,
        },
        &agent_id,
        "ghost",
        "a",
        &[],
    );
    spec.task_arn = "arn:ghost".into();
    let ghost = fake.create(&spec).await.unwrap();
    fake.start(&ghost).await.unwrap();
    let (agent, mut rx) = open(dir.path(), &fake).await;
    assert!(fake.list(&agent_id).await.unwrap().is_empty(), "orphan removed on open");
    let mut gone = desired(
        "t10",
        taskdef(serde_json::json!([{"name": "a", "image": "testapp", "memory": 64}])),
    );
    gone.desired_status = TaskStatus::Stopped;
    agent
        .apply(&ServerMessage::DesiredTasks(DesiredTasks {
            tasks: vec![gone.clone()],
        }))
        .await;
    let st = until_state(&mut rx, &gone.task_arn, |_| {}, status(TaskStatus::Stopped)).await;
    assert_eq!(st.containers[0].last_status, TaskStatus::Stopped);
    assert!(agent.tasks().is_empty(), "nothing recorded for a task never had");
    assert_eq!(
        fake.list(&agent_id)
            .await
            .unwrap()
            .iter()
            .filter(|c| c.label(labels::TASK_ID).is_some())
            .count(),
        0
    );
}

mod fake_conformance {
    use std::sync::Arc;

    use crate::driver::conformance::Fixture;
    use crate::driver::fake::FakeDriver;

    fn fixture() -> Option<Fixture> {
        let shared = FakeDriver::new();
        Some(Fixture {
            make_driver: Arc::new(move || Arc::new(shared.reopen())),
            image: "testapp".into(),
            missing_image: "missing-image:latest".into(),
            probe_ok: vec!["true".into()],
            probe_fail: vec!["false".into()],
            serves_http: false,
            enforces_memory: true,
        })
    }

    crate::conformance_tests!(fixture());
}
