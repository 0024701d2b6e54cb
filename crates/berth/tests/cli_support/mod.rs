//! Shared by the `cli_*` end-to-end tests: a real `berth server` child on
//! 127.0.0.1:0 with a temp data dir (killed on drop), the real `berth`
//! binary run against it, and direct API calls for setup (registering
//! container instances, since no agent runs here).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::{Client, Keys, Settings};
use serde_json::{Value, json};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// What a `berth` run printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts exit code `code` and a one-line error on stderr; returns it.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "wrong exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in stderr: {}", self.stderr))
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// A `berth server` child process.
pub struct Server {
    child: Child,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Agents started beside the server.
    agents: Vec<Child>,
    /// The agent's metadata endpoint (with `start_with_agent`).
    pub metadata: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A server that accepts unsigned requests.
    pub fn start() -> Server {
        Server::start_with(&["--no-auth"], None)
    }

    /// A server with extra arguments; `keys` sign the setup calls.
    pub fn start_with(args: &[&str], keys: Option<Keys>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BERTH)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let endpoint = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(i) = l.find("http://") {
                        break l[i..].trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("berth server exited before printing its address");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = Client::new(Settings {
            endpoint: endpoint.clone(),
            region: "us-east-1".into(),
            cluster: "default".into(),
            keys,
        })
        .expect("client");
        Server {
            child,
            endpoint,
            dir,
            rt,
            client,
            agents: Vec::new(),
            metadata: String::new(),
        }
    }

    /// A server with one real `berth agent` (process driver) in `default`:
    /// task "images" are executables run on this machine.
    pub fn start_with_agent() -> Server {
        let mut s = Server::start_with(&["--no-auth", "--agent-token", "t0k"], None);
        s.berth(&["cluster", "up"]).ok();
        // A free port for the agent's metadata endpoint, so tests can reach it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        s.metadata = format!("http://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        let agent = Command::new(BERTH)
            .args([
                "agent",
                "--server",
                &s.endpoint,
                "--cluster",
                "default",
                "--token",
                "t0k",
            ])
            .args(["--driver", "process", "--cpu-units", "2048", "--memory-mib", "2048"])
            .args([
                "--metadata-listen",
                &listen,
                "--port-range",
                "63000-63100",
                "--state-dir",
            ])
            .arg(s.dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth agent");
        s.agents.push(agent);
        poll("the agent to register", Duration::from_secs(30), || {
            let out = s.berth(&["instances", "-o", "json"]);
            (out.code == 0 && out.stdout.contains("containerInstanceArn")).then_some(())
        });
        s
    }

    /// Runs `berth ARGS` against this server with a clean environment.
    pub fn berth(&self, args: &[&str]) -> Out {
        self.berth_env(args, &[])
    }

    pub fn berth_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        self.berth_in(args, env, self.dir.path())
    }

    pub fn berth_in(&self, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Out {
        run_berth(
            args,
            &[&[("BERTH_ENDPOINT", self.endpoint.as_str())], env].concat(),
            cwd,
            self.dir.path(),
        )
    }

    /// Calls the API directly (test setup).
    pub fn api(&self, op: &str, body: Value) -> Value {
        self.rt
            .block_on(self.client.call(op, &body))
            .unwrap_or_else(|e| panic!("{op}: {e}"))
    }

    /// Registers a container instance with `cpu` units and `mem` MiB.
    pub fn register_instance(&self, cluster: &str, cpu: u32, mem: u32, attrs: &[(&str, &str)]) -> String {
        let attributes: Vec<Value> = attrs.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
        let r = self.api(
            "RegisterContainerInstance",
            json!({
                "cluster": cluster,
                "totalResources": [
                    {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
                    {"name": "MEMORY", "type": "INTEGER", "integerValue": mem},
                    {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22"]},
                ],
                "attributes": attributes,
            }),
        );
        r["containerInstance"]["containerInstanceArn"]
            .as_str()
            .expect("instance arn")
            .to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the server's temp dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }
}

/// Runs the binary with only the environment the test gives (no user config,
/// no AWS keys from the machine).
pub fn run_berth(args: &[&str], env: &[(&str, &str)], cwd: &Path, scratch: &Path) -> Out {
    let mut cmd = Command::new(BERTH);
    cmd.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("BERTH_CONFIG", scratch.join("no-such-config.toml"))
        .env("AWS_SHARED_CREDENTIALS_FILE", scratch.join("no-such-credentials"))
        .env("HOME", scratch);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run berth");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Calls `f` until it returns `Some`, failing the test after `limit`.
#[track_caller]
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        // No sleep: every check runs the binary, which paces the loop.
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
    }
}

/// The last path segment of an ARN.
pub fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}
