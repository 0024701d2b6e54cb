use super::*;

fn no_env(_: &str) -> Result<String, String> {
    Err("no such file".into())
}

fn tr(text: &str) -> Result<Translation, ClientError> {
    translate(text, "docker-compose.yml", None, "My App", &no_env)
}

#[test]
fn full_service_translates_to_a_container_definition() {
    let text = r#"
services:
  web:
    image: nginx:1.27
    command: nginx -g "daemon off;"
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      MODE: prod
      WORKERS: 4
    env_file: web.env
    ports:
      - "8080:80"
      - 9000
      - target: 53
        published: "5353"
        protocol: udp
    deploy:
      replicas: 3
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {memory: 256m}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost/"]
      interval: 1m30s
      timeout: 10s
      retries: 3
      start_period: 40s
    depends_on:
      db:
        condition: service_healthy
  db:
    image: postgres
"#;
    let read = |p: &str| {
        if p == "web.env" {
            Ok("# comment\nMODE=dev\nexport TOKEN=\"abc\"\n".to_string())
        } else {
            Err("missing".to_string())
        }
    };
    let t = translate(text, "docker-compose.yml", None, "My App", &read).unwrap();
    assert_eq!(t.project, "myapp");
    assert_eq!(t.replicas, 3);
    assert_eq!(t.task_definition["family"], "myapp");
    let cs = t.task_definition["containerDefinitions"].as_array().unwrap();
    assert_eq!(cs.len(), 2);
    let db = &cs[0];
    assert_eq!(db["name"], "db");
    assert_eq!(db["memory"], DEFAULT_MEMORY_MIB);
    let web = &cs[1];
    assert_eq!(web["command"], json!(["nginx", "-g", "daemon off;"]));
    assert_eq!(web["entryPoint"], json!(["/docker-entrypoint.sh"]));
    // `environment` wins over env_file; numbers become strings.
    assert_eq!(
        web["environment"],
        json!([{"name": "MODE", "value": "prod"}, {"name": "TOKEN", "value": "abc"}, {"name": "WORKERS", "value": "4"}])
    );
    assert_eq!(
        web["portMappings"],
        json!([
            {"containerPort": 80, "hostPort": 8080, "protocol": "tcp"},
            {"containerPort": 9000, "hostPort": 0, "protocol": "tcp"},
            {"containerPort": 53, "hostPort": 5353, "protocol": "udp"},
        ])
    );
    assert_eq!(web["cpu"], 512);
    assert_eq!(web["memory"], 512);
    assert_eq!(web["memoryReservation"], 256);
    assert_eq!(
        web["healthCheck"],
        json!({"command": ["CMD", "curl", "-f", "http://localhost/"], "interval": 90, "timeout": 10, "retries": 3, "startPeriod": 40})
    );
    assert_eq!(
        web["dependsOn"],
        json!([{"containerName": "db", "condition": "HEALTHY"}])
    );
    // Differing replicas are reported, not silently merged.
    assert!(
        t.warnings.iter().any(|w| w.contains("deploy.replicas differ")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn unsupported_keys_are_warned_by_name() {
    let text = "version: '3.8'\nservices:\n  web:\n    image: nginx\n    restart: always\n    deploy:\n      placement: {}\n      resources:\n        limits:\n          pids: 5\nvolumes:\n  data: {}\nx-custom: 1\n";
    let t = tr(text).unwrap();
    let w = t.warnings.join("\n");
    assert!(w.contains("services.web.restart is not supported"), "{w}");
    assert!(w.contains("services.web.deploy.placement is not supported"), "{w}");
    assert!(
        w.contains("services.web.deploy.resources.limits.pids is not supported"),
        "{w}"
    );
    assert!(w.contains("volumes is not supported"), "{w}");
    assert!(!w.contains("version") && !w.contains("x-custom"), "{w}");
}

#[test]
fn malformed_files_name_the_line() {
    let text = "services:\n  web:\n    image: nginx\n   ports: [80]\n";
    let e = tr(text).unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("docker-compose.yml: line 4"), "{s}");
    // Type errors carry the location too.
    let e = tr("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: many\n").unwrap_err();
    assert!(e.to_string().contains("line 5"), "{e}");
}

#[test]
fn semantic_errors_name_the_member() {
    let e = tr("services:\n  web:\n    command: x\n").unwrap_err();
    assert!(e.to_string().contains("services.web.image: is required"), "{e}");
    let e = tr("services:\n  web:\n    image: x\n    ports: ['80:abc']\n").unwrap_err();
    assert!(e.to_string().contains("services.web.ports[0]"), "{e}");
    let e = tr("services:\n  web:\n    image: x\n    depends_on: [db]\n").unwrap_err();
    assert!(e.to_string().contains("no service named 'db'"), "{e}");
    let e = tr("services:\n  web:\n    image: x\n    env_file: missing.env\n").unwrap_err();
    assert!(e.to_string().contains("services.web.env_file: missing.env"), "{e}");
    assert!(tr("services: {}\n").is_err());
    assert!(tr("- a\n- b\n").is_err());
}

#[test]
fn project_name_precedence() {
    let text = "name: Fromfile\nservices:\n  a:\n    image: x\n";
    assert_eq!(tr(text).unwrap().project, "fromfile");
    let t = translate(text, "f", Some("flag"), "dir", &no_env).unwrap();
    assert_eq!(t.project, "flag");
    let t = translate("services:\n  a:\n    image: x\n", "f", None, "dir_1", &no_env).unwrap();
    assert_eq!(t.project, "dir_1");
}

#[test]
fn small_parsers() {
    assert_eq!(
        split_words(r#"sh -c 'echo "hi there"' a\ b"#).unwrap(),
        ["sh", "-c", "echo \"hi there\"", "a b"]
    );
    assert!(split_words("'open").is_err());
    assert_eq!(parse_duration_secs("1m30s").unwrap(), 90);
    assert_eq!(parse_duration_secs("500ms").unwrap(), 1);
    assert_eq!(parse_duration_secs("10").unwrap(), 10);
    assert!(parse_duration_secs("soon").is_err());
    let y = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).unwrap();
    assert_eq!(parse_memory_mib(&y("1g")).unwrap(), 1024);
    assert_eq!(parse_memory_mib(&y("1.5G")).unwrap(), 1536);
    assert_eq!(parse_memory_mib(&y("268435456")).unwrap(), 256);
    assert!(parse_memory_mib(&y("lots")).is_err());
    assert_eq!(parse_cpus(&y("'0.25'")).unwrap(), 256);
    assert_eq!(parse_cpus(&y("2")).unwrap(), 2048);
    assert_eq!(
        parse_env_file("A=1\n\nB='x y'\n").unwrap(),
        [("A".into(), "1".into()), ("B".into(), "x y".into())]
    );
    assert!(parse_env_file("junk").is_err());
}
