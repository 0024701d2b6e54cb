//! `berth run`, `ps`, `stop`, `logs`, `explain` and `taskdef`, against a
//! real server with container instances registered through the API.

mod cli_support;

use std::time::Duration;

use cli_support::{Server, poll, short};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

fn task_json(s: &Server, cluster: &str, id: &str) -> Value {
    s.berth(&["explain", "-c", cluster, id, "-o", "json"]).json()
}

#[test]
fn run_ps_explain_stop_and_port_already_taken() {
    let s = Server::start();
    s.berth(&["cluster", "up", "dev"]).ok();
    let inst = s.register_instance("dev", 2048, 2048, &[]);
    let out = s.berth(&[
        "run",
        "-c",
        "dev",
        "web",
        "--image",
        "nginx:1.27",
        "--port",
        "8080:80",
        "--env",
        "MODE=prod",
        "--cmd",
        "nginx -g 'daemon off;'",
        "-o",
        "json",
    ]);
    assert!(out.stderr.contains("registered web:1"), "{}", out.stderr);
    let tasks = out.json();
    let first = short(tasks[0]["taskArn"].as_str().unwrap()).to_string();
    // The launcher places it on the only instance.
    let placed = poll("placement", LIMIT, || {
        let t = task_json(&s, "dev", &first);
        t.get("containerInstanceArn").is_some().then_some(t)
    });
    assert_eq!(placed["containerInstanceArn"], inst.as_str());
    let ps = s.berth(&["ps", "-c", "dev"]);
    let row = ps
        .ok()
        .lines()
        .find(|l| l.starts_with(&first))
        .unwrap_or_else(|| panic!("{}", ps.stdout));
    assert!(row.contains("web:1") && row.contains(short(&inst)), "{row}");
    let explain = s.berth(&["explain", "-c", "dev", &first]);
    assert!(explain.ok().contains("placed on instance"), "{}", explain.stdout);

    // A second task wanting host port 8080 cannot be placed on the only instance.
    let second = s.berth(&["run", "-c", "dev", "web:1", "-o", "json"]).json();
    let second = short(second[0]["taskArn"].as_str().unwrap()).to_string();
    // The launcher records why (the pendingReasons extension); explain glosses it.
    let text = poll("pending reasons", LIMIT, || {
        let out = s.berth(&["explain", "-c", "dev", &second]);
        out.ok().contains("RESOURCE:PORTS").then(|| out.stdout.clone())
    });
    assert!(
        text.contains("is PROVISIONING") && text.contains("not placed yet, because:") && text.contains("host port"),
        "{text}"
    );
    let t = task_json(&s, "dev", &second);
    assert!(t.get("containerInstanceArn").is_none(), "{t}");
    // A task larger than any instance is refused at once, naming the resource.
    let err = s
        .berth(&["run", "-c", "dev", "huge", "--image", "x", "--memory", "9000"])
        .fails(1)
        .to_string();
    assert!(
        err.contains("no task was started") && err.contains("RESOURCE:MEMORY"),
        "{err}"
    );

    // Overrides on an existing definition are accepted.
    s.berth(&["run", "-c", "dev", "web", "--env", "A=1", "--cmd", "true"])
        .ok();

    let out = s.berth(&["stop", "-c", "dev", &second, "--reason", "test"]);
    assert!(out.ok().contains(&second), "{}", out.stdout);
    let ps = s.berth(&["ps", "-c", "dev"]).ok().to_string();
    assert!(!ps.contains(&second), "{ps}");
    let all = s.berth(&["ps", "-c", "dev", "--all"]).ok().to_string();
    assert!(all.contains(&second) && all.contains("STOPPED"), "{all}");
    let explain = s.berth(&["explain", "-c", "dev", &second]);
    assert!(explain.ok().contains("stopped: test"), "{}", explain.stdout);

    // Failures.
    let err = s
        .berth(&["stop", "-c", "dev", "0123456789abcdef0123456789abcdef"])
        .fails(3)
        .to_string();
    assert!(err.contains("not found") && err.contains("berth ps --all"), "{err}");
    s.berth(&["explain", "-c", "dev", "0123456789abcdef0123456789abcdef"])
        .fails(3);
    let err = s.berth(&["run", "-c", "dev", "nosuchfamily"]).fails(3).to_string();
    assert!(
        err.contains("TaskDefinition not found") && err.contains("taskdef ls"),
        "{err}"
    );
    let err = s.berth(&["run", "-c", "nope", "web"]).fails(3).to_string();
    assert!(err.contains("ClusterNotFoundException"), "{err}");
    s.berth(&["run", "-c", "dev", "web", "--port", "8080"]).fails(2);
    s.berth(&["run", "-c", "dev", "web", "--image", "x", "--port", "http"])
        .fails(2);
    s.berth(&["run", "-c", "dev", "web", "--env", "NOEQUALS"]).fails(2);
    s.berth(&["ps", "-c", "nope"]).fails(3);
}

#[test]
fn logs_says_the_endpoint_is_missing_and_events_show_history() {
    let s = Server::start();
    s.berth(&["cluster", "up"]).ok();
    s.register_instance("default", 1024, 1024, &[]);
    let t = s.berth(&["run", "one", "--image", "busybox", "-o", "json"]).json();
    let id = short(t[0]["taskArn"].as_str().unwrap()).to_string();
    let err = s.berth(&["logs", &id]).fails(7).to_string();
    assert!(
        err.contains("not available yet") && err.contains("/v1/tasks/logs"),
        "{err}"
    );
    s.berth(&["logs", "-f", &id]).fails(7);
    s.berth(&["logs", "0123456789abcdef0123456789abcdef"]).fails(3);
    // The event history shows the cluster, the instance and the task.
    let events = s.berth(&["events"]).ok().to_string();
    assert!(events.contains("cluster default ACTIVE"), "{events}");
    assert!(events.lines().any(|l| l.contains("instance ")), "{events}");
    assert!(events.contains(&format!("task {id}")), "{events}");
    let json_lines = s.berth(&["events", "-o", "json"]).ok().to_string();
    for l in json_lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["revision"].as_i64().is_some(), "{l}");
    }
    s.berth(&["events", "-c", "nope"]).fails(3);
}

#[test]
fn taskdef_register_json_yaml_and_malformed() {
    let s = Server::start();
    let json_file = s.write(
        "web.json",
        r#"{"family": "web", "containerDefinitions": [{"name": "web", "image": "nginx", "memory": 128,
            "portMappings": [{"containerPort": 80}]}]}"#,
    );
    let out = s.berth(&["taskdef", "register", &json_file]);
    assert!(
        out.ok().contains("web:1") && out.stdout.contains("web (nginx)"),
        "{}",
        out.stdout
    );
    let yaml_file = s.write(
        "web.yaml",
        "family: web\ncontainerDefinitions:\n  - name: web\n    image: nginx:2\n    memory: 256\n",
    );
    let td = s.berth(&["taskdef", "register", &yaml_file, "-o", "json"]).json();
    assert_eq!(td["revision"], 2);
    // DescribeTaskDefinition output registers again (read-only members are dropped).
    let described = s
        .berth(&["taskdef", "describe", "web:2", "-o", "json"])
        .ok()
        .to_string();
    let again = s.write("again.json", &format!("{{\"taskDefinition\": {described}}}"));
    let td = s.berth(&["taskdef", "register", &again, "-o", "json"]).json();
    assert_eq!(td["revision"], 3);
    let ls = s.berth(&["taskdef", "ls"]).ok().to_string();
    assert!(ls.contains("web:1") && ls.contains("web:3"), "{ls}");

    let bad = s.write(
        "bad.json",
        "{\n  \"family\": \"web\",\n  \"containerDefinitions\": [\n}\n",
    );
    let err = s.berth(&["taskdef", "register", &bad]).fails(2).to_string();
    assert!(err.contains("bad.json: line 4"), "{err}");
    let bad = s.write("bad.yaml", "family: web\ncontainerDefinitions:\n  - name: [\n");
    let err = s.berth(&["taskdef", "register", &bad]).fails(2).to_string();
    assert!(err.contains("bad.yaml: line"), "{err}");
    let invalid = s.write("invalid.json", r#"{"family": "web", "containerDefinitions": []}"#);
    let err = s.berth(&["taskdef", "register", &invalid]).fails(1).to_string();
    assert!(
        err.contains("InvalidParameterException") && err.contains("containerDefinitions"),
        "{err}"
    );
    let err = s
        .berth(&["taskdef", "register", "/no/such/file.json"])
        .fails(2)
        .to_string();
    assert!(err.contains("/no/such/file.json"), "{err}");
    s.berth(&["taskdef", "describe", "nope:1"]).fails(3);
}

#[test]
fn logs_from_the_agent_endpoint_the_instance_advertises() {
    let s = Server::start_with_agent();
    let instance = s.berth(&["instances", "-o", "json"]).json()[0]["containerInstanceArn"]
        .as_str()
        .unwrap()
        .to_string();
    let t = s
        .berth(&[
            "run",
            "talker",
            "--image",
            "/bin/sh",
            "--memory",
            "32",
            "--cmd",
            "-c 'echo hello-from-task; echo oops >&2; sleep 300'",
            "-o",
            "json",
        ])
        .json();
    let id = short(t[0]["taskArn"].as_str().unwrap()).to_string();
    poll("the task to run", LIMIT, || {
        (task_json(&s, "default", &id)["lastStatus"] == "RUNNING").then_some(())
    });
    // The agent advertises its endpoint when it registers (instance
    // attribute `berth.metadata-endpoint`); logs are read there.
    let attrs = s.berth(&["instances", "-o", "json"]).json();
    assert_eq!(attrs[0]["containerInstanceArn"].as_str(), Some(instance.as_str()));
    assert!(
        attrs.to_string().contains("berth.metadata-endpoint"),
        "the instance does not advertise its agent endpoint: {attrs}"
    );
    let out = poll("the task's output", LIMIT, || {
        let out = s.berth(&["logs", &id]);
        (out.code == 0 && out.stdout.contains("hello-from-task")).then_some(out)
    });
    assert!(out.stderr.contains("oops"), "{}", out.stderr);
    let js = s.berth(&["logs", &id, "-o", "json"]).json();
    assert!(
        js["talker"]["stdout"].as_str().unwrap().contains("hello-from-task"),
        "{js}"
    );
}
