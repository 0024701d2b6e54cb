//! The process driver: each container is a host process in its own session
//! and process group, with the task's environment, a working directory per
//! task (`<root>/tasks/<task id>/`), stdout/stderr in log files, and cgroup
//! v2 limits where the host allows ([`CgroupSupport`] says when it does not).
//!
//! Its state lives in files under `<root>/containers/<id>/` (`spec.json`,
//! `run.json` with pid and start time, `exit.json`, `stdout.log`,
//! `stderr.log`), so a restarted agent re-adopts running processes: a pid
//! counts as the same process only while its start time matches. Each
//! container runs under a `/bin/sh` shim that writes the command's exit code
//! to `exit_code`, so a process that exits while it is not this agent's
//! child (after an agent restart) still reports its exit code; only when
//! even the shim was killed is the code reported as unknown.
//!
//! There is no NAT: each mapping's host port is passed as `PORT` (first
//! mapping) and `BERTH_HOST_PORT_<containerPort>`, and the process listens
//! there itself.

mod cgroup;
mod procfs;

pub use cgroup::{CgroupSupport, Limits};

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use berth_model::Timestamp;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ContainerInfo, ContainerSpec, Driver, ExecResult, ExitInfo, Logs, RunState, Stats, now, tail_lines};
use crate::{AgentError, Result};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every container runs under this `/bin/sh` shim, so its exit code outlives
/// the agent: the shim waits for the command, writes its status to the file
/// named by `$0`, and exits with it. Its trap has a handler (not an ignore),
/// so the command still gets TERM with the default disposition; the shim
/// itself survives the group-wide TERM long enough to record the status.
const SHIM: &str = r#"trap 'true' TERM INT HUP; "$@"; code=$?; printf '%s' "$code" > "$0"; exit "$code""#;

/// The spec plus what the driver derived from it at create time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Prepared {
    spec: ContainerSpec,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RunRecord {
    pid: i32,
    start_ticks: u64,
    started_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExitRecord {
    exit: ExitInfo,
    finished_at: Timestamp,
}

/// Runs containers as host processes.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    root: PathBuf,
    cgroups: CgroupSupport,
    /// Exit notifications of containers someone in this agent watches.
    watchers: Arc<Mutex<HashMap<String, watch::Sender<Option<ExitInfo>>>>>,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| AgentError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(format!("read {}", path.display()), e)),
    }
}

/// Writes via a temporary file and rename, so a crash never leaves half a file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, bytes).map_err(|e| AgentError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(format!("rename to {}", path.display()), e))
}

fn exit_from_status(status: std::process::ExitStatus, oom: bool) -> ExitInfo {
    let (code, reason) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(format!("killed by signal {sig}"))),
        (None, None) => (-1, Some("unknown exit status".to_string())),
    };
    ExitInfo {
        exit_code: Some(code),
        oom_killed: oom,
        reason: if oom {
            Some("OutOfMemoryError: Container killed due to memory usage".to_string())
        } else {
            reason
        },
    }
}

impl ProcessDriver {
    /// A driver keeping its files under `root`, detecting cgroup support.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_cgroups(root, CgroupSupport::detect())
    }

    pub fn with_cgroups(root: impl Into<PathBuf>, cgroups: CgroupSupport) -> Result<Self> {
        let root = root.into();
        for sub in ["containers", "tasks"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
        }
        if let CgroupSupport::Unavailable(why) = &cgroups {
            tracing::warn!("process driver: {why}");
        }
        Ok(ProcessDriver {
            root,
            cgroups,
            watchers: Arc::default(),
        })
    }

    pub fn cgroups(&self) -> &CgroupSupport {
        &self.cgroups
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn prepared(&self, id: &str) -> Result<Prepared> {
        // Ids come from callers; never let one escape the containers dir.
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(AgentError::NotFound(id.to_string()));
        }
        read_json(&self.dir(id).join("spec.json"))?.ok_or_else(|| AgentError::NotFound(id.to_string()))
    }

    fn run_record(&self, id: &str) -> Result<Option<RunRecord>> {
        read_json(&self.dir(id).join("run.json"))
    }

    fn exit_record(&self, id: &str) -> Result<Option<ExitRecord>> {
        read_json(&self.dir(id).join("exit.json"))
    }

    fn cgroup_dir(&self, id: &str) -> Option<PathBuf> {
        match &self.cgroups {
            CgroupSupport::Available { root } => Some(root.join("berth").join(id)),
            CgroupSupport::Unavailable(_) => None,
        }
    }

    fn watcher(&self, id: &str) -> (watch::Sender<Option<ExitInfo>>, bool) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(id) {
            Some(tx) => (tx.clone(), false),
            None => {
                let (tx, _) = watch::channel(None);
                w.insert(id.to_string(), tx.clone());
                (tx, true)
            }
        }
    }

    fn record_exit(&self, id: &str, exit: &ExitInfo) {
        let rec = ExitRecord {
            exit: exit.clone(),
            finished_at: now(),
        };
        if let Err(e) = write_json(&self.dir(id).join("exit.json"), &rec) {
            tracing::warn!(container = id, "cannot record exit: {e}");
        }
        if let Some(cg) = self.cgroup_dir(id) {
            cgroup::remove(&cg);
        }
    }

    /// Watches a process this agent did not spawn (re-adopted): polls its
    /// identity, and when it is gone gives its real parent (a previous agent
    /// in this process, in tests) a moment to record the exit status.
    fn watch_adopted(&self, id: String, run: RunRecord, tx: watch::Sender<Option<ExitInfo>>) {
        let me = self.clone();
        tokio::spawn(async move {
            while procfs::is_alive(run.pid, run.start_ticks) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            let exit = loop {
                if let Ok(Some(rec)) = me.exit_record(&id) {
                    break rec.exit;
                }
                let shim_code = std::fs::read_to_string(me.dir(&id).join("exit_code"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(code) = shim_code {
                    let oom = me.cgroup_dir(&id).is_some_and(|cg| cgroup::oom_kills(&cg) > 0);
                    let mut exit = ExitInfo {
                        exit_code: Some(code),
                        oom_killed: oom,
                        reason: None,
                    };
                    if oom {
                        exit.reason = Some("OutOfMemoryError: Container killed due to memory usage".into());
                    }
                    me.record_exit(&id, &exit);
                    break exit;
                }
                if tokio::time::Instant::now() >= deadline {
                    let oom = me.cgroup_dir(&id).is_some_and(|cg| cgroup::oom_kills(&cg) > 0);
                    let exit = ExitInfo {
                        exit_code: None,
                        oom_killed: oom,
                        reason: Some("process exited while the agent was not its parent; exit code unknown".into()),
                    };
                    me.record_exit(&id, &exit);
                    break exit;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            tx.send_replace(Some(exit));
        });
    }

    fn argv(spec: &ContainerSpec) -> Result<Vec<String>> {
        if !spec.entry_point.is_empty() {
            return Ok(spec.entry_point.iter().chain(&spec.command).cloned().collect());
        }
        if spec.image.starts_with('/') {
            if !Path::new(&spec.image).is_file() {
                return Err(AgentError::ImageNotFound {
                    image: spec.image.clone(),
                });
            }
            return Ok(std::iter::once(&spec.image).chain(&spec.command).cloned().collect());
        }
        if !spec.command.is_empty() {
            return Ok(spec.command.clone());
        }
        Err(AgentError::CannotStart {
            container: spec.name.clone(),
            reason: format!(
                "the process driver needs a command, an entryPoint, or an absolute executable path as the image \
                 (got image '{}')",
                spec.image
            ),
        })
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec!["healthcheck".to_string(), "readopt".to_string()];
        if self.cgroups.is_available() {
            caps.extend(["cgroup-limits".to_string(), "oom-detection".to_string()]);
        }
        caps
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let argv = Self::argv(spec)?;
        let id = format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let dir = self.dir(&id);
        let workdir = self.root.join("tasks").join(sanitize(&spec.task_id));
        for d in [&dir, &workdir] {
            std::fs::create_dir_all(d).map_err(|e| AgentError::io(format!("create {}", d.display()), e))?;
        }
        let mut env = vec![
            ("PATH".to_string(), PATH.to_string()),
            ("HOME".to_string(), workdir.display().to_string()),
        ];
        env.extend(spec.env.iter().cloned());
        env.extend(spec.host_port_env());
        let prepared = Prepared {
            spec: spec.clone(),
            argv,
            env,
            workdir,
            created_at: now(),
        };
        write_json(&dir.join("spec.json"), &prepared)?;
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let p = self.prepared(id)?;
        if self.run_record(id)?.is_some() {
            return Err(AgentError::CannotStart {
                container: p.spec.name,
                reason: "already started".into(),
            });
        }
        let dir = self.dir(id);
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .map_err(|e| AgentError::io(format!("open {name} of {id}"), e))
        };
        let (stdout, stderr) = (open("stdout.log")?, open("stderr.log")?);
        let procs = match &self.cgroups {
            CgroupSupport::Available { root } => {
                let limits = Limits::from_ecs(p.spec.memory_mib, p.spec.memory_reservation_mib, p.spec.cpu_units);
                let cg = cgroup::create(root, id, &limits)?;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(cg.join("cgroup.procs"))
                    .map_err(|e| AgentError::io(format!("open cgroup.procs of {id}"), e))?;
                Some(std::os::fd::OwnedFd::from(f))
            }
            CgroupSupport::Unavailable(_) => None,
        };
        let Some(program) = p.argv.first() else {
            return Err(AgentError::Invalid(format!("container {id} has an empty command")));
        };
        if !executable_exists(program) {
            return Err(AgentError::CannotStart {
                container: p.spec.name.clone(),
                reason: format!("executable '{program}' not found"),
            });
        }
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SHIM)
            .arg(dir.join("exit_code"))
            .args(&p.argv)
            .env_clear()
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&p.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let mut child = procfs::spawn_in_new_session(&mut cmd, procs).map_err(|e| AgentError::CannotStart {
            container: p.spec.name.clone(),
            reason: format!("cannot execute {program}: {e}"),
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let start_ticks = procfs::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
        write_json(
            &dir.join("run.json"),
            &RunRecord {
                pid,
                start_ticks,
                started_at: now(),
            },
        )?;
        let (tx, _) = self.watcher(id);
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => {
                    let oom = me.cgroup_dir(&id).is_some_and(|cg| cgroup::oom_kills(&cg) > 0);
                    exit_from_status(status, oom)
                }
                Err(e) => ExitInfo {
                    exit_code: None,
                    oom_killed: false,
                    reason: Some(format!("cannot wait for the process: {e}")),
                },
            };
            me.record_exit(&id, &exit);
            tx.send_replace(Some(exit));
        });
        Ok(())
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        self.prepared(id)?;
        let Some(run) = self.run_record(id)? else {
            // Never started: nothing runs; record that it will not.
            if self.exit_record(id)?.is_none() {
                let exit = ExitInfo {
                    exit_code: None,
                    oom_killed: false,
                    reason: Some("stopped before it started".into()),
                };
                self.record_exit(id, &exit);
                self.watcher(id).0.send_replace(Some(exit));
            }
            return Ok(());
        };
        if self.exit_record(id)?.is_some() || !procfs::is_alive(run.pid, run.start_ticks) {
            self.wait(id).await?;
            return Ok(());
        }
        let pgid = Pid::from_raw(run.pid);
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(timeout, self.wait(id)).await.is_ok() {
            return Ok(());
        }
        tracing::info!(container = id, "did not exit {timeout:?} after SIGTERM; killing");
        if procfs::is_alive(run.pid, run.start_ticks) {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        tokio::time::timeout(Duration::from_secs(10), self.wait(id))
            .await
            .map_err(|_| AgentError::Invalid(format!("process {} of {id} survived SIGKILL", run.pid)))??;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let p = self.prepared(id)?;
        self.stop(id, p.spec.stop_timeout).await?;
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io(format!("remove {}", dir.display()), e))?;
        self.watchers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        let p = self.prepared(id)?;
        let run = self.run_record(id)?;
        let exit = self.exit_record(id)?;
        let (state, exit_info) = match (&run, &exit) {
            (_, Some(e)) => (RunState::Exited, Some(e.exit.clone())),
            (None, None) => (RunState::Created, None),
            (Some(r), None) if procfs::is_alive(r.pid, r.start_ticks) => (RunState::Running, None),
            (Some(_), None) => (RunState::Exited, None),
        };
        Ok(ContainerInfo {
            runtime_id: id.to_string(),
            labels: p.spec.labels(),
            state,
            exit: exit_info,
            started_at: run.map(|r| r.started_at),
            finished_at: exit.map(|e| e.finished_at),
        })
    }

    async fn list(&self, agent_id: &str) -> Result<Vec<ContainerInfo>> {
        let dir = self.root.join("containers");
        let entries = std::fs::read_dir(&dir).map_err(|e| AgentError::io(format!("list {}", dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            match self.prepared(&id) {
                Ok(p) if p.spec.agent_id == agent_id => out.push(self.inspect(&id).await?),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping unreadable container dir {id}: {e}"),
            }
        }
        out.sort_by(|a, b| a.runtime_id.cmp(&b.runtime_id));
        Ok(out)
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo> {
        self.prepared(id)?;
        if let Some(rec) = self.exit_record(id)? {
            return Ok(rec.exit);
        }
        let (tx, fresh) = self.watcher(id);
        let mut rx = tx.subscribe();
        if fresh && let Some(run) = self.run_record(id)? {
            self.watch_adopted(id.to_string(), run, tx);
        }
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::NotFound(id.to_string()))?;
        Ok(exit.clone().unwrap_or_default())
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Logs> {
        self.prepared(id)?;
        let read = |name: &str| {
            let bytes = std::fs::read(self.dir(id).join(name)).unwrap_or_default();
            tail_lines(&String::from_utf8_lossy(&bytes), tail)
        };
        Ok(Logs {
            stdout: read("stdout.log"),
            stderr: read("stderr.log"),
        })
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        let p = self.prepared(id)?;
        let mut stats = Stats {
            read_at: now(),
            memory_limit_bytes: p.spec.memory_mib.map(|m| u64::from(m) << 20),
            ..Stats::default()
        };
        if let Some(run) = self.run_record(id)?.filter(|r| procfs::is_alive(r.pid, r.start_ticks)) {
            let (ticks, rss_pages, count) = procfs::group_usage(run.pid);
            stats.cpu_total_ns = ticks * (1_000_000_000 / procfs::TICKS_PER_SECOND);
            stats.memory_bytes = rss_pages * 4096;
            stats.pids = Some(count);
            if let Some(m) = self.cgroup_dir(id).and_then(|cg| cgroup::memory_current(&cg)) {
                stats.memory_bytes = m;
            }
        }
        Ok(stats)
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<ExecResult> {
        let p = self.prepared(id)?;
        let running = self
            .run_record(id)?
            .is_some_and(|r| procfs::is_alive(r.pid, r.start_ticks));
        let Some((program, args)) = argv.split_first().filter(|_| running) else {
            return Ok(ExecResult {
                exit_code: None,
                output: "container is not running".into(),
                timed_out: false,
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&p.workdir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                return Ok(ExecResult {
                    exit_code: None,
                    output: format!("timed out after {timeout:?}"),
                    timed_out: true,
                });
            }
            Ok(Err(e)) => {
                return Ok(ExecResult {
                    exit_code: None,
                    output: format!("cannot run {program}: {e}"),
                    timed_out: false,
                });
            }
            Ok(Ok(o)) => o,
        };
        let mut output = String::from_utf8_lossy(&out.stdout).to_string();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        truncate_utf8(&mut output, 1024);
        Ok(ExecResult {
            exit_code: out.status.code(),
            output,
            timed_out: false,
        })
    }
}

/// A task id as a single safe path component.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() { "_".into() } else { cleaned }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Whether `program` names an executable file (directly or through PATH).
fn executable_exists(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    PATH.split(':').any(|dir| Path::new(dir).join(program).is_file())
}
