//! `berth service` verbs, `--wait` and its deadline, against a real server.

mod cli_support;

use cli_support::Server;

fn with_taskdef() -> Server {
    let s = Server::start();
    s.berth(&["cluster", "up", "dev"]).ok();
    let f = s.write(
        "web.json",
        r#"{"family": "web", "containerDefinitions": [{"name": "web", "image": "nginx", "memory": 128}]}"#,
    );
    s.berth(&["taskdef", "register", &f]).ok();
    s.berth(&["taskdef", "register", &f]).ok();
    s
}

#[test]
fn service_create_update_scale_describe_rm() {
    let s = with_taskdef();
    // desiredCount 0 is steady at once, so --wait returns.
    let out = s.berth(&[
        "service",
        "create",
        "-c",
        "dev",
        "web",
        "--taskdef",
        "web:1",
        "--count",
        "0",
        "--wait",
    ]);
    assert!(
        out.ok().lines().any(|l| l.starts_with("web ") && l.contains("web:1")),
        "{}",
        out.stdout
    );
    let ls = s.berth(&["service", "ls", "-c", "dev"]).ok().to_string();
    assert!(ls.starts_with("SERVICE") && ls.contains("web"), "{ls}");
    let js = s.berth(&["service", "ls", "-c", "dev", "-o", "json"]).json();
    assert_eq!(js[0]["serviceName"], "web");
    let out = s.berth(&[
        "service",
        "update",
        "-c",
        "dev",
        "web",
        "--taskdef",
        "web:2",
        "-o",
        "json",
    ]);
    assert!(out.json()["taskDefinition"].as_str().unwrap().ends_with("web:2"));
    let out = s.berth(&["service", "scale", "-c", "dev", "web", "3", "-o", "json"]);
    assert_eq!(out.json()["desiredCount"], 3);
    let desc = s.berth(&["service", "describe", "-c", "dev", "web"]).ok().to_string();
    assert!(desc.contains("3 desired") && desc.contains("deployments:"), "{desc}");
    s.berth(&["service", "rm", "-c", "dev", "web", "--force"]).ok();
    // Deleted: DRAINING until its tasks are gone, then INACTIVE.
    let desc = s.berth(&["service", "describe", "-c", "dev", "web"]).ok().to_string();
    assert!(desc.contains("DRAINING") || desc.contains("INACTIVE"), "{desc}");
    let ls = s.berth(&["service", "ls", "-c", "dev", "-o", "json"]).json();
    assert!(ls.as_array().unwrap().iter().all(|v| v["status"] != "ACTIVE"), "{ls}");
    let err = s
        .berth(&["service", "describe", "-c", "dev", "ghost"])
        .fails(3)
        .to_string();
    assert!(err.contains("ServiceNotFoundException"), "{err}");
}

#[test]
fn service_failures() {
    let s = with_taskdef();
    let err = s
        .berth(&["service", "create", "-c", "nope", "web", "--taskdef", "web:1"])
        .fails(3)
        .to_string();
    assert!(err.contains("ClusterNotFoundException"), "{err}");
    s.berth(&["service", "create", "-c", "dev", "web", "--taskdef", "nosuch:1"])
        .fails(3);
    s.berth(&["service", "scale", "-c", "dev", "ghost", "2"]).fails(3);
    s.berth(&["service", "rm", "-c", "dev", "ghost"]).fails(3);
    s.berth(&["service", "scale", "-c", "dev", "web", "x"]).fails(2);
    s.berth(&[
        "service",
        "scale",
        "-c",
        "dev",
        "web",
        "1",
        "--wait",
        "--timeout",
        "soon",
    ])
    .fails(2);
}

#[test]
fn wait_gives_up_at_the_deadline_and_plan_shows_the_next_step() {
    let s = with_taskdef();
    // No instance can run the tasks, so the service never becomes steady.
    s.berth(&[
        "service",
        "create",
        "-c",
        "dev",
        "web",
        "--taskdef",
        "web",
        "--count",
        "0",
    ])
    .ok();
    let err = s
        .berth(&["service", "scale", "-c", "dev", "web", "2", "--wait", "--timeout", "1s"])
        .fails(6)
        .to_string();
    assert!(
        err.contains("not steady after 1s") && err.contains("/2 running"),
        "{err}"
    );
    // The plan extension: what the reconciler would do for 4 tasks.
    let plan = s
        .berth(&["service", "plan", "-c", "dev", "web", "--count", "4"])
        .ok()
        .to_string();
    assert!(plan.contains("desiredCount: 4"), "{plan}");
    let plan = s
        .berth(&["service", "plan", "-c", "dev", "web", "--count", "4", "-o", "json"])
        .json();
    assert_eq!(plan["desiredCount"], 4, "{plan}");
    s.berth(&["service", "plan", "-c", "dev", "ghost"]).fails(3);
}

#[test]
fn wait_blocks_until_a_real_agent_runs_the_tasks() {
    let s = Server::start_with_agent();
    let f = s.write(
        "sleep.json",
        r#"{"family": "sleeper", "containerDefinitions": [{"name": "main", "image": "/bin/sleep",
            "command": ["300"], "cpu": 64, "memory": 32, "stopTimeout": 1}]}"#,
    );
    s.berth(&["taskdef", "register", &f]).ok();
    let svc = s
        .berth(&[
            "service",
            "create",
            "sleepy",
            "--taskdef",
            "sleeper",
            "--count",
            "2",
            "--wait",
            "--timeout",
            "60s",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(svc["runningCount"], 2, "{svc}");
    assert_eq!(svc["deployments"].as_array().map(Vec::len), Some(1), "{svc}");
    let ps = s.berth(&["ps", "--service", "sleepy"]).ok().to_string();
    assert_eq!(ps.lines().filter(|l| l.contains("RUNNING  RUNNING")).count(), 2, "{ps}");
    let id = ps
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let explain = s.berth(&["explain", &id]).ok().to_string();
    assert!(
        explain.contains("is RUNNING") && explain.contains("; running"),
        "{explain}"
    );
    let svc = s
        .berth(&[
            "service",
            "scale",
            "sleepy",
            "1",
            "--wait",
            "--timeout",
            "60s",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(svc["runningCount"], 1, "{svc}");
}
