//! The agent's local state dir: who it is (`agent.json`) and one record per
//! task it was given (`tasks/<task id>.json`), written atomically on every
//! change so a restarted agent knows what it ran, what it started and what
//! already stopped (a stopped task is never started again).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use berth_proto::{DesiredTask, TaskStateChange};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{AgentError, Result};

/// The agent's identity, stable across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Labels every container this agent starts.
    pub agent_id: String,
    /// Given by the server at the first registration.
    #[serde(default)]
    pub container_instance_arn: Option<String>,
}

/// What the agent remembers about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub desired: DesiredTask,
    /// The last state reported (or to be reported).
    pub state: TaskStateChange,
    /// Containers that were started at least once: never started again.
    #[serde(default)]
    pub started: BTreeSet<String>,
    /// Container name → driver runtime id.
    #[serde(default)]
    pub runtime_ids: BTreeMap<String, String>,
}

/// The state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| AgentError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(format!("read {}", path.display()), e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| AgentError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, bytes).map_err(|e| AgentError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(format!("rename to {}", path.display()), e))
}

/// A task id as a file name.
fn file_name(task_id: &str) -> String {
    let s: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}.json")
}

impl StateDir {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let tasks = root.join("tasks");
        std::fs::create_dir_all(&tasks).map_err(|e| AgentError::io(format!("create {}", tasks.display()), e))?;
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identity, created with a fresh agent id on first use.
    pub fn identity(&self) -> Result<Identity> {
        let path = self.root.join("agent.json");
        if let Some(id) = read_json(&path)? {
            return Ok(id);
        }
        let id = Identity {
            agent_id: format!("agent-{}", uuid::Uuid::new_v4().simple()),
            container_instance_arn: None,
        };
        write_json(&path, &id)?;
        Ok(id)
    }

    pub fn save_identity(&self, id: &Identity) -> Result<()> {
        write_json(&self.root.join("agent.json"), id)
    }

    pub fn load_tasks(&self) -> Result<Vec<TaskRecord>> {
        let dir = self.root.join("tasks");
        let entries = std::fs::read_dir(&dir).map_err(|e| AgentError::io(format!("list {}", dir.display()), e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                match read_json::<TaskRecord>(&path) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(err) => tracing::warn!("ignoring unreadable task record: {err}"),
                }
            }
        }
        Ok(out)
    }

    pub fn save_task(&self, rec: &TaskRecord) -> Result<()> {
        write_json(&self.root.join("tasks").join(file_name(rec.desired.task_id())), rec)
    }

    pub fn remove_task(&self, task_id: &str) -> Result<()> {
        match std::fs::remove_file(self.root.join("tasks").join(file_name(task_id))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io(format!("remove task record {task_id}"), e)),
        }
    }
}
