//! Test support: a real etcd server on loopback ports with a temporary data
//! directory, started by tests that exercise the etcd backend. Lives here so
//! every crate's tests start etcd the same way.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `etcd` child process, killed and cleaned up on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    /// The client URL (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    _dir: tempfile_dir::TempDir,
}

mod tempfile_dir {
    /// A directory removed on drop (no tempfile dependency in the library).
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Why etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStartError {
    #[error("etcd binary not found on PATH (scripts/test installs Debian's etcd-server)")]
    NotInstalled,
    #[error("etcd did not start: {0}")]
    Failed(String),
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub fn start() -> Result<Self, EtcdStartError> {
        let bin = ["etcd", "/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .ok_or(EtcdStartError::NotInstalled)?;
        let fail = |e: std::io::Error| EtcdStartError::Failed(e.to_string());
        let dir = std::env::temp_dir().join(format!(
            "berth-etcd-{}-{}",
            std::process::id(),
            free_port().map_err(fail)?
        ));
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let dir = tempfile_dir::TempDir(dir);
        let client = free_port().map_err(fail)?;
        let peer = free_port().map_err(fail)?;
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .arg("--name=berth-test")
            .arg(format!("--data-dir={}", dir.0.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=berth-test={peer_url}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(fail)?;
        let mut server = EtcdServer {
            child,
            endpoint,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(EtcdStartError::Failed(format!("exited with {status}")));
            }
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(EtcdStartError::Failed("no answer within 30 s".into()));
            }
            wait_a_little();
        }
    }
}

#[allow(clippy::disallowed_methods)] // a synchronous start-up poll with a deadline
fn wait_a_little() {
    std::thread::sleep(Duration::from_millis(50));
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
