//! The docker driver against the machine's engine with the FROM-scratch
//! berth-testapp image (built by scripts/build-test-image when missing).
//! Without an engine these fail unless BERTH_SKIP_DOCKER=1, and then print
//! SKIPPED with the reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_agent::driver::conformance::{self, Fixture};
use berth_agent::driver::docker::DockerDriver;
use berth_agent::driver::{Driver, labels};

async fn driver() -> Option<DockerDriver> {
    if !common::docker_available() {
        return None;
    }
    common::ensure_test_image();
    Some(
        DockerDriver::connect()
            .await
            .expect("connect to docker")
            .with_bind_ip("127.0.0.1"),
    )
}

async fn fixture() -> Option<Fixture> {
    let d = driver().await?;
    Some(Fixture {
        make_driver: Arc::new(move || Arc::new(d.clone())),
        image: common::TEST_IMAGE.into(),
        missing_image: "berth-no-such-image:never".into(),
        probe_ok: vec!["/berth-testapp".into(), "--help".into()],
        probe_fail: vec!["/no/such/probe".into()],
        serves_http: true,
        enforces_memory: true,
    })
}

berth_agent::conformance_tests!(fixture().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_labels_and_command_reach_the_engine() {
    let Some(d) = driver().await else { return };
    let agent = format!("docker-limits-{}", uuid::Uuid::new_v4().simple());
    let fx = fixture().await.expect("fixture");
    let mut s = conformance::spec(&fx, &agent, "limits", "app", &["--name", "from-cmd"]);
    s.cpu_units = 512;
    s.memory_mib = Some(96);
    s.memory_reservation_mib = Some(48);
    let id = d.create(&s).await.expect("create");
    let inspected = d.client().inspect_container(&id, None).await.expect("inspect");
    common::remove_labelled(labels::AGENT, &agent);
    let hc = inspected.host_config.expect("host config");
    assert_eq!(hc.cpu_shares, Some(512));
    assert_eq!(hc.memory, Some(96 << 20));
    assert_eq!(hc.memory_reservation, Some(48 << 20));
    let cfg = inspected.config.expect("config");
    assert_eq!(cfg.cmd, Some(vec!["--name".to_string(), "from-cmd".to_string()]));
    let lbl = cfg.labels.expect("labels");
    assert_eq!(lbl.get(labels::TASK_ID).map(String::as_str), Some("limits"));
    assert_eq!(lbl.get(labels::CONTAINER).map(String::as_str), Some("app"));
    assert!(
        cfg.env
            .unwrap_or_default()
            .iter()
            .any(|e| e.starts_with("BERTH_HOST_PORT_8080="))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_tar_loads_like_docker_load() {
    let Some(d) = driver().await else { return };
    let tag = format!("berth-load-test:{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("image.tar");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["tag", common::TEST_IMAGE, &tag]);
    run(&["save", "-o", tar.to_str().expect("utf8 path"), &tag]);
    run(&["rmi", &tag]);
    assert!(
        !d.has_image(&tag).await.expect("inspect"),
        "tag removed before the load"
    );
    d.load_image(&tar).await.expect("load");
    let loaded = d.has_image(&tag).await.expect("inspect");
    run(&["rmi", &tag]);
    assert!(loaded, "the tar's image is present after load_image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_through_the_agent_and_readopt() {
    use berth_agent::Agent;
    use berth_agent::state::StateDir;
    use berth_model::TaskStatus;
    use berth_proto::{AgentMessage, DesiredTask, PortAssignment, ServerMessage, TaskUpdate};

    let Some(d) = driver().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = conformance::free_port();
    let task: DesiredTask = serde_json::from_value(serde_json::json!({
        "taskArn": "arn:aws:ecs:us-east-1:1:task/default/dockertask", "cluster": "default", "desiredStatus": "RUNNING",
        "taskDefinition": {"family": "web", "revision": 1, "taskDefinitionArn": "td",
            "containerDefinitions": [{"name": "web", "image": common::TEST_IMAGE, "memory": 64, "stopTimeout": 5,
                "environment": [{"name": "NAME", "value": "dockertask"}],
                "portMappings": [{"containerPort": 8080}]}]}
    }))
    .expect("task");
    let mut task = task;
    task.host_ports = vec![PortAssignment {
        container_name: "web".into(),
        container_port: 8080,
        host_port: port,
        protocol: Default::default(),
    }];
    let driver: Arc<dyn Driver> = Arc::new(d.clone());
    let (agent, mut rx) = Agent::open(
        "default",
        StateDir::open(dir.path()).expect("state"),
        driver.clone(),
        "http://127.0.0.1:1",
    )
    .await
    .expect("open");
    let agent_id = agent.agent_id().to_string();
    let body = async {
        agent
            .apply(&ServerMessage::TaskUpdate(TaskUpdate::Add { task: task.clone() }))
            .await;
        let running = next_status(&mut rx, TaskStatus::Running).await;
        assert_eq!(running.containers[0].network_bindings[0].host_port, port);
        let answer = conformance::eventually("HTTP on the dynamic host port", Duration::from_secs(30), || async {
            reqwest::get(format!("http://127.0.0.1:{port}/hi"))
                .await
                .ok()?
                .text()
                .await
                .ok()
        })
        .await;
        assert!(answer.contains("dockertask GET /hi"), "{answer}");

        // Restart: a new agent over the same state dir re-adopts the container.
        agent.detach();
        let (agent2, mut rx2) = Agent::open(
            "default",
            StateDir::open(dir.path()).expect("state"),
            driver.clone(),
            "http://127.0.0.1:1",
        )
        .await
        .expect("reopen");
        agent2
            .apply(&ServerMessage::TaskUpdate(TaskUpdate::Add { task: task.clone() }))
            .await;
        let listed = driver.list(&agent_id).await.expect("list");
        assert_eq!(listed.len(), 1, "re-adopted, not duplicated: {listed:?}");
        let _ = reqwest::get(format!("http://127.0.0.1:{port}/exit/7")).await;
        let stopped = next_status(&mut rx2, TaskStatus::Stopped).await;
        assert_eq!(stopped.containers[0].exit_code, Some(7));
        assert_eq!(stopped.stop_code.as_deref(), Some("EssentialContainerExited"));
        let logs = driver.logs(&listed[0].runtime_id, None).await.expect("logs");
        assert!(logs.stdout.contains("listening"), "{logs:?}");
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body)).await;
    common::remove_labelled(labels::AGENT, &agent_id);
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }

    async fn next_status(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<AgentMessage>,
        want: TaskStatus,
    ) -> berth_proto::TaskStateChange {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("state change in time")
                .expect("open");
            if let AgentMessage::TaskStateChange(st) = msg
                && st.last_status == want
            {
                return st;
            }
        }
    }
}
