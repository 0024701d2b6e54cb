//! An in-memory driver for unit tests: containers are records whose
//! behaviour follows berth-testapp's flags (`--exit-after-ms`, `--exit-code`,
//! `--eat-memory-mib`), so the same specs run against it and the real
//! drivers. Images whose name starts with `missing` are absent. `exec`
//! succeeds when the command is `true` or ends with `--help`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{ContainerInfo, ContainerSpec, Driver, ExecResult, ExitInfo, Logs, RunState, Stats, now, tail_lines};
use crate::{AgentError, Result};

#[derive(Debug)]
struct FakeContainer {
    spec: ContainerSpec,
    info: ContainerInfo,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    stdout: String,
    stderr: String,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    containers: BTreeMap<String, FakeContainer>,
    starts: u64,
}

/// The fake driver. Clones (and [`FakeDriver::reopen`]) share one state, as
/// a restarted agent shares the Docker engine with its previous life.
#[derive(Debug, Clone, Default)]
pub struct FakeDriver {
    inner: Arc<Mutex<Inner>>,
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

impl FakeDriver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new driver value over the same containers (an agent restart).
    pub fn reopen(&self) -> Self {
        self.clone()
    }

    /// How many containers were ever started: a test's "never twice" check.
    pub fn total_starts(&self) -> u64 {
        self.lock().starts
    }

    /// The environment a container was created with.
    pub fn env_of(&self, id: &str) -> Option<Vec<(String, String)>> {
        self.lock().containers.get(id).map(|c| c.spec.env.clone())
    }

    /// Makes a running container exit now, as if it crashed.
    pub fn crash(&self, id: &str, code: i32) {
        Self::finish(&self.inner, id, code, false);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(inner: &Mutex<Inner>, id: &str, code: i32, oom: bool) {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = g.containers.get_mut(id) else { return };
        if c.info.state == RunState::Exited {
            return;
        }
        let exit = ExitInfo {
            exit_code: Some(code),
            oom_killed: oom,
            reason: oom.then(|| "OutOfMemoryError: Container killed due to memory usage".to_string()),
        };
        c.stderr
            .push_str(&format!("berth-testapp: exiting with {code} as configured\n"));
        c.info.state = RunState::Exited;
        c.info.finished_at = Some(now());
        c.info.exit = Some(exit.clone());
        c.exit_tx.send_replace(Some(exit));
    }

    fn get<T>(&self, id: &str, f: impl FnOnce(&mut FakeContainer) -> T) -> Result<T> {
        let mut g = self.lock();
        g.containers
            .get_mut(id)
            .map(f)
            .ok_or_else(|| AgentError::NotFound(id.to_string()))
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Vec<String> {
        vec!["healthcheck".into(), "oom-detection".into()]
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        if spec.image.starts_with("missing") {
            return Err(AgentError::ImageNotFound {
                image: spec.image.clone(),
            });
        }
        let mut g = self.lock();
        g.next += 1;
        let id = format!("fake-{}", g.next);
        let mut env = spec.env.clone();
        env.extend(spec.host_port_env());
        let mut spec = spec.clone();
        spec.env = env;
        let info = ContainerInfo {
            runtime_id: id.clone(),
            labels: spec.labels(),
            state: RunState::Created,
            exit: None,
            started_at: None,
            finished_at: None,
        };
        let (exit_tx, _) = watch::channel(None);
        g.containers.insert(
            id.clone(),
            FakeContainer {
                spec,
                info,
                exit_tx,
                stdout: String::new(),
                stderr: String::new(),
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let args = self.get(id, |c| {
            let mut args = c.spec.entry_point.clone();
            args.extend(c.spec.command.iter().cloned());
            (args, c.spec.memory_mib, c.info.state)
        })?;
        let (args, memory, state) = args;
        if state != RunState::Created {
            return Err(AgentError::CannotStart {
                container: id.to_string(),
                reason: "already started".into(),
            });
        }
        {
            let mut g = self.lock();
            g.starts += 1;
            if let Some(c) = g.containers.get_mut(id) {
                c.info.state = RunState::Running;
                c.info.started_at = Some(now());
                c.stdout.push_str("berth-testapp testapp listening on fake\n");
            }
        }
        let eat = flag(&args, "--eat-memory-mib").unwrap_or(0);
        if memory.is_some_and(|m| eat > u64::from(m)) {
            Self::finish(&self.inner, id, 137, true);
            return Ok(());
        }
        if let Some(ms) = flag(&args, "--exit-after-ms").filter(|ms| *ms > 0) {
            let code = i32::try_from(flag(&args, "--exit-code").unwrap_or(0)).unwrap_or(1);
            let inner = self.inner.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Self::finish(&inner, &id, code, false);
            });
        }
        Ok(())
    }

    async fn stop(&self, id: &str, _timeout: Duration) -> Result<()> {
        let state = self.get(id, |c| c.info.state)?;
        match state {
            RunState::Running => Self::finish(&self.inner, id, 0, false),
            RunState::Created => {
                self.get(id, |c| {
                    c.info.state = RunState::Exited;
                    c.info.exit = Some(ExitInfo::default());
                    c.exit_tx.send_replace(Some(ExitInfo::default()));
                })?;
            }
            RunState::Exited => {}
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.stop(id, Duration::ZERO).await?;
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        self.get(id, |c| c.info.clone())
    }

    async fn list(&self, agent_id: &str) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|c| c.spec.agent_id == agent_id)
            .map(|c| c.info.clone())
            .collect())
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo> {
        let mut rx = self.get(id, |c| c.exit_tx.subscribe())?;
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::NotFound(id.to_string()))?;
        Ok(exit.clone().unwrap_or_default())
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Logs> {
        self.get(id, |c| Logs {
            stdout: tail_lines(&c.stdout, tail),
            stderr: tail_lines(&c.stderr, tail),
        })
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        self.get(id, |c| Stats {
            read_at: now(),
            cpu_total_ns: 1_000,
            memory_bytes: 4 << 20,
            memory_limit_bytes: c.spec.memory_mib.map(|m| u64::from(m) << 20),
            pids: Some(1),
        })
    }

    async fn exec(&self, id: &str, argv: &[String], _timeout: Duration) -> Result<ExecResult> {
        let state = self.get(id, |c| c.info.state)?;
        let ok = state == RunState::Running
            && (argv.first().is_some_and(|a| a == "true") || argv.last().is_some_and(|a| a.ends_with("--help")));
        Ok(ExecResult {
            exit_code: Some(if ok { 0 } else { 1 }),
            output: String::new(),
            timed_out: false,
        })
    }
}
