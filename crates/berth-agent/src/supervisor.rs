//! One task's life on this host: start its containers in `dependsOn` order,
//! watch their exits and health, stop the task when an essential container
//! exits or a stop is asked for, and publish every change.

use std::sync::Arc;
use std::time::Duration;

use berth_model::{ContainerDefinition, HealthStatus, NetworkBinding, TaskStatus};
use berth_proto::{ContainerHealth, ContainerState, TaskStateChange};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::Shared;
use crate::driver::{ContainerInfo, ContainerSpec, ExitInfo, RunState, labels, now};
use crate::health::{HealthReport, check_loop};
use crate::state::TaskRecord;

/// ECS's default stopTimeout.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Exited,
}

#[derive(Debug)]
struct Slot {
    def: ContainerDefinition,
    runtime_id: Option<String>,
    phase: Phase,
    started: bool,
    exit: Option<ExitInfo>,
    reason: Option<String>,
    health: HealthStatus,
    health_task: Option<JoinHandle<()>>,
    stop_issued: bool,
}

enum Deps {
    Ready,
    Blocked,
    Impossible(String),
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    rec: TaskRecord,
    slots: Vec<Slot>,
    exits_tx: mpsc::UnboundedSender<(usize, ExitInfo)>,
    exits_rx: mpsc::UnboundedReceiver<(usize, ExitInfo)>,
    health_tx: mpsc::UnboundedSender<HealthReport>,
    health_rx: mpsc::UnboundedReceiver<HealthReport>,
    stopping: bool,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>, rec: TaskRecord) -> Self {
        let slots = rec
            .desired
            .task_definition
            .container_definitions
            .iter()
            .map(|def| Slot {
                def: def.clone(),
                runtime_id: rec.runtime_ids.get(&def.name).cloned(),
                phase: Phase::Waiting,
                started: false,
                exit: None,
                reason: None,
                health: HealthStatus::Unknown,
                health_task: None,
                stop_issued: false,
            })
            .collect();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        Supervisor {
            stopping: rec.state.stopping_at.is_some(),
            shared,
            rec,
            slots,
            exits_tx,
            exits_rx,
            health_tx,
            health_rx,
        }
    }

    /// Takes over containers found by the driver (agent restart): running
    /// ones are watched, exited ones reported, and a container that was
    /// started before but is gone counts as exited. Nothing started before
    /// is started again.
    pub(crate) async fn adopt(&mut self, mut found: Vec<ContainerInfo>) {
        let rank = |c: &ContainerInfo| match c.state {
            RunState::Running => 0,
            RunState::Created => 1,
            RunState::Exited => 2,
        };
        found.sort_by_key(rank);
        for i in 0..self.slots.len() {
            let name = self.slots[i].def.name.clone();
            let mut mine = found
                .iter()
                .filter(|c| c.label(labels::CONTAINER) == Some(name.as_str()));
            let picked = mine.next().cloned();
            for extra in mine {
                tracing::warn!(task = %self.rec.desired.task_arn, container = %name, "removing duplicate container {}", extra.runtime_id);
                let _ = self.shared.driver.remove(&extra.runtime_id).await;
            }
            let was_started = self.rec.started.contains(&name);
            match picked {
                Some(c) if c.state == RunState::Running => {
                    self.slots[i].runtime_id = Some(c.runtime_id.clone());
                    self.slots[i].phase = Phase::Running;
                    self.slots[i].started = true;
                    self.watch(i);
                }
                Some(c) if c.state == RunState::Created && !was_started => {
                    self.slots[i].runtime_id = Some(c.runtime_id.clone());
                }
                Some(c) => {
                    self.slots[i].runtime_id = Some(c.runtime_id.clone());
                    self.slots[i].started = true;
                    self.slots[i].phase = Phase::Running;
                    let exit = c.exit.unwrap_or_default();
                    let _ = self.exits_tx.send((i, exit));
                }
                None if was_started => {
                    self.slots[i].started = true;
                    self.slots[i].phase = Phase::Running;
                    let exit = ExitInfo {
                        exit_code: None,
                        oom_killed: false,
                        reason: Some("container disappeared while the agent was down".into()),
                    };
                    let _ = self.exits_tx.send((i, exit));
                }
                None => self.slots[i].runtime_id = None,
            }
        }
    }

    pub(crate) async fn run(mut self, mut stop_rx: watch::Receiver<Option<String>>) {
        let pending = stop_rx.borrow_and_update().clone();
        if self.stopping || pending.is_some() {
            // A stop asked before this supervisor ran, or an agent restarted
            // in the middle of a stop: (re)issue it.
            let reason = pending
                .or_else(|| self.rec.state.stopped_reason.clone())
                .unwrap_or_default();
            self.begin_stop("UserInitiated", reason);
        }
        loop {
            if !self.stopping {
                self.start_ready().await;
            }
            self.publish();
            if self.slots.iter().all(|s| s.phase == Phase::Exited) {
                break;
            }
            tokio::select! {
                Some((i, exit)) = self.exits_rx.recv() => self.on_exit(i, exit),
                Some(h) = self.health_rx.recv() => self.on_health(h),
                changed = stop_rx.changed(), if !self.stopping => {
                    if changed.is_err() {
                        // The agent is going away; its tasks keep running.
                        return;
                    }
                    let reason = stop_rx.borrow_and_update().clone().unwrap_or_default();
                    self.begin_stop("UserInitiated", reason);
                }
            }
        }
        self.publish();
    }

    fn spec(&self, def: &ContainerDefinition) -> Result<ContainerSpec, String> {
        let d = &self.rec.desired;
        let mut ports = Vec::new();
        for pm in &def.port_mappings {
            let assigned = d
                .host_ports
                .iter()
                .find(|p| p.container_name == def.name && p.container_port == pm.container_port)
                .cloned();
            match (assigned, pm.host_port.filter(|p| *p != 0)) {
                (Some(a), _) => ports.push(a),
                (None, Some(hp)) => ports.push(berth_proto::PortAssignment {
                    container_name: def.name.clone(),
                    container_port: pm.container_port,
                    host_port: hp,
                    protocol: pm.protocol,
                }),
                (None, None) => {
                    return Err(format!(
                        "no host port was assigned to container '{}' port {}",
                        def.name, pm.container_port
                    ));
                }
            }
        }
        let mut env: Vec<(String, String)> = def
            .environment
            .iter()
            .map(|kv| (kv.name.clone(), kv.value.clone()))
            .collect();
        let uri = format!("{}/v4/{}/{}", self.shared.metadata_base, d.task_id(), def.name);
        env.push(("ECS_CONTAINER_METADATA_URI_V4".into(), uri.clone()));
        env.push(("ECS_CONTAINER_METADATA_URI".into(), uri));
        env.push(("BERTH_TASK_ARN".into(), d.task_arn.clone()));
        Ok(ContainerSpec {
            agent_id: self.shared.agent_id.clone(),
            cluster: d.cluster.clone(),
            task_arn: d.task_arn.clone(),
            task_id: d.task_id().to_string(),
            name: def.name.clone(),
            image: def.image.clone(),
            entry_point: def.entry_point.clone(),
            command: def.command.clone(),
            env,
            cpu_units: def.cpu,
            memory_mib: def.memory,
            memory_reservation_mib: def.memory_reservation,
            ports,
            stop_timeout: def
                .stop_timeout
                .map_or(DEFAULT_STOP_TIMEOUT, |s| Duration::from_secs(u64::from(s))),
        })
    }

    fn deps(&self, i: usize) -> Deps {
        for dep in &self.slots[i].def.depends_on {
            let Some(d) = self.slots.iter().find(|s| s.def.name == dep.container_name) else {
                return Deps::Impossible(format!("unknown dependency '{}'", dep.container_name));
            };
            let never_started = d.phase == Phase::Exited && !d.started;
            let code = d.exit.as_ref().and_then(|e| e.exit_code);
            let (ok, impossible) = match dep.condition.as_str() {
                "START" => (d.started, never_started),
                "COMPLETE" => (d.phase == Phase::Exited && d.started, never_started),
                "SUCCESS" => (
                    d.phase == Phase::Exited && code == Some(0),
                    d.phase == Phase::Exited && code != Some(0),
                ),
                "HEALTHY" => (
                    d.health == HealthStatus::Healthy,
                    d.phase == Phase::Exited || d.health == HealthStatus::Unhealthy || d.def.health_check.is_none(),
                ),
                other => (false, {
                    tracing::warn!("unknown dependsOn condition {other}");
                    true
                }),
            };
            if impossible && !ok {
                return Deps::Impossible(format!(
                    "Container '{}' cannot start: dependency '{}' condition {} can no longer be met",
                    self.slots[i].def.name, dep.container_name, dep.condition
                ));
            }
            if !ok {
                return Deps::Blocked;
            }
        }
        Deps::Ready
    }

    async fn start_ready(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.slots.len() {
                if self.stopping || self.slots[i].phase != Phase::Waiting {
                    continue;
                }
                match self.deps(i) {
                    Deps::Blocked => {}
                    Deps::Impossible(why) => {
                        self.slots[i].reason = Some(why.clone());
                        self.begin_stop("TaskFailedToStart", why);
                        return;
                    }
                    Deps::Ready => {
                        if let Err(why) = self.start(i).await {
                            self.slots[i].reason = Some(why.clone());
                            self.slots[i].phase = Phase::Exited;
                            self.begin_stop("TaskFailedToStart", why);
                            return;
                        }
                        progressed = true;
                    }
                }
            }
            // A START dependency is met as soon as its container started.
            if !progressed {
                return;
            }
        }
    }

    async fn start(&mut self, i: usize) -> Result<(), String> {
        let driver = self.shared.driver.clone();
        let name = self.slots[i].def.name.clone();
        let t0 = std::time::Instant::now();
        let id = match self.slots[i].runtime_id.clone() {
            Some(id) => id,
            None => {
                let spec = self.spec(&self.slots[i].def)?;
                let id = driver.create(&spec).await.map_err(|e| e.to_string())?;
                tracing::debug!(task = %self.rec.desired.task_arn, container = %name, ms = t0.elapsed().as_secs_f64() * 1e3, "created");
                self.slots[i].runtime_id = Some(id.clone());
                self.rec.runtime_ids.insert(name.clone(), id.clone());
                self.shared.save(&self.rec);
                id
            }
        };
        // Recorded before the start call: if the agent dies in between, the
        // container counts as started and is never started a second time.
        self.rec.started.insert(name);
        self.shared.save(&self.rec);
        driver.start(&id).await.map_err(|e| e.to_string())?;
        tracing::debug!(task = %self.rec.desired.task_arn, container = %self.slots[i].def.name, ms = t0.elapsed().as_secs_f64() * 1e3, "started");
        self.slots[i].started = true;
        self.slots[i].phase = Phase::Running;
        self.watch(i);
        Ok(())
    }

    /// Spawns the exit waiter and the health checker of a running slot.
    fn watch(&mut self, i: usize) {
        let Some(id) = self.slots[i].runtime_id.clone() else {
            return;
        };
        let driver = self.shared.driver.clone();
        let tx = self.exits_tx.clone();
        let wait_id = id.clone();
        tokio::spawn(async move {
            let exit = driver.wait(&wait_id).await.unwrap_or_else(|e| ExitInfo {
                exit_code: None,
                oom_killed: false,
                reason: Some(e.to_string()),
            });
            let _ = tx.send((i, exit));
        });
        if let Some(hc) = self.slots[i].def.health_check.clone() {
            let driver = self.shared.driver.clone();
            let tx = self.health_tx.clone();
            self.slots[i].health_task = Some(tokio::spawn(check_loop(driver, id, i, hc, tx)));
        }
    }

    fn on_exit(&mut self, i: usize, exit: ExitInfo) {
        let slot = &mut self.slots[i];
        if slot.phase == Phase::Exited {
            return;
        }
        slot.phase = Phase::Exited;
        if let Some(h) = slot.health_task.take() {
            h.abort();
        }
        if slot.reason.is_none() {
            slot.reason = exit.reason.clone();
        }
        let essential = slot.def.essential;
        let name = slot.def.name.clone();
        tracing::info!(task = %self.rec.desired.task_arn, container = %name, ?exit, "container exited");
        slot.exit = Some(exit);
        if essential && !self.stopping {
            self.begin_stop("EssentialContainerExited", "Essential container in task exited".into());
        } else if self.stopping {
            self.issue_stops();
        }
    }

    fn on_health(&mut self, h: HealthReport) {
        let Some(slot) = self.slots.get_mut(h.slot) else { return };
        if slot.phase != Phase::Running || slot.health == h.status {
            return;
        }
        slot.health = h.status;
        let msg = ContainerHealth {
            task_arn: self.rec.desired.task_arn.clone(),
            container_name: slot.def.name.clone(),
            health_status: h.status,
            task_health_status: self.task_health(),
            output: Some(h.output).filter(|o| !o.is_empty()),
            timestamp: now(),
        };
        self.shared.send(berth_proto::AgentMessage::ContainerHealth(msg));
    }

    fn task_health(&self) -> HealthStatus {
        let checked: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.def.essential && s.def.health_check.is_some())
            .collect();
        if checked.iter().any(|s| s.health == HealthStatus::Unhealthy) {
            HealthStatus::Unhealthy
        } else if !checked.is_empty() && checked.iter().all(|s| s.health == HealthStatus::Healthy) {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        }
    }

    fn begin_stop(&mut self, code: &str, reason: String) {
        let first = !self.stopping;
        self.stopping = true;
        let st = &mut self.rec.state;
        if st.stop_code.is_none() {
            st.stop_code = Some(code.to_string());
        }
        if st.stopped_reason.is_none() && !reason.is_empty() {
            st.stopped_reason = Some(reason);
        }
        if st.stopping_at.is_none() {
            st.stopping_at = Some(now());
        }
        if first {
            tracing::info!(task = %self.rec.desired.task_arn, code, "stopping task");
        }
        for slot in &mut self.slots {
            if slot.phase == Phase::Waiting {
                slot.phase = Phase::Exited;
            }
        }
        self.issue_stops();
    }

    /// Stops running containers in reverse dependency order, as ECS does: a
    /// container is stopped once every container that depends on it has
    /// exited. Called again after each exit while the task is stopping.
    fn issue_stops(&mut self) {
        let blocked = |slots: &[Slot], i: usize| {
            let name = &slots[i].def.name;
            slots
                .iter()
                .any(|s| s.phase != Phase::Exited && s.def.depends_on.iter().any(|d| &d.container_name == name))
        };
        let candidates: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].phase == Phase::Running && !self.slots[i].stop_issued)
            .collect();
        let mut ready: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| !blocked(&self.slots, i))
            .collect();
        let in_flight = self.slots.iter().any(|s| s.phase == Phase::Running && s.stop_issued);
        if ready.is_empty() && !in_flight {
            // Only a dependency cycle blocks everything: stop them all.
            ready = candidates;
        }
        for i in ready {
            let slot = &mut self.slots[i];
            slot.stop_issued = true;
            let Some(id) = slot.runtime_id.clone() else { continue };
            let driver = self.shared.driver.clone();
            let timeout = slot
                .def
                .stop_timeout
                .map_or(DEFAULT_STOP_TIMEOUT, |s| Duration::from_secs(u64::from(s)));
            tokio::spawn(async move {
                if let Err(e) = driver.stop(&id, timeout).await {
                    tracing::warn!(container = %id, "stop failed: {e}");
                }
            });
        }
    }

    fn state(&self) -> TaskStateChange {
        let mut st = self.rec.state.clone();
        let d = &self.rec.desired;
        st.containers = self
            .slots
            .iter()
            .map(|s| ContainerState {
                name: s.def.name.clone(),
                runtime_id: s.runtime_id.clone(),
                last_status: match s.phase {
                    Phase::Waiting => TaskStatus::Pending,
                    Phase::Running => TaskStatus::Running,
                    Phase::Exited => TaskStatus::Stopped,
                },
                exit_code: s.exit.as_ref().and_then(|e| e.exit_code),
                reason: s.reason.clone(),
                network_bindings: d
                    .host_ports
                    .iter()
                    .filter(|p| p.container_name == s.def.name && s.started)
                    .map(|p| NetworkBinding {
                        bind_ip: "0.0.0.0".into(),
                        container_port: p.container_port,
                        host_port: p.host_port,
                        protocol: p.protocol,
                    })
                    .collect(),
                health_status: s.health,
            })
            .collect();
        let all_exited = self.slots.iter().all(|s| s.phase == Phase::Exited);
        let all_started = self.slots.iter().all(|s| s.phase != Phase::Waiting);
        let next = if all_exited {
            TaskStatus::Stopped
        } else if all_started && self.slots.iter().any(|s| s.started) {
            TaskStatus::Running
        } else {
            TaskStatus::Pending
        };
        if next > st.last_status {
            st.last_status = next;
        }
        if st.last_status >= TaskStatus::Running && st.started_at.is_none() && self.slots.iter().any(|s| s.started) {
            st.started_at = Some(now());
        }
        if st.last_status == TaskStatus::Stopped && st.stopped_at.is_none() {
            st.stopped_at = Some(now());
        }
        st.health_status = self.task_health();
        st
    }

    /// Records and reports the task's state when it changed.
    fn publish(&mut self) {
        let st = self.state();
        if st != self.rec.state {
            self.rec.state = st.clone();
            self.shared.save(&self.rec);
            self.shared.send(berth_proto::AgentMessage::TaskStateChange(st));
        }
    }
}
