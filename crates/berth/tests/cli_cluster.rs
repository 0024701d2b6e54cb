//! `berth cluster`, `instances`, `drain`, connection settings, SigV4,
//! completions and help, against a real server.

mod cli_support;

use cli_support::{Server, run_berth, short};
use serde_json::json;

#[test]
fn cluster_lifecycle_and_unknown_cluster() {
    let s = Server::start();
    let out = s.berth(&["cluster", "up", "dev"]);
    assert!(
        out.ok().contains("dev") && out.stdout.contains("ACTIVE"),
        "{}",
        out.stdout
    );
    // Idempotent, and -c selects the cluster too.
    s.berth(&["cluster", "up", "-c", "dev"]).ok();
    let ls = s.berth(&["cluster", "ls"]);
    let header = ls.ok().lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME") && header.contains("INSTANCES"), "{header}");
    assert!(ls.stdout.lines().any(|l| l.starts_with("dev ")), "{}", ls.stdout);
    let js = s.berth(&["cluster", "ls", "-o", "json"]).json();
    assert!(js.as_array().unwrap().iter().any(|c| c["clusterName"] == "dev"), "{js}");
    let yaml = s.berth(&["cluster", "describe", "dev", "-o", "yaml"]);
    assert!(yaml.ok().contains("clusterName: dev"), "{}", yaml.stdout);
    let desc = s.berth(&["cluster", "describe", "-c", "dev"]);
    assert!(
        desc.ok().contains("status") && desc.stdout.contains("ACTIVE"),
        "{}",
        desc.stdout
    );

    let err = s.berth(&["cluster", "describe", "nope"]).fails(3).to_string();
    assert!(
        err.contains("ClusterNotFoundException") && err.contains("hint"),
        "{err}"
    );
    let err = s.berth(&["cluster", "down", "nope"]).fails(3).to_string();
    assert!(err.contains("ClusterNotFoundException"), "{err}");

    // A cluster with an instance needs --force.
    s.register_instance("dev", 1024, 1024, &[]);
    let err = s.berth(&["cluster", "down", "dev"]).fails(1).to_string();
    assert!(
        err.contains("ClusterContainsContainerInstancesException") && err.contains("--force"),
        "{err}"
    );
    s.berth(&["cluster", "down", "dev", "--force"]).ok();
    let ls = s.berth(&["cluster", "ls", "-o", "json"]).json();
    assert!(
        !ls.as_array()
            .unwrap()
            .iter()
            .any(|c| c["clusterName"] == "dev" && c["status"] == "ACTIVE"),
        "{ls}"
    );
}

#[test]
fn instances_show_resources_and_drain() {
    let s = Server::start();
    s.berth(&["cluster", "up", "dev"]).ok();
    let arn = s.register_instance("dev", 2048, 4096, &[("zone", "a")]);
    let id = short(&arn).to_string();
    // A task of 512 CPU / 1024 MiB is placed by the launcher.
    s.berth(&[
        "run", "-c", "dev", "web", "--image", "nginx", "--cpu", "512", "--memory", "1024",
    ])
    .ok();
    let table = cli_support::poll("the task to be placed", std::time::Duration::from_secs(20), || {
        let out = s.berth(&["instances", "-c", "dev"]);
        out.ok().contains("512/2048").then(|| out.stdout.clone())
    });
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("ACTIVE") && row.contains("1536") && row.contains("1024/4096") && row.contains("zone=a"),
        "{row}"
    );

    let out = s.berth(&["drain", "-c", "dev", &id]);
    assert!(out.ok().contains("DRAINING"), "{}", out.stdout);
    let js = s.berth(&["instances", "-c", "dev", "-o", "json"]).json();
    assert_eq!(js[0]["status"], "DRAINING");
    s.berth(&["drain", "-c", "dev", &id, "--undo"]).ok();
    let err = s
        .berth(&["drain", "-c", "dev", "0123456789abcdef0123456789abcdef"])
        .fails(3)
        .to_string();
    assert!(err.contains("0123456789abcdef"), "{err}");
    s.berth(&["instances", "-c", "nope"]).fails(3);
}

#[test]
fn signed_requests_with_profiles_and_env_keys() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("server-credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIDCLI\naws_secret_access_key = cli-secret/K7MDENG\n\
         [ro]\naws_access_key_id = AKIDRO\naws_secret_access_key = ro-secret\nberth_allowed_operations = ListClusters, DescribeClusters\n",
    )
    .unwrap();
    let keys = berth_client::Keys {
        access_key_id: "AKIDCLI".into(),
        secret_access_key: "cli-secret/K7MDENG".into(),
        source: "test".into(),
    };
    let s = Server::start_with(&["--credentials", creds.to_str().unwrap()], Some(keys));
    let client_creds = s.write(
        "aws/credentials",
        "[default]\naws_access_key_id = AKIDCLI\naws_secret_access_key = cli-secret/K7MDENG\n\
         [ro]\naws_access_key_id = AKIDRO\naws_secret_access_key = ro-secret\n\
         [wrong]\naws_access_key_id = AKIDCLI\naws_secret_access_key = not-the-secret\n",
    );
    let env = [("AWS_SHARED_CREDENTIALS_FILE", client_creds.as_str())];
    s.berth_env(&["cluster", "up", "signed"], &env).ok();
    // Unsigned: refused with exit code 4.
    let err = s.berth(&["cluster", "ls"]).fails(4).to_string();
    assert!(err.contains("IncompleteSignatureException"), "{err}");
    let err = s
        .berth_env(&["cluster", "ls", "--profile", "wrong"], &env)
        .fails(4)
        .to_string();
    assert!(err.contains("InvalidSignatureException"), "{err}");
    let out = s.berth_env(&["cluster", "ls", "--profile", "ro"], &env);
    assert!(out.ok().contains("signed"), "{}", out.stdout);
    let err = s
        .berth_env(&["cluster", "up", "x", "--profile", "ro"], &env)
        .fails(4)
        .to_string();
    assert!(err.contains("AccessDeniedException"), "{err}");
    let err = s
        .berth_env(&["cluster", "ls", "--profile", "missing"], &env)
        .fails(2)
        .to_string();
    assert!(err.contains("profile 'missing' not found"), "{err}");
    // Keys from the environment.
    let env_keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDCLI"),
        ("AWS_SECRET_ACCESS_KEY", "cli-secret/K7MDENG"),
    ];
    s.berth_env(&["cluster", "ls"], &env_keys).ok();
    // The config file supplies the endpoint and the credentials file.
    let cfg = s.write(
        "berth/config.toml",
        &format!(
            "endpoint = \"{}\"\ncredentials_file = \"{client_creds}\"\ncluster = \"signed\"\n",
            s.endpoint
        ),
    );
    let out = run_berth(
        &["cluster", "describe"],
        &[("BERTH_CONFIG", cfg.as_str()), ("AWS_SHARED_CREDENTIALS_FILE", "")],
        s.dir.path(),
        s.dir.path(),
    );
    assert!(out.ok().contains("signed"), "{}", out.stdout);
}

#[test]
fn unreachable_endpoint_and_bad_settings() {
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("http://127.0.0.1:{port}");
    let out = run_berth(&["cluster", "ls", "--endpoint", &ep], &[], dir.path(), dir.path());
    let err = out.fails(5);
    assert!(err.contains("cannot reach") && err.contains("--endpoint"), "{err}");
    let out = run_berth(&["ps"], &[("BERTH_ENDPOINT", "localhost:1")], dir.path(), dir.path());
    assert!(out.fails(2).contains("http://"), "{}", out.stderr);
    let bad = dir.path().join("config.toml");
    std::fs::write(&bad, "endpoint = [1]\n").unwrap();
    let out = run_berth(
        &["ps"],
        &[("BERTH_CONFIG", bad.to_str().unwrap())],
        dir.path(),
        dir.path(),
    );
    assert!(out.fails(2).contains("config file"), "{}", out.stderr);
    // Usage errors are clap's exit code 2.
    let out = run_berth(&["run"], &[], dir.path(), dir.path());
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn help_has_examples_and_exit_codes_and_completions_generate() {
    let dir = tempfile::tempdir().unwrap();
    let top = run_berth(&["--help"], &[], dir.path(), dir.path());
    assert!(
        top.ok().contains("CLI exit codes") && top.stdout.contains("6  --wait"),
        "{}",
        top.stdout
    );
    let verbs: &[&[&str]] = &[
        &["cluster"],
        &["cluster", "up"],
        &["cluster", "down"],
        &["cluster", "ls"],
        &["cluster", "describe"],
        &["instances"],
        &["drain"],
        &["run"],
        &["ps"],
        &["stop"],
        &["logs"],
        &["explain"],
        &["events"],
        &["taskdef", "register"],
        &["service", "create"],
        &["service", "update"],
        &["service", "scale"],
        &["service", "rm"],
        &["service", "ls"],
        &["service", "describe"],
        &["service", "plan"],
        &["compose"],
        &["compose", "up"],
        &["compose", "ps"],
        &["compose", "service", "up"],
        &["compose", "service", "scale"],
        &["compose", "service", "ps"],
        &["compose", "service", "stop"],
        &["compose", "service", "rm"],
        &["completions"],
    ];
    for v in verbs {
        let args = [*v, &["--help"]].concat();
        let out = run_berth(&args, &[], dir.path(), dir.path());
        assert!(
            out.ok().contains("Example"),
            "`berth {}` has no example:\n{}",
            v.join(" "),
            out.stdout
        );
        assert!(out.stdout.contains("berth "), "{}", out.stdout);
    }
    for (shell, needle) in [
        ("bash", "_berth()"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let out = run_berth(&["completions", shell], &[], dir.path(), dir.path());
        assert!(
            out.ok().contains(needle),
            "{shell}: {}",
            &out.stdout[..out.stdout.len().min(200)]
        );
        assert!(out.stdout.contains("compose"), "{shell} completions lack verbs");
    }
    let out = run_berth(&["completions", "tcsh"], &[], dir.path(), dir.path());
    assert_eq!(out.code, 2);
    let _ = json!({});
}
