//! An in-memory view of the records the controllers plan from, loaded at one
//! revision and kept current from the store's watch (the informer pattern):
//! container instances, tasks that hold or want resources, and the pending
//! queue. Each record keeps its `mod_revision` so that every commit made from
//! this view can compare it.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{ContainerInstance, Service, Task, TaskStatus};
use berth_store::{Event, EventKind, RangeRequest, Revision, Store, StoreError};
use serde_json::{Map, Value};

/// A decoded record and the revision it was read at.
#[derive(Debug, Clone)]
pub struct Cached<T> {
    pub value: T,
    /// Members of the stored JSON the model does not carry (placement
    /// strategy and constraints, overrides, ...), kept so rewrites keep them.
    pub raw: Map<String, Value>,
    pub mod_revision: Revision,
}

/// One cluster's records.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    pub instances: BTreeMap<String, Cached<ContainerInstance>>,
    /// Tasks not yet STOPPED (placed or waiting).
    pub tasks: BTreeMap<String, Cached<Task>>,
    /// Ids of tasks in the launcher's queue.
    pub pending: BTreeSet<String>,
    pub services: BTreeMap<String, Cached<Service>>,
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

/// What a batch of changes touched, so the launcher knows whether to plan.
#[derive(Debug, Default, Clone, Copy)]
pub struct Touched {
    /// A task joined the queue.
    pub pending: bool,
    /// An instance changed (capacity, status, connection).
    pub instances: bool,
    /// A task, service or service state changed.
    pub other: bool,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, Map<String, Value>)> {
    let raw: Map<String, Value> = serde_json::from_slice(bytes).ok()?;
    let value = serde_json::from_value(Value::Object(raw.clone())).ok()?;
    Some((value, raw))
}

/// `/prefix/{cluster}/{id}` → `(cluster, id)`.
fn split<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

impl Cache {
    /// Loads everything at one revision.
    pub async fn load(store: &dyn Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        let first = store.range(RangeRequest::prefix(b"/instances/")).await?;
        let at = first.revision;
        cache.revision = at;
        for kv in first.kvs {
            cache.apply_put(&kv.key, &kv.value, kv.mod_revision);
        }
        for prefix in [&b"/tasks/"[..], b"/pending/", b"/services/", b"/svcstate/"] {
            let resp = store.range(RangeRequest::prefix(prefix).at(at)).await?;
            for kv in resp.kvs {
                cache.apply_put(&kv.key, &kv.value, kv.mod_revision);
            }
        }
        Ok(cache)
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8], rev: Revision) -> Touched {
        let mut touched = Touched::default();
        let Ok(key) = std::str::from_utf8(key) else {
            return touched;
        };
        if let Some((cluster, id)) = split(key, "/instances/") {
            match decode::<ContainerInstance>(value) {
                Some((ci, raw)) => {
                    self.clusters.entry(cluster.to_string()).or_default().instances.insert(
                        id.to_string(),
                        Cached {
                            value: ci,
                            raw,
                            mod_revision: rev,
                        },
                    );
                }
                None => tracing::warn!(key, "undecodable instance record ignored"),
            }
            touched.instances = true;
        } else if let Some((cluster, id)) = split(key, "/tasks/") {
            let view = self.clusters.entry(cluster.to_string()).or_default();
            match decode::<Task>(value) {
                Some((t, raw)) if t.last_status != TaskStatus::Stopped => {
                    view.tasks.insert(
                        id.to_string(),
                        Cached {
                            value: t,
                            raw,
                            mod_revision: rev,
                        },
                    );
                }
                Some((t, _)) => {
                    if view.tasks.remove(id).is_some() {
                        self.newly_stopped.push(t);
                    }
                }
                None => tracing::warn!(key, "undecodable task record ignored"),
            }
            touched.other = true;
        } else if let Some((cluster, name)) = split(key, "/services/") {
            match decode::<Service>(value) {
                Some((svc, raw)) => {
                    self.clusters.entry(cluster.to_string()).or_default().services.insert(
                        name.to_string(),
                        Cached {
                            value: svc,
                            raw,
                            mod_revision: rev,
                        },
                    );
                }
                None => tracing::warn!(key, "undecodable service record ignored"),
            }
            touched.other = true;
        } else if let Some((cluster, name)) = split(key, "/svcstate/") {
            self.clusters
                .entry(cluster.to_string())
                .or_default()
                .service_states
                .insert(name.to_string(), (value.to_vec(), rev));
            touched.other = true;
        } else if let Some((cluster, id)) = split(key, "/pending/") {
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
        let (prefix, which) = if key.starts_with("/instances/") {
            ("/instances/", 0)
        } else if key.starts_with("/tasks/") {
            ("/tasks/", 1)
        } else if key.starts_with("/pending/") {
            ("/pending/", 2)
        } else if key.starts_with("/services/") {
            ("/services/", 3)
        } else if key.starts_with("/svcstate/") {
            ("/svcstate/", 4)
        } else {
            return touched;
        };
        touched.other = true;
        let Some((cluster, id)) = split(key, prefix) else {
            return touched;
        };
        if let Some(view) = self.clusters.get_mut(cluster) {
            match which {
                0 => {
                    view.instances.remove(id);
                    touched.instances = true;
                }
                1 => {
                    view.tasks.remove(id);
                }
                2 => {
                    view.pending.remove(id);
                }
                3 => {
                    view.services.remove(id);
                }
                _ => {
                    view.service_states.remove(id);
                }
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
