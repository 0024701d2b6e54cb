//! `berth targetgroup`, `berth lb` and `berth targets` against a real
//! server, and `berth lb follow --server URL` as a standalone data plane
//! that binds the load balancer's listener and reports its address.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod cli_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::{Server, poll};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lb_and_targetgroup_verbs() {
    let s = Server::start();
    s.berth(&["cluster", "up"]).ok();
    let out = s.berth(&[
        "targetgroup",
        "create",
        "web",
        "--health-path",
        "/health",
        "--interval",
        "1",
        "--timeout",
        "1",
        "--deregistration-delay",
        "2",
    ]);
    assert!(out.ok().contains("/health every 1s"), "{}", out.stdout);
    let v = s.berth(&["targetgroup", "ls", "-o", "json"]).json();
    let arn = v["targetGroups"][0]["targetGroupArn"].as_str().unwrap().to_string();
    assert!(arn.contains(":targetgroup/web/"), "{arn}");
    // Bad input names the member.
    let e = s
        .berth(&["targetgroup", "create", "bad", "--interval", "0"])
        .fails(1)
        .to_string();
    assert!(e.contains("healthCheck.intervalSeconds"), "{e}");
    let e = s
        .berth(&["lb", "create", "front", "--port", "0", "--rule", "nope"])
        .fails(2)
        .to_string();
    assert!(e.contains("--rule"), "{e}");
    let e = s
        .berth(&["lb", "create", "front", "--port", "0", "--target-group", "nope"])
        .fails(3)
        .to_string();
    assert!(e.contains("listeners[0].defaultTargetGroup"), "{e}");

    let out = s.berth(&[
        "lb",
        "create",
        "front",
        "--port",
        "0",
        "--target-group",
        "web",
        "--rule",
        "host=api.example.com,path=/v1,group=web",
    ]);
    assert!(out.ok().contains("api.example.com/v1->web"), "{}", out.stdout);
    assert!(s.berth(&["lb", "ls"]).ok().contains("front"));
    let d = s.berth(&["lb", "describe", "front"]);
    assert!(d.ok().contains("target group web:"), "{}", d.stdout);
    let t = s.berth(&["targets", "web"]);
    assert!(t.ok().contains("ADDRESS"), "{}", t.stdout);
    assert_eq!(
        s.berth(&["targets", "web", "-o", "json"]).json()["targets"],
        serde_json::json!([])
    );
    s.berth(&["targets", "nope"]).fails(3);

    // Services reference the group; a port the task definition lacks is refused.
    let f = s.write(
        "web.json",
        r#"{"family": "web", "containerDefinitions": [{"name": "app", "image": "x", "memory": 64, "portMappings": [{"containerPort": 8080}]}]}"#,
    );
    s.berth(&["taskdef", "register", &f]).ok();
    let e = s
        .berth(&[
            "service",
            "create",
            "web",
            "--taskdef",
            "web",
            "--count",
            "0",
            "--target-group",
            "web",
            "--container-port",
            "9",
        ])
        .fails(2)
        .to_string();
    assert!(e.contains("port 9"), "{e}");
    s.berth(&[
        "service",
        "create",
        "web",
        "--taskdef",
        "web",
        "--count",
        "0",
        "--target-group",
        "web",
        "--container-port",
        "8080",
    ])
    .ok();
    let d = s.berth(&["service", "describe", "web", "-o", "json"]).json();
    assert_eq!(d["loadBalancers"][0]["targetGroupArn"], serde_json::json!(arn), "{d}");
    let e = s.berth(&["targetgroup", "rm", "web"]).fails(1).to_string();
    assert!(e.contains("in use"), "{e}");

    // The standalone data plane follows the server and binds the listener
    // (`berth lb --server URL` is `berth lb follow --server URL`).
    let follower = Kill(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["lb", "--server", &s.endpoint, "--bind-ip", "127.0.0.1"])
            .env("BERTH_LOG", "warn")
            .env("BERTH_CONFIG", s.dir.path().join("no-such-config.toml"))
            .env("AWS_SHARED_CREDENTIALS_FILE", s.dir.path().join("no-such-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = poll("the follower to bind the listener", Duration::from_secs(30), || {
        let v = s.berth(&["lb", "ls", "-o", "json"]).json();
        v["loadBalancers"][0]["listeners"][0]["address"]
            .as_str()
            .map(str::to_string)
    });
    // No targets yet: the listener answers, with a 5xx, not a refused connection.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = String::new();
    let _ = conn.read_to_string(&mut buf);
    assert!(buf.starts_with("HTTP/1.1 5"), "{buf}");
    drop(follower);

    s.berth(&["lb", "rm", "front"]).ok();
    s.berth(&["lb", "describe", "front"]).fails(3);
    s.berth(&["service", "rm", "web", "--force"]).ok();
}
