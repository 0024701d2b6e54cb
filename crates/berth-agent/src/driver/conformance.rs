//! The one suite every [`Driver`] must pass. Each check is a public async
//! function over a [`Fixture`]; `tests/` and the unit tests call them through
//! [`conformance_tests!`](crate::conformance_tests) for the fake, process and
//! docker drivers.
//!
//! Workloads are berth-testapp invocations: the fixture's `image` runs the
//! testapp (a binary path for `process`, `berth-testapp:latest` for
//! `docker`), and the checks pass testapp flags as the command. Every check
//! uses a fresh agent id and removes what it created, also when it fails.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::PortAssignment;
use futures::FutureExt;

use super::{ContainerSpec, Driver, RunState, labels};
use crate::AgentError;

/// How a driver under test is made and what its workload looks like.
#[derive(Clone)]
pub struct Fixture {
    /// A new driver value over the same backing state (an agent restart).
    pub make_driver: Arc<dyn Fn() -> Arc<dyn Driver> + Send + Sync>,
    /// The image that runs berth-testapp.
    pub image: String,
    /// An image that is not on the host.
    pub missing_image: String,
    /// A command that succeeds / fails inside a running container.
    pub probe_ok: Vec<String>,
    pub probe_fail: Vec<String>,
    /// Whether the testapp's HTTP port is reachable on 127.0.0.1:hostPort.
    pub serves_http: bool,
    /// Whether a memory hard limit is enforced (OOM kill observable).
    pub enforces_memory: bool,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// A spec for one testapp container with the given flags.
pub fn spec(fx: &Fixture, agent_id: &str, task_id: &str, name: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        agent_id: agent_id.to_string(),
        cluster: "conformance".into(),
        task_arn: format!("arn:aws:ecs:us-east-1:000000000000:task/conformance/{task_id}"),
        task_id: task_id.to_string(),
        name: name.to_string(),
        image: fx.image.clone(),
        entry_point: Vec::new(),
        command: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("NAME".into(), format!("{name}-{task_id}"))],
        cpu_units: 128,
        memory_mib: Some(128),
        memory_reservation_mib: Some(64),
        // Every container gets its own host port, so concurrent checks never
        // fight over the testapp's default 8080.
        ports: vec![PortAssignment {
            container_name: name.to_string(),
            container_port: 8080,
            host_port: free_port(),
            protocol: Default::default(),
        }],
        stop_timeout: Duration::from_secs(5),
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn agent_id() -> String {
    format!("conformance-{}", uuid::Uuid::new_v4().simple())
}

/// Runs `body` with a fresh agent id, then removes every container labelled
/// with it, even when `body` panicked.
async fn with_agent<F, Fut>(fx: &Fixture, body: F)
where
    F: FnOnce(Arc<dyn Driver>, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let driver = (fx.make_driver)();
    let agent = agent_id();
    let outcome = AssertUnwindSafe(body(driver.clone(), agent.clone()))
        .catch_unwind()
        .await;
    if let Ok(list) = driver.list(&agent).await {
        for c in list {
            let _ = driver.remove(&c.runtime_id).await;
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// Polls `f` until it yields `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A container that exits by itself reports its exit code, and `wait` is
/// repeatable afterwards.
pub async fn exit_code_is_reported(fx: &Fixture) {
    with_agent(fx, |d, agent| async move {
        let s = spec(
            fx,
            &agent,
            "t-exit",
            "app",
            &["--exit-after-ms", "200", "--exit-code", "3"],
        );
        let id = d.create(&s).await.expect("create");
        assert_eq!(d.inspect(&id).await.expect("inspect").state, RunState::Created);
        d.start(&id).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), d.wait(&id))
            .await
            .expect("exits within 30 s")
            .expect("wait");
        assert_eq!(exit.exit_code, Some(3), "{exit:?}");
        assert!(!exit.oom_killed);
        let again = d.wait(&id).await.expect("wait again");
        assert_eq!(again.exit_code, Some(3));
        let info = d.inspect(&id).await.expect("inspect");
        assert_eq!(info.state, RunState::Exited);
        assert_eq!(info.exit.and_then(|e| e.exit_code), Some(3));
        let logs = d.logs(&id, None).await.expect("logs");
        assert!(logs.stderr.contains("exiting with 3"), "stderr: {:?}", logs.stderr);
        assert!(logs.stdout.contains("listening"), "stdout: {:?}", logs.stdout);
    })
    .await;
}

/// `stop` on a running container ends it gracefully (testapp exits 0 on
/// SIGTERM) and is idempotent.
pub async fn stop_is_graceful_and_idempotent(fx: &Fixture) {
    with_agent(fx, |d, agent| async move {
        let mut s = spec(fx, &agent, "t-stop", "app", &[]);
        s.ports = vec![PortAssignment {
            container_name: "app".into(),
            container_port: 8080,
            host_port: free_port(),
            protocol: Default::default(),
        }];
        let id = d.create(&s).await.expect("create");
        d.start(&id).await.expect("start");
        assert_eq!(d.inspect(&id).await.expect("inspect").state, RunState::Running);
        if fx.serves_http {
            // Wait until it listens, so SIGTERM meets the installed handler.
            let port = s.ports[0].host_port;
            eventually("testapp to answer /health", Duration::from_secs(30), || {
                http_get(port, "/health")
            })
            .await;
        }
        d.stop(&id, Duration::from_secs(10)).await.expect("stop");
        let exit = d.wait(&id).await.expect("wait");
        assert_eq!(exit.exit_code, Some(0), "graceful SIGTERM exit: {exit:?}");
        d.stop(&id, Duration::from_secs(1)).await.expect("stop again is fine");
        d.remove(&id).await.expect("remove");
        assert!(matches!(d.inspect(&id).await, Err(AgentError::NotFound(_))), "removed");
    })
    .await;
}

/// Host ports and environment reach the workload: it answers HTTP on the
/// allocated host port and echoes the NAME it was given.
pub async fn ports_and_env_reach_the_workload(fx: &Fixture) {
    if !fx.serves_http {
        return;
    }
    with_agent(fx, |d, agent| async move {
        let mut s = spec(fx, &agent, "t-port", "web", &[]);
        let port = free_port();
        s.ports = vec![PortAssignment {
            container_name: "web".into(),
            container_port: 8080,
            host_port: port,
            protocol: Default::default(),
        }];
        let id = d.create(&s).await.expect("create");
        d.start(&id).await.expect("start");
        let body = eventually("HTTP answer on the host port", Duration::from_secs(30), || {
            http_get(port, "/hello")
        })
        .await;
        assert!(body.contains("web-t-port GET /hello"), "{body}");
        let stats = d.stats(&id).await.expect("stats");
        assert!(stats.memory_bytes > 0, "{stats:?}");
        d.stop(&id, Duration::from_secs(10)).await.expect("stop");
    })
    .await;
}

/// A container the workload ends through its API exits with that code.
pub async fn exit_through_the_workload(fx: &Fixture) {
    if !fx.serves_http {
        return;
    }
    with_agent(fx, |d, agent| async move {
        let mut s = spec(fx, &agent, "t-exitapi", "web", &[]);
        let port = free_port();
        s.ports = vec![PortAssignment {
            container_name: "web".into(),
            container_port: 8080,
            host_port: port,
            protocol: Default::default(),
        }];
        let id = d.create(&s).await.expect("create");
        d.start(&id).await.expect("start");
        eventually("testapp up", Duration::from_secs(30), || http_get(port, "/health")).await;
        let _ = http_get(port, "/exit/42").await;
        let exit = tokio::time::timeout(Duration::from_secs(30), d.wait(&id))
            .await
            .expect("exit in time")
            .expect("wait");
        assert_eq!(exit.exit_code, Some(42));
    })
    .await;
}

/// `list` finds containers by agent label only, and a new driver value (a
/// restarted agent) re-adopts a running container: it sees it running, can
/// stop it and observe its exit.
pub async fn list_and_readopt(fx: &Fixture) {
    with_agent(fx, |d, agent| async move {
        let a = d.create(&spec(fx, &agent, "t-a", "one", &[])).await.expect("create");
        d.start(&a).await.expect("start");
        let b = d.create(&spec(fx, &agent, "t-b", "two", &[])).await.expect("create");
        let other = agent_id();
        let c = d.create(&spec(fx, &other, "t-c", "three", &[])).await.expect("create");
        let mut listed = d.list(&agent).await.expect("list");
        listed.sort_by(|x, y| x.label(labels::TASK_ID).cmp(&y.label(labels::TASK_ID)));
        let ids: Vec<_> = listed.iter().map(|c| c.runtime_id.clone()).collect();
        assert_eq!(ids, vec![a.clone(), b.clone()]);
        assert_eq!(listed[0].label(labels::CONTAINER), Some("one"));
        assert_eq!(listed[0].label(labels::AGENT), Some(agent.as_str()));
        assert_eq!(listed[0].state, RunState::Running);
        assert_eq!(listed[1].state, RunState::Created);
        d.remove(&c).await.expect("remove other agent's container");

        let restarted = (fx.make_driver)();
        let seen = restarted.list(&agent).await.expect("list after restart");
        let one = seen.iter().find(|c| c.runtime_id == a).expect("re-adopted");
        assert_eq!(one.state, RunState::Running);
        assert!(one.started_at.is_some());
        restarted.stop(&a, Duration::from_secs(10)).await.expect("stop adopted");
        let exit = tokio::time::timeout(Duration::from_secs(30), restarted.wait(&a))
            .await
            .expect("adopted exit observed")
            .expect("wait");
        assert!(!exit.oom_killed);
        assert_eq!(restarted.inspect(&a).await.expect("inspect").state, RunState::Exited);
    })
    .await;
}

/// A missing image fails at create with `CannotPullContainerError`.
pub async fn missing_image_cannot_pull(fx: &Fixture) {
    with_agent(fx, |d, agent| async move {
        let mut s = spec(fx, &agent, "t-missing", "app", &[]);
        s.image = fx.missing_image.clone();
        let err = d.create(&s).await.expect_err("missing image must fail");
        assert!(matches!(err, AgentError::ImageNotFound { .. }), "{err}");
        assert!(err.to_string().starts_with("CannotPullContainerError"), "{err}");
    })
    .await;
}

/// Exceeding the memory hard limit is reported as OOM-killed.
pub async fn oom_is_reported(fx: &Fixture) {
    if !fx.enforces_memory {
        return;
    }
    with_agent(fx, |d, agent| async move {
        let mut s = spec(fx, &agent, "t-oom", "hog", &["--eat-memory-mib", "256"]);
        s.memory_mib = Some(64);
        s.memory_reservation_mib = None;
        let id = d.create(&s).await.expect("create");
        d.start(&id).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), d.wait(&id))
            .await
            .expect("killed in time")
            .expect("wait");
        assert!(exit.oom_killed, "{exit:?}");
        assert_ne!(exit.exit_code, Some(0));
    })
    .await;
}

/// `exec` runs health-check commands in the container's context.
pub async fn exec_runs_probes(fx: &Fixture) {
    with_agent(fx, |d, agent| async move {
        let id = d.create(&spec(fx, &agent, "t-exec", "app", &[])).await.expect("create");
        d.start(&id).await.expect("start");
        let ok = d
            .exec(&id, &fx.probe_ok, Duration::from_secs(10))
            .await
            .expect("exec ok");
        assert!(ok.success(), "{ok:?}");
        let bad = d
            .exec(&id, &fx.probe_fail, Duration::from_secs(10))
            .await
            .expect("exec fail");
        assert!(!bad.success(), "{bad:?}");
        d.stop(&id, Duration::from_secs(10)).await.expect("stop");
    })
    .await;
}

/// Expands to one `#[tokio::test]` per conformance check; `$fixture` is an
/// expression of type `Option<Fixture>` (`None` = skip, the fixture has
/// already said why).
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            exit_code_is_reported, stop_is_graceful_and_idempotent, ports_and_env_reach_the_workload,
            exit_through_the_workload, list_and_readopt, missing_image_cannot_pull, oom_is_reported,
            exec_runs_probes);
    };
    (@each $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture: Option<$crate::driver::conformance::Fixture> = $fixture;
                if let Some(fx) = fixture {
                    $crate::driver::conformance::$name(&fx).await;
                }
            }
        )*
    };
}
