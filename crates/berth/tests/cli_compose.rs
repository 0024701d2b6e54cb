//! `berth compose`: one-off tasks and services from a compose file.

mod cli_support;

use cli_support::Server;

const COMPOSE: &str = "\
name: shop
services:
  web:
    image: nginx:1.27
    command: [\"nginx\", \"-g\", \"daemon off;\"]
    environment:
      MODE: prod
    env_file: web.env
    ports:
      - \"8080:80\"
    restart: always
    deploy:
      replicas: 2
      resources:
        limits: {cpus: '0.25', memory: 128M}
    healthcheck:
      test: [\"CMD-SHELL\", \"curl -f http://localhost/\"]
      interval: 10s
    depends_on: [cache]
  cache:
    image: redis:7
    deploy:
      resources:
        reservations: {memory: 64M}
";

fn setup() -> (Server, String) {
    let s = Server::start();
    s.berth(&["cluster", "up"]).ok();
    s.write("proj/web.env", "TOKEN=abc\n");
    let f = s.write("proj/docker-compose.yml", COMPOSE);
    (s, f)
}

#[test]
fn compose_up_runs_a_one_off_task_with_warnings() {
    let (s, f) = setup();
    s.register_instance("default", 2048, 2048, &[]);
    let out = s.berth(&["compose", "-f", &f, "up", "-o", "json"]);
    assert!(
        out.stderr.contains("services.web.restart is not supported"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("registered shop:1"), "{}", out.stderr);
    let tasks = out.json();
    assert_eq!(tasks[0]["startedBy"], "compose/shop");
    let td = s.berth(&["taskdef", "describe", "shop:1", "-o", "json"]).json();
    let web = td["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(web["cpu"], 256);
    assert_eq!(web["memory"], 128);
    assert_eq!(web["portMappings"][0]["hostPort"], 8080);
    assert_eq!(web["dependsOn"][0]["containerName"], "cache");
    let env = web["environment"].to_string();
    assert!(env.contains("TOKEN") && env.contains("MODE"), "{env}");
    let id = tasks[0]["taskArn"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let ps = s.berth(&["compose", "-f", &f, "ps"]).ok().to_string();
    assert!(ps.contains(&id) && ps.contains("shop:1"), "{ps}");
    let ps = s.berth(&["compose", "-p", "elsewhere", "ps"]).ok().to_string();
    assert!(!ps.contains(&id), "{ps}");
    // -p overrides the file's name.
    let out = s.berth(&["compose", "-f", &f, "-p", "other", "up"]);
    assert!(out.stderr.contains("registered other:1"), "{}", out.stderr);
}

#[test]
fn compose_service_up_scale_ps_stop_rm() {
    let (s, f) = setup();
    s.register_instance("default", 4096, 4096, &[]);
    let out = s.berth(&["compose", "-f", &f, "service", "up", "-o", "json"]);
    let svc = out.json();
    assert_eq!(svc["serviceName"], "shop");
    assert_eq!(svc["desiredCount"], 2);
    // Up again updates the same service to a new revision.
    let svc = s.berth(&["compose", "-f", &f, "service", "up", "-o", "json"]).json();
    assert!(svc["taskDefinition"].as_str().unwrap().ends_with("shop:2"), "{svc}");
    let svc = s
        .berth(&["compose", "-f", &f, "service", "scale", "3", "-o", "json"])
        .json();
    assert_eq!(svc["desiredCount"], 3);
    let ps = s.berth(&["compose", "-f", &f, "service", "ps"]);
    assert!(ps.ok().starts_with("TASK"), "{}", ps.stdout);
    let svc = s.berth(&["compose", "-f", &f, "service", "stop", "-o", "json"]).json();
    assert_eq!(svc["desiredCount"], 0);
    s.berth(&["compose", "-f", &f, "service", "rm"]).ok();
    let err = s.berth(&["compose", "-f", &f, "service", "ps"]).fails(3).to_string();
    assert!(err.contains("compose service up"), "{err}");
}

#[test]
fn malformed_and_missing_compose_files() {
    let s = Server::start();
    let bad = s.write(
        "bad/docker-compose.yml",
        "services:\n  web:\n    image: nginx\n   ports: ['80']\n",
    );
    let err = s.berth(&["compose", "-f", &bad, "up"]).fails(2).to_string();
    assert!(err.contains("docker-compose.yml: line 4"), "{err}");
    let wrong = s.write(
        "wrong/docker-compose.yml",
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: lots\n",
    );
    let err = s
        .berth(&["compose", "-f", &wrong, "service", "up"])
        .fails(2)
        .to_string();
    assert!(err.contains("line 5"), "{err}");
    let noimage = s.write("noimage/docker-compose.yml", "services:\n  web:\n    build: .\n");
    let err = s.berth(&["compose", "-f", &noimage, "up"]).fails(2).to_string();
    assert!(err.contains("services.web.image"), "{err}");
    // Default file name in the working directory.
    let out = s.berth_in(&["compose", "up"], &[], &s.path("bad"));
    assert!(out.fails(2).contains("line 4"), "{}", out.stderr);
    let out = s.berth_in(&["compose", "up"], &[], s.dir.path());
    assert!(out.fails(2).contains("docker-compose.yml"), "{}", out.stderr);
    // A good file against an unknown cluster.
    let good = s.write("good/docker-compose.yml", "services:\n  web:\n    image: nginx\n");
    let err = s
        .berth(&["compose", "-f", &good, "-c", "nope", "up"])
        .fails(3)
        .to_string();
    assert!(err.contains("ClusterNotFoundException"), "{err}");
}
