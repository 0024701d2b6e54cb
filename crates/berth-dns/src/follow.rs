//! The follower: loads the store's tasks, services and instances at one
//! revision, then applies every later change from the watch and republishes
//! the discovery table after each batch (no polling).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};

use berth_model::TaskDefinition;
use berth_model::Timestamp;
use berth_records::SystemClock;
use berth_records::{Cache, keys};
use berth_store::{DynStore, Revision, WatchBatch};
use tokio::sync::watch;

use crate::DnsError;
use crate::table::{ServiceEndpoints, Table, TaskDefInfo, build_cluster};

/// The shared, always-current discovery table. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    table: Arc<RwLock<Arc<Table>>>,
    revision: watch::Sender<i64>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Discovery {
    /// An empty table; [`Discovery::follow`] fills it.
    pub fn new() -> Self {
        Discovery {
            table: Arc::new(RwLock::new(Arc::new(Table::default()))),
            revision: watch::channel(0).0,
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One service's endpoints (`None`: no such ACTIVE or DRAINING service).
    pub fn service(&self, cluster: &str, service: &str) -> Option<ServiceEndpoints> {
        self.table().get(cluster, service).cloned()
    }

    /// The store revision the table reflects; changes after every batch.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    fn publish(&self, table: Table) {
        let rev = table.revision;
        match self.table.write() {
            Ok(mut t) => *t = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
        self.revision.send_replace(rev);
    }

    /// Follows `store` until `shutdown` completes: a consistent load, then
    /// every change from the watch (the records layer's `follow` loop). A
    /// compacted watch reloads.
    pub async fn follow(self, store: DynStore, shutdown: impl Future<Output = ()> + Send) -> Result<(), DnsError> {
        let follower = Follower {
            discovery: self,
            store: store.clone(),
            taskdefs: HashMap::new(),
        };
        berth_records::follow(store, Arc::new(SystemClock), follower, shutdown).await
    }

    async fn rebuild(
        &self,
        store: &DynStore,
        cache: &mut Cache,
        taskdefs: &mut HashMap<String, TaskDefInfo>,
    ) -> Result<(), DnsError> {
        // Nobody here counts failures.
        cache.newly_stopped.clear();
        for view in cache.clusters.values() {
            for t in view.tasks.values() {
                let arn = &t.value.task_definition_arn;
                if t.value.group.is_none() || taskdefs.contains_key(arn) {
                    continue;
                }
                if let Some(info) = read_taskdef(store, arn).await? {
                    taskdefs.insert(arn.clone(), info);
                }
            }
        }
        let mut services = BTreeMap::new();
        for (name, view) in &cache.clusters {
            build_cluster(name, view, taskdefs, &mut services);
        }
        self.publish(Table {
            revision: cache.revision,
            services,
        });
        Ok(())
    }
}

/// Discovery as a [`berth_records::Follower`]: every batch rebuilds the table.
struct Follower {
    discovery: Discovery,
    store: DynStore,
    taskdefs: HashMap<String, TaskDefInfo>,
}

impl berth_records::Follower for Follower {
    type View = Cache;
    type Error = DnsError;
    const NAME: &'static str = "discovery";

    async fn load_view(&mut self) -> Result<(Cache, Revision), DnsError> {
        let cache = Cache::load(self.store.as_ref()).await?;
        let revision = cache.revision;
        Ok((cache, revision))
    }

    fn fold(&mut self, cache: &mut Cache, b: &WatchBatch) -> bool {
        cache.apply(b.revision, &b.events);
        // The revision the table reflects moves with every batch.
        true
    }

    async fn step(&mut self, cache: &mut Cache) -> Result<Option<Timestamp>, DnsError> {
        self.discovery.rebuild(&self.store, cache, &mut self.taskdefs).await?;
        Ok(None)
    }
}

async fn read_taskdef(store: &DynStore, arn: &str) -> Result<Option<TaskDefInfo>, DnsError> {
    let Some((family, rev)) = keys::family_revision(arn) else {
        return Ok(None);
    };
    let Some(kv) = store.get(keys::taskdef(family, rev).as_bytes()).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<TaskDefinition>(&kv.value) {
        Ok(td) => Ok(Some(TaskDefInfo::of(&td))),
        Err(e) => {
            tracing::warn!(arn, error = %e, "undecodable task definition ignored");
            Ok(None)
        }
    }
}
