//! The process driver: the conformance suite plus what only processes have
//! (SIGKILL escalation, re-adoption identity, the per-task working dir).

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_agent::driver::conformance::{self, Fixture};
use berth_agent::driver::process::{CgroupSupport, ProcessDriver};
use berth_agent::driver::{Driver, RunState};

fn root() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .to_path_buf()
}

fn fixture() -> Option<Fixture> {
    let bin = common::testapp().display().to_string();
    let support = CgroupSupport::detect();
    if let CgroupSupport::Unavailable(why) = &support {
        eprintln!("NOTE: {why}; the OOM check of the conformance suite does not apply to this host");
    }
    let enforces = support.is_available();
    Some(Fixture {
        make_driver: Arc::new(move || {
            Arc::new(ProcessDriver::with_cgroups(root(), support.clone()).expect("process driver"))
        }),
        image: bin.clone(),
        missing_image: "/nonexistent/berth-testapp".into(),
        probe_ok: vec![bin, "--help".into()],
        probe_fail: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
        serves_http: true,
        enforces_memory: enforces,
    })
}

berth_agent::conformance_tests!(fixture());

fn shell_spec(agent: &str, task: &str, script: &str) -> berth_agent::driver::ContainerSpec {
    let fx = fixture().expect("fixture");
    let mut s = conformance::spec(&fx, agent, task, "sh", &[]);
    s.image = "ignored".into();
    s.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_for_the_whole_group() {
    let d = ProcessDriver::with_cgroups(root(), CgroupSupport::detect()).expect("driver");
    let agent = format!("t-{}", uuid::Uuid::new_v4().simple());
    // The shell ignores TERM and so does its child: only KILL of the group ends both.
    let s = shell_spec(
        &agent,
        "kill",
        "trap '' TERM; sleep 300 & echo $! > child.pid; wait; wait",
    );
    let id = d.create(&s).await.expect("create");
    d.start(&id).await.expect("start");
    let work = root().join("tasks").join("kill");
    let child_pid: i32 = conformance::eventually("child pid file", Duration::from_secs(10), || {
        let p = work.join("child.pid");
        async move { std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) }
    })
    .await;
    d.stop(&id, Duration::from_millis(300)).await.expect("stop");
    let exit = d.wait(&id).await.expect("wait");
    assert_eq!(exit.exit_code, Some(128 + 9), "killed by SIGKILL: {exit:?}");
    conformance::eventually("the group's child to be gone", Duration::from_secs(10), || async move {
        let stat = std::fs::read_to_string(format!("/proc/{child_pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init.
        (stat.is_empty() || stat.contains(") Z")).then_some(())
    })
    .await;
    d.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_is_not_mistaken_for_the_container() {
    let d = ProcessDriver::with_cgroups(root(), CgroupSupport::detect()).expect("driver");
    let agent = format!("t-{}", uuid::Uuid::new_v4().simple());
    let id = d
        .create(&shell_spec(&agent, "reuse", "sleep 300"))
        .await
        .expect("create");
    d.start(&id).await.expect("start");
    // Forge the record: same pid, another start time, as after a reboot
    // or pid wrap-around.
    let run = root().join("containers").join(&id).join("run.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&run).expect("run.json")).expect("json");
    let real = rec["start_ticks"].as_u64().expect("start_ticks");
    rec["start_ticks"] = serde_json::json!(real + 1);
    std::fs::write(&run, serde_json::to_vec(&rec).expect("encode")).expect("write");
    let seen = ProcessDriver::with_cgroups(root(), CgroupSupport::detect())
        .expect("driver")
        .inspect(&id)
        .await
        .expect("inspect");
    assert_eq!(
        seen.state,
        RunState::Exited,
        "a pid with another start time is not ours"
    );
    // Restore and clean up for real.
    rec["start_ticks"] = serde_json::json!(real);
    std::fs::write(&run, serde_json::to_vec(&rec).expect("encode")).expect("write");
    assert_eq!(d.inspect(&id).await.expect("inspect").state, RunState::Running);
    d.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_dir_env_and_log_files() {
    let d = ProcessDriver::with_cgroups(root(), CgroupSupport::detect()).expect("driver");
    let agent = format!("t-{}", uuid::Uuid::new_v4().simple());
    let mut s = shell_spec(
        &agent,
        "envtask",
        "pwd; echo \"port=$PORT hp=$BERTH_HOST_PORT_80\"; echo oops >&2",
    );
    s.ports = vec![berth_proto::PortAssignment {
        container_name: "sh".into(),
        container_port: 80,
        host_port: 41234,
        protocol: Default::default(),
    }];
    let id = d.create(&s).await.expect("create");
    d.start(&id).await.expect("start");
    assert_eq!(d.wait(&id).await.expect("wait").exit_code, Some(0));
    let logs = d.logs(&id, None).await.expect("logs");
    assert!(logs.stdout.contains("/tasks/envtask"), "{logs:?}");
    assert!(logs.stdout.contains("port=41234 hp=41234"), "{logs:?}");
    assert_eq!(logs.stderr, "oops\n");
    assert_eq!(
        d.logs(&id, Some(1)).await.expect("tail").stdout,
        "port=41234 hp=41234\n"
    );
    d.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_survive_an_agent_restart() {
    let d = ProcessDriver::with_cgroups(root(), CgroupSupport::detect()).expect("driver");
    let agent = format!("t-{}", uuid::Uuid::new_v4().simple());
    let id = d
        .create(&shell_spec(&agent, "shimmed", "exit 7"))
        .await
        .expect("create");
    d.start(&id).await.expect("start");
    assert_eq!(d.wait(&id).await.expect("wait").exit_code, Some(7));
    let dir = root().join("containers").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("exit_code")).expect("shim wrote it"),
        "7"
    );
    // As a restarted agent finds it: the process is gone (another start
    // time), nobody recorded exit.json, the shim's file is there.
    std::fs::remove_file(dir.join("exit.json")).expect("remove exit.json");
    let run = dir.join("run.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&run).expect("run.json")).expect("json");
    rec["start_ticks"] = serde_json::json!(rec["start_ticks"].as_u64().expect("ticks") + 1);
    std::fs::write(&run, serde_json::to_vec(&rec).expect("encode")).expect("write");
    let restarted = ProcessDriver::with_cgroups(root(), CgroupSupport::detect()).expect("driver");
    let exit = tokio::time::timeout(Duration::from_secs(10), restarted.wait(&id))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(exit.exit_code, Some(7), "{exit:?}");
    restarted.remove(&id).await.expect("remove");
}
