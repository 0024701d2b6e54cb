//! An in-memory view of the records the controllers and discovery read,
//! loaded at one revision and kept current from the store's watch (the
//! informer pattern): container instances, tasks that hold or want
//! resources, the pending queue, services and the reconciler's service
//! states. Each record keeps its `mod_revision` so that every commit made
//! from this view can compare it.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{ContainerInstance, Service, Task, TaskStatus};
use berth_store::{Event, EventKind, RangeRequest, Revision, Store, StoreError};
use serde_json::{Map, Value};

use crate::{Stored, keys};

/// The task members typed by the model that a reader may still find
/// malformed in a record; see [`ClusterView::defects`].
const TYPED_TASK_MEMBERS: [&str; 4] = [
    "overrides",
    "placementConstraints",
    "placementStrategy",
    "networkConfiguration",
];

/// One cluster's records.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    pub instances: BTreeMap<String, Stored<ContainerInstance>>,
    /// Tasks not yet STOPPED (placed or waiting).
    pub tasks: BTreeMap<String, Stored<Task>>,
    /// Tasks whose overrides, placement or network members do not decode:
    /// they are in `tasks` without those members, and here with the reason
    /// (the launcher tells the task instead of dropping its constraints).
    pub defects: BTreeMap<String, String>,
    /// Ids of tasks in the launcher's queue.
    pub pending: BTreeSet<String>,
    pub services: BTreeMap<String, Stored<Service>>,
    /// The reconciler's own per-service records (`/svcstate/...`), raw.
    pub service_states: BTreeMap<String, (Vec<u8>, Revision)>,
}

/// Every cluster's records, as of `revision`.
#[derive(Debug, Default)]
pub struct Cache {
    pub clusters: BTreeMap<String, ClusterView>,
    pub revision: Revision,
    /// Tasks seen going from not STOPPED to STOPPED, oldest first, for
    /// whoever counts failures; drained by its reader.
    pub newly_stopped: Vec<Task>,
}

/// What a batch of changes touched, so a reader knows whether to act.
#[derive(Debug, Default, Clone, Copy)]
pub struct Touched {
    /// A task joined the queue.
    pub pending: bool,
    /// An instance changed (capacity, status, connection).
    pub instances: bool,
    /// A task, service or service state changed.
    pub other: bool,
}

impl Touched {
    pub fn any(self) -> bool {
        self.pending || self.instances || self.other
    }
}

/// A task record, or, when only its typed placement members are at fault,
/// the task without them and why.
fn decode_task(key: &str, value: &[u8], rev: Revision) -> Option<(Stored<Task>, Option<String>)> {
    let err = match Stored::<Task>::decode(key.as_bytes(), value, rev) {
        Ok(s) => return Some((s, None)),
        Err(e) => e,
    };
    let raw: Map<String, Value> = serde_json::from_slice(value).ok()?;
    let mut stripped = raw.clone();
    let mut at_fault = Vec::new();
    for m in TYPED_TASK_MEMBERS {
        if stripped.remove(m).is_some() {
            at_fault.push(m);
        }
    }
    let task: Task = serde_json::from_value(Value::Object(stripped)).ok()?;
    let reason = format!("INVALID: {} cannot be read: {err}", at_fault.join(", "));
    Some((
        Stored {
            value: task,
            raw,
            mod_revision: rev,
        },
        Some(reason),
    ))
}

impl Cache {
    /// The prefixes a cache loads and follows.
    pub const PREFIXES: [&'static str; 5] = [
        keys::INSTANCES,
        keys::TASKS,
        keys::PENDING,
        keys::SERVICES,
        keys::SERVICE_STATES,
    ];

    /// Loads everything at one revision.
    pub async fn load(store: &dyn Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        let mut at = 0;
        for prefix in Self::PREFIXES {
            let mut req = RangeRequest::prefix(prefix.as_bytes());
            if at != 0 {
                req = req.at(at);
            }
            let resp = store.range(req).await?;
            if at == 0 {
                // The first read fixes the revision every other read is at.
                at = resp.revision;
            }
            for kv in resp.kvs {
                cache.apply_put(&kv.key, &kv.value, kv.mod_revision);
            }
        }
        cache.revision = at;
        Ok(cache)
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8], rev: Revision) -> Touched {
        let mut touched = Touched::default();
        let Ok(key) = std::str::from_utf8(key) else {
            return touched;
        };
        if let Some((cluster, id)) = keys::split(key, keys::INSTANCES) {
            match Stored::<ContainerInstance>::decode(key.as_bytes(), value, rev) {
                Ok(ci) => {
                    self.clusters
                        .entry(cluster.to_string())
                        .or_default()
                        .instances
                        .insert(id.to_string(), ci);
                }
                Err(e) => tracing::warn!(key, error = %e, "undecodable instance record ignored"),
            }
            touched.instances = true;
        } else if let Some((cluster, id)) = keys::split(key, keys::TASKS) {
            let view = self.clusters.entry(cluster.to_string()).or_default();
            match decode_task(key, value, rev) {
                Some((t, defect)) if t.value.last_status != TaskStatus::Stopped => {
                    match defect {
                        Some(d) => {
                            tracing::warn!(key, reason = %d, "task record partly undecodable");
                            view.defects.insert(id.to_string(), d);
                        }
                        None => {
                            view.defects.remove(id);
                        }
                    }
                    view.tasks.insert(id.to_string(), t);
                }
                Some((t, _)) => {
                    view.defects.remove(id);
                    if view.tasks.remove(id).is_some() {
                        self.newly_stopped.push(t.value);
                    }
                }
                None => tracing::warn!(key, "undecodable task record ignored"),
            }
            touched.other = true;
        } else if let Some((cluster, name)) = keys::split(key, keys::SERVICES) {
            match Stored::<Service>::decode(key.as_bytes(), value, rev) {
                Ok(svc) => {
                    self.clusters
                        .entry(cluster.to_string())
                        .or_default()
                        .services
                        .insert(name.to_string(), svc);
                }
                Err(e) => tracing::warn!(key, error = %e, "undecodable service record ignored"),
            }
            touched.other = true;
        } else if let Some((cluster, name)) = keys::split(key, keys::SERVICE_STATES) {
            self.clusters
                .entry(cluster.to_string())
                .or_default()
                .service_states
                .insert(name.to_string(), (value.to_vec(), rev));
            touched.other = true;
        } else if let Some((cluster, id)) = keys::split(key, keys::PENDING) {
            self.clusters
                .entry(cluster.to_string())
                .or_default()
                .pending
                .insert(id.to_string());
            touched.pending = true;
        }
        touched
    }

    fn apply_delete(&mut self, key: &[u8]) -> Touched {
        let mut touched = Touched::default();
        let Ok(key) = std::str::from_utf8(key) else {
            return touched;
        };
        let Some(prefix) = Self::PREFIXES.into_iter().find(|p| key.starts_with(p)) else {
            return touched;
        };
        touched.other = true;
        let Some((cluster, id)) = keys::split(key, prefix) else {
            return touched;
        };
        let Some(view) = self.clusters.get_mut(cluster) else {
            return touched;
        };
        match prefix {
            keys::INSTANCES => {
                view.instances.remove(id);
                touched.instances = true;
            }
            keys::TASKS => {
                view.tasks.remove(id);
                view.defects.remove(id);
            }
            keys::PENDING => {
                view.pending.remove(id);
            }
            keys::SERVICES => {
                view.services.remove(id);
            }
            _ => {
                view.service_states.remove(id);
            }
        }
        touched
    }

    /// Applies one revision's events.
    pub fn apply(&mut self, revision: Revision, events: &[Event]) -> Touched {
        let mut touched = Touched::default();
        for e in events {
            let t = match e.kind {
                EventKind::Put => self.apply_put(&e.kv.key, &e.kv.value, e.kv.mod_revision),
                EventKind::Delete => self.apply_delete(&e.kv.key),
            };
            touched.pending |= t.pending;
            touched.instances |= t.instances;
            touched.other |= t.other;
        }
        self.revision = revision;
        touched
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn task_json() -> Value {
        json!({
            "id": "t1", "taskArn": "arn:aws:ecs:us-east-1:1:task/c/t1", "cluster": "c",
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/web:1",
            "lastStatus": "PROVISIONING", "desiredStatus": "RUNNING",
            "demand": {"cpu": 1, "memoryMib": 1, "networkMbps": 0, "gpus": 0},
            "createdAt": 1.0,
        })
    }

    #[test]
    fn a_task_whose_constraints_do_not_decode_is_kept_with_a_reason() {
        let mut bad = task_json();
        bad["placementConstraints"] = json!("memberOf everything");
        let mut cache = Cache::default();
        cache.apply_put(b"/tasks/c/t1", bad.to_string().as_bytes(), 5);
        cache.apply_put(b"/pending/c/t1", b"/tasks/c/t1", 5);
        let view = &cache.clusters["c"];
        assert!(view.tasks.contains_key("t1"), "the task is still seen");
        let reason = &view.defects["t1"];
        assert!(reason.starts_with("INVALID: placementConstraints"), "{reason}");
        // Its stored members are kept for whoever rewrites it.
        assert_eq!(
            view.tasks["t1"].raw["placementConstraints"],
            json!("memberOf everything")
        );

        cache.apply_put(b"/tasks/c/t1", task_json().to_string().as_bytes(), 6);
        assert!(
            cache.clusters["c"].defects.is_empty(),
            "a fixed record clears the reason"
        );
    }
}
