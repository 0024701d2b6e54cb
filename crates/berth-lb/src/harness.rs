//! Child processes for benchmarks and end-to-end tests: test backends
//! (`berth-testapp`), a standalone Berth LB, and nginx with a generated
//! config. Every child is killed when its handle is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::error::LbError;

/// A running child that announced `listening on ADDR` (or was probed).
#[derive(Debug)]
pub struct Child {
    pub name: String,
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl Child {
    /// Kills the process and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Finds a binary built by cargo next to `current_exe` (a binary in
/// `target/*/`) or one level up (a test in `target/*/deps/`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, LbError> {
    let exe = std::env::current_exe().map_err(|e| LbError::io("locating the current executable", e))?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(LbError::Process(format!(
        "{name} not found (looked at {}); build it first: cargo build -p {name} (add --release for release builds)",
        tried.join(", ")
    )))
}

/// Starts `cmd` and waits (up to `timeout`) for a stdout line ending in
/// `listening on ADDR`.
pub async fn spawn_listening(mut cmd: Command, name: &str, timeout: Duration) -> Result<Child, LbError> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| LbError::io(format!("starting {name}"), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LbError::Process(format!("{name}: no stdout")))?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, addr)) = line.rsplit_once("listening on ") {
                return addr.trim().parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = found else {
        let _ = child.kill().await;
        return Err(LbError::Process(format!("{name} did not report a listening address")));
    };
    // Keep draining stdout so that the child never blocks or fails on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Child {
        name: name.to_string(),
        addr,
        child,
    })
}

/// Starts `berth-testapp` on 127.0.0.1:0 with extra flags.
pub async fn testapp(bin: &Path, name: &str, extra: &[String]) -> Result<Child, LbError> {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--name", name]).args(extra);
    spawn_listening(cmd, name, Duration::from_secs(10)).await
}

/// A port that was free a moment ago on 127.0.0.1 (for programs that cannot
/// bind port 0 and report it, like nginx).
pub fn free_port() -> Result<u16, LbError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| LbError::io("finding a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LbError::io("finding a free port", e))
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<(), LbError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(LbError::Process(format!("nothing listens on {addr} after {timeout:?}")))
}

/// The nginx binary, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/local/sbin".into(),
            "/usr/local/nginx/sbin".into(),
        ])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// An nginx config proxying `listen` to `upstreams` the way Berth's LB does:
/// keep-alive upstream connections, retries of errors, timeouts and 5xx on
/// the next upstream (up to `tries`).
pub fn nginx_config(dir: &Path, listen: SocketAddr, upstreams: &[SocketAddr], workers: usize, tries: u32) -> String {
    let d = dir.display();
    let servers: String = upstreams.iter().map(|u| format!("    server {u};\n")).collect();
    format!(
        "worker_processes {workers};\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log error;\n\
         events {{ worker_connections 8192; multi_accept on; }}\n\
         http {{\n  access_log off;\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n\
         upstream backends {{\n{servers}    keepalive 256;\n    keepalive_requests 1000000;\n  }}\n\
         server {{\n    listen {listen} backlog=4096;\n    location / {{\n\
               proxy_pass http://backends;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_next_upstream error timeout http_500 http_502 http_503 http_504;\n\
               proxy_next_upstream_tries {tries};\n      proxy_connect_timeout 2s;\n      proxy_read_timeout 30s;\n\
             }}\n  }}\n}}\n"
    )
}

/// nginx running in the foreground as a child, with its files in a
/// temporary directory.
#[derive(Debug)]
pub struct Nginx {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(bin: &Path, upstreams: &[SocketAddr], workers: usize, tries: u32) -> Result<Nginx, LbError> {
        let dir = tempfile::tempdir().map_err(|e| LbError::io("creating nginx dir", e))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), addr, upstreams, workers, tries))
            .map_err(|e| LbError::io("writing nginx.conf", e))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| LbError::io("starting nginx", e))?;
        if let Err(e) = wait_listening(addr, Duration::from_secs(10)).await {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            return Err(LbError::Process(format!("nginx did not start: {e}\n{log}")));
        }
        Ok(Nginx { addr, child, _dir: dir })
    }

    /// Stops nginx and waits for it.
    pub async fn stop(mut self) {
        self.signal_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM to the workers (children of the master, by parent pid)
    /// and to the master: a SIGKILL of the master alone would leave its
    /// workers running.
    fn signal_all(&self) {
        if let Some(pid) = self.child.id() {
            let pid = pid.to_string();
            let _ = std::process::Command::new("pkill").args(["-TERM", "-P", &pid]).status();
            let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_all();
        }
    }
}
