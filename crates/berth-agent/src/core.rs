//! The agent's core, without the network: it owns the task table, applies
//! the server's desired state through [`crate::reconcile`], runs one
//! supervisor per task, and queues every report for the stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use berth_model::TaskStatus;
use berth_proto::{AgentMessage, ContainerState, DesiredTask, ServerMessage, TaskStateChange};
use tokio::sync::{mpsc, watch};

use crate::Result;
use crate::driver::{ContainerInfo, Driver, labels, now};
use crate::reconcile::{Action, LocalTask, plan_full, plan_update};
use crate::state::{Identity, StateDir, TaskRecord};
use crate::supervisor::Supervisor;

/// What the supervisors, the stream and the metadata endpoint share.
pub(crate) struct Shared {
    pub agent_id: String,
    pub cluster: String,
    /// `http://host:port` of the metadata endpoint, for containers' env.
    pub metadata_base: String,
    pub driver: Arc<dyn Driver>,
    pub state: StateDir,
    pub identity: RwLock<Identity>,
    pub tasks: RwLock<BTreeMap<String, TaskRecord>>,
    /// Stop requests to running supervisors, by task ARN.
    controls: Mutex<BTreeMap<String, watch::Sender<Option<String>>>>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
}

impl Shared {
    /// Persists a task record and updates the table.
    pub(crate) fn save(&self, rec: &TaskRecord) {
        if let Err(e) = self.state.save_task(rec) {
            tracing::error!(task = %rec.desired.task_arn, "cannot persist task state: {e}");
        }
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.desired.task_arn.clone(), rec.clone());
    }

    pub(crate) fn send(&self, msg: AgentMessage) {
        // Nobody listening only happens during shutdown.
        let _ = self.outbox.send(msg);
    }

    fn spawn_supervisor(self: &Arc<Self>, rec: TaskRecord, adopted: Vec<ContainerInfo>) {
        let arn = rec.desired.task_arn.clone();
        let (tx, rx) = watch::channel(None);
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(arn.clone(), tx);
        let shared = self.clone();
        tokio::spawn(async move {
            let mut sv = Supervisor::new(shared.clone(), rec);
            sv.adopt(adopted).await;
            sv.run(rx).await;
            shared.controls.lock().unwrap_or_else(|p| p.into_inner()).remove(&arn);
        });
    }
}

/// The agent core. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.shared.agent_id)
            .finish_non_exhaustive()
    }
}

fn initial_state(task: &DesiredTask) -> TaskStateChange {
    TaskStateChange {
        task_arn: task.task_arn.clone(),
        last_status: TaskStatus::Pending,
        containers: task
            .task_definition
            .container_definitions
            .iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                runtime_id: None,
                last_status: TaskStatus::Pending,
                exit_code: None,
                reason: None,
                network_bindings: Vec::new(),
                health_status: Default::default(),
            })
            .collect(),
        health_status: Default::default(),
        pull_started_at: None,
        started_at: None,
        stopping_at: None,
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
    }
}

impl Agent {
    /// Opens the state dir, re-adopts the containers a previous run of this
    /// agent left (supervising unfinished tasks again, removing containers no
    /// task record claims), and returns the agent with the queue of messages
    /// for the server.
    pub async fn open(
        cluster: &str,
        state: StateDir,
        driver: Arc<dyn Driver>,
        metadata_base: &str,
    ) -> Result<(Agent, mpsc::UnboundedReceiver<AgentMessage>)> {
        let identity = state.identity()?;
        let records = state.load_tasks()?;
        let found = driver.list(&identity.agent_id).await?;
        let (outbox, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            agent_id: identity.agent_id.clone(),
            cluster: cluster.to_string(),
            metadata_base: metadata_base.trim_end_matches('/').to_string(),
            driver,
            state,
            identity: RwLock::new(identity),
            tasks: RwLock::default(),
            controls: Mutex::default(),
            outbox,
        });
        let mut by_task: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for c in found {
            let arn = c.label(labels::TASK_ARN).unwrap_or_default().to_string();
            by_task.entry(arn).or_default().push(c);
        }
        for rec in records {
            let adopted = by_task.remove(&rec.desired.task_arn).unwrap_or_default();
            shared.save(&rec);
            if rec.state.last_status < TaskStatus::Stopped {
                tracing::info!(task = %rec.desired.task_arn, containers = adopted.len(), "re-adopting task");
                shared.spawn_supervisor(rec, adopted);
            }
        }
        for (arn, orphans) in by_task {
            for c in orphans {
                tracing::warn!(task = %arn, "removing container {} that no task record claims", c.runtime_id);
                if let Err(e) = shared.driver.remove(&c.runtime_id).await {
                    tracing::warn!("cannot remove orphan {}: {e}", c.runtime_id);
                }
            }
        }
        Ok((Agent { shared }, rx))
    }

    pub fn agent_id(&self) -> &str {
        &self.shared.agent_id
    }

    pub fn cluster(&self) -> &str {
        &self.shared.cluster
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.shared.driver
    }

    pub fn identity(&self) -> Identity {
        self.shared.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers the container instance ARN the server gave this agent.
    pub fn set_instance_arn(&self, arn: &str) -> Result<()> {
        let mut id = self.shared.identity.write().unwrap_or_else(|p| p.into_inner());
        if id.container_instance_arn.as_deref() != Some(arn) {
            id.container_instance_arn = Some(arn.to_string());
            self.shared.state.save_identity(&id)?;
        }
        Ok(())
    }

    /// Stops supervising without stopping anything (agent shutdown): the
    /// tasks keep running and the next agent on this state dir re-adopts them.
    pub fn detach(&self) {
        self.shared.controls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Every task record, by ARN.
    pub fn tasks(&self) -> BTreeMap<String, TaskRecord> {
        self.shared.tasks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current state of every task (what a reconnect re-sends).
    pub fn snapshot(&self) -> Vec<TaskStateChange> {
        self.tasks().into_values().map(|r| r.state).collect()
    }

    /// How many tasks are not stopped.
    pub fn running_tasks(&self) -> u32 {
        let n = self
            .shared
            .tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.state.last_status < TaskStatus::Stopped)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn local(&self) -> BTreeMap<String, LocalTask> {
        self.shared
            .tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(arn, r)| {
                (
                    arn.clone(),
                    LocalTask {
                        last_status: r.state.last_status,
                        stopping: r.state.stopping_at.is_some(),
                    },
                )
            })
            .collect()
    }

    /// Applies a desired-state message (other messages are ignored here).
    pub async fn apply(&self, msg: &ServerMessage) {
        let actions = match msg {
            ServerMessage::DesiredTasks(d) => plan_full(&self.local(), &d.tasks),
            ServerMessage::TaskUpdate(u) => plan_update(&self.local(), u),
            _ => return,
        };
        for action in actions {
            self.act(action).await;
        }
    }

    async fn act(&self, action: Action) {
        let shared = &self.shared;
        match action {
            Action::Start(task) => {
                if task.cluster != shared.cluster {
                    tracing::warn!(task = %task.task_arn, "task of cluster {} sent to an agent of {}", task.cluster, shared.cluster);
                }
                tracing::info!(task = %task.task_arn, "starting task");
                let rec = TaskRecord {
                    state: initial_state(&task),
                    desired: task,
                    started: Default::default(),
                    runtime_ids: Default::default(),
                };
                shared.save(&rec);
                shared.send(AgentMessage::TaskStateChange(rec.state.clone()));
                shared.spawn_supervisor(rec, Vec::new());
            }
            Action::Stop { task_arn, reason } => {
                let controls = shared.controls.lock().unwrap_or_else(|p| p.into_inner());
                match controls.get(&task_arn) {
                    Some(tx) => {
                        tx.send_replace(Some(reason));
                    }
                    None => tracing::warn!(task = %task_arn, "stop for a task with no supervisor"),
                }
            }
            Action::Forget { task_arn } => {
                let rec = shared
                    .tasks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&task_arn);
                let Some(rec) = rec else { return };
                let mut ids: Vec<String> = rec.runtime_ids.values().cloned().collect();
                // Also what the record missed (an agent killed between create
                // and save): the labels say whose it is.
                if let Ok(found) = shared.driver.list(&shared.agent_id).await {
                    ids.extend(
                        found
                            .into_iter()
                            .filter(|c| c.label(labels::TASK_ARN) == Some(task_arn.as_str()))
                            .map(|c| c.runtime_id)
                            .filter(|id| !rec.runtime_ids.values().any(|r| r == id)),
                    );
                }
                for id in &ids {
                    if let Err(e) = shared.driver.remove(id).await {
                        tracing::debug!("removing container {id}: {e}");
                    }
                }
                if let Err(e) = shared.state.remove_task(rec.desired.task_id()) {
                    tracing::warn!("{e}");
                }
            }
            Action::ConfirmStopped(task) => {
                let mut st = initial_state(&task);
                st.last_status = TaskStatus::Stopped;
                for c in &mut st.containers {
                    c.last_status = TaskStatus::Stopped;
                }
                st.stopped_at = Some(now());
                st.stop_code = Some("TaskFailedToStart".into());
                st.stopped_reason = Some(
                    task.stop_reason
                        .clone()
                        .unwrap_or_else(|| "Task was never started on this instance".into()),
                );
                shared.send(AgentMessage::TaskStateChange(st));
            }
        }
    }
}
