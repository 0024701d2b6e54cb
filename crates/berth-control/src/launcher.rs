//! The task launcher: places every task waiting in `/pending/` with the pure
//! engine (`berth-sched`) and commits the placements optimistically.
//!
//! It plans from a [`Cache`] kept current by the store's watch, wakes only
//! when a task is queued or an instance changes (new capacity, released
//! resources, status), and commits one transaction per instance that
//! compares the instance's and every task's `mod_revision`. Whoever else
//! writes the instance meanwhile (another launcher, a `StartTask` caller)
//! makes that commit fail; the launcher then plans again from the fresher
//! view. Resources are never over-committed because the instance record's
//! `remaining` is only ever changed by such compare-and-swap commits.
//!
//! Tasks that cannot be placed stay queued with their reasons written to
//! `pendingReasons` (only when the reasons change, so the launcher does not
//! wake itself).

use std::collections::BTreeMap;
use std::future::Future;

use berth_model::{Container, ContainerInstance, NetworkBinding, Task, TaskDefinition, TaskStatus};
use berth_records::{Cache, ClusterView, Env, Stored, TaskDefs, encode, keys};
use berth_sched::{Guarantee, Instance, PlaceOptions, Placement, Scalars, Snapshot, Strategy, TaskRequest};
use berth_store::{CmpOp, Compare, DynStore, Op, RangeRequest, StoreError, TxnRequest};

use crate::ControlError;

/// Launcher settings.
#[derive(Debug, Clone, Default)]
pub struct LauncherConfig {
    /// Seed for the engine's random choices (mixed with the round number).
    pub seed: u64,
}

/// What one planning round did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub placed: usize,
    pub unplaced: usize,
    /// Instance commits lost to a concurrent writer.
    pub conflicts: usize,
    /// Running tasks stopped to make room for critical tasks.
    pub preempted: usize,
}

fn scalars(r: &berth_model::Resources) -> Scalars {
    Scalars {
        cpu: r.cpu,
        memory_mib: r.memory_mib,
        network_mbps: r.network_mbps,
        gpus: r.gpus,
    }
}

/// The security groups of a task's `networkConfiguration.awsvpcConfiguration`.
fn security_groups(t: &Task) -> Vec<String> {
    t.network_configuration
        .as_ref()
        .map(berth_model::NetworkConfiguration::security_groups)
        .unwrap_or_default()
}

/// The engine's view of one instance: what its record says is left (the
/// record is the one every placement compares and updates) plus the task
/// groups running on it, for spread and `distinctInstance`.
fn sched_instance(ci: &ContainerInstance, tasks: &[&Stored<Task>], now: f64) -> Instance {
    let mut inst = Instance::from_record(ci, tasks.iter().map(|t| &t.value));
    crate::preemption::refine(&mut inst, tasks, now);
    inst
}

/// The engine's snapshot of a cluster, with the instance records in the
/// snapshot's order (placements name instances by index).
pub(crate) fn snapshot_of(view: &ClusterView) -> (Snapshot, Vec<&Stored<ContainerInstance>>) {
    let mut by_instance: BTreeMap<&str, Vec<&Stored<Task>>> = BTreeMap::new();
    for t in view.tasks.values() {
        if let Some(ci) = t.value.container_instance.as_deref() {
            by_instance.entry(ci).or_default().push(t);
        }
    }
    let now = berth_records::now();
    let instances: Vec<&Stored<ContainerInstance>> = view.instances.values().collect();
    let hosts = instances
        .iter()
        .map(|ci| {
            sched_instance(
                &ci.value,
                by_instance.get(ci.value.id.as_str()).map_or(&[][..], |v| v),
                now,
            )
        })
        .collect();
    (Snapshot::new(hosts), instances)
}

/// What each task group holds on the cluster (placed tasks not stopped),
/// for fair share against capacity guarantees.
fn usage_of(view: &ClusterView) -> BTreeMap<String, Scalars> {
    let mut out: BTreeMap<String, Scalars> = BTreeMap::new();
    for t in view.tasks.values() {
        let t = &t.value;
        if t.container_instance.is_none() || t.last_status == TaskStatus::Stopped {
            continue;
        }
        let u = out.entry(t.group.clone().unwrap_or_default()).or_default();
        let d = scalars(&t.demand);
        u.cpu += d.cpu;
        u.memory_mib += d.memory_mib;
        u.network_mbps += d.network_mbps;
        u.gpus += d.gpus;
    }
    out
}

/// The launcher.
pub struct Launcher {
    store: DynStore,
    env: Env,
    config: LauncherConfig,
    taskdefs: TaskDefs,
    rounds: u64,
}

impl Launcher {
    pub fn new(store: DynStore, config: LauncherConfig) -> Self {
        Launcher {
            store,
            env: Env::system(),
            config,
            taskdefs: TaskDefs::default(),
            rounds: 0,
        }
    }

    /// Runs its watch loop on `env`'s clock.
    pub fn with_env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    async fn taskdef(&mut self, arn: &str) -> Result<Option<TaskDefinition>, ControlError> {
        Ok(self.taskdefs.get(&self.store, arn).await?)
    }

    /// The engine request for a queued task, or why it can never be placed.
    async fn request(&mut self, t: &Stored<Task>) -> Result<Result<TaskRequest, String>, ControlError> {
        let Some(td) = self.taskdef(&t.value.task_definition_arn).await? else {
            return Ok(Err("MISSING: task definition not found".into()));
        };
        let group = t.value.group.clone().unwrap_or_default();
        let sgs = security_groups(&t.value);
        let mut req = match TaskRequest::from_task_definition(&t.value.id, &td, group.clone(), &sgs) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("INVALID: {e}"))),
        };
        // The task's own demand (RunTask overrides applied) wins over the definition's.
        req.demand = scalars(&t.value.demand);
        req.tier = t.value.tier;
        req.daemon = t
            .raw
            .get(crate::services::DAEMON_MEMBER)
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        for c in &t.value.placement_constraints {
            match berth_sched::Constraint::from_ecs(&c.kind, c.expression.as_deref()) {
                Ok(c) => req.constraints.push(c),
                Err(e) => return Ok(Err(format!("INVALID: {e}"))),
            }
        }
        let strategy = &t.value.placement_strategy;
        req = if strategy.is_empty() {
            // ECS defaults: services spread over zones then instances; one-off tasks go anywhere.
            req.strategy = if group.starts_with("service:") {
                Strategy::ecs_service_default()
            } else {
                vec![Strategy::Random]
            };
            req
        } else {
            match req.with_ecs_strategy(strategy) {
                Ok(r) => r,
                Err(e) => return Ok(Err(format!("INVALID: {e}"))),
            }
        };
        Ok(Ok(req))
    }

    /// The capacity guarantees a cluster's `berth:guarantee:GROUP` tags set
    /// (checked when they were written; unreadable ones are ignored).
    async fn guarantees(&self, cluster: &str) -> Result<Vec<Guarantee>, ControlError> {
        let Some(kv) = self
            .store
            .get(keys::tags(&format!("cluster/{cluster}")).as_bytes())
            .await?
        else {
            return Ok(Vec::new());
        };
        let tags: Vec<berth_model::Tag> = serde_json::from_slice(&kv.value).unwrap_or_default();
        let gs = berth_model::guarantees_from_tags("tags", &tags).unwrap_or_default();
        Ok(gs
            .into_iter()
            .map(|g| Guarantee {
                group: g.group,
                tier: g.tier,
                capacity: Scalars::new(g.cpu, g.memory_mib),
            })
            .collect())
    }

    /// Plans and commits every queued task of every cluster once.
    pub async fn round(&mut self, cache: &Cache) -> Result<RoundReport, ControlError> {
        self.rounds += 1;
        let mut report = RoundReport::default();
        for (cluster, view) in &cache.clusters {
            if view.pending.is_empty() {
                continue;
            }
            let r = self.round_cluster(cluster, view).await?;
            report.placed += r.placed;
            report.unplaced += r.unplaced;
            report.conflicts += r.conflicts;
            report.preempted += r.preempted;
        }
        Ok(report)
    }

    #[tracing::instrument(name = "launcher_round", skip_all, fields(cluster = %cluster))]
    async fn round_cluster(&mut self, cluster: &str, view: &ClusterView) -> Result<RoundReport, ControlError> {
        let mut report = RoundReport::default();
        let mut queued: Vec<&Stored<Task>> = Vec::new();
        let mut requests = Vec::new();
        for id in &view.pending {
            let Some(t) = view.tasks.get(id) else { continue };
            if t.value.desired_status == TaskStatus::Stopped || t.value.container_instance.is_some() {
                continue;
            }
            // A task whose placement members cannot be read is not placed
            // without them: it says why instead.
            let request = match view.defects.get(id) {
                Some(defect) => Err(defect.clone()),
                None => self.request(t).await?,
            };
            match request {
                Ok(req) => {
                    queued.push(t);
                    requests.push(req);
                }
                Err(reason) => {
                    self.note_reasons(cluster, t, vec![reason]).await?;
                    report.unplaced += 1;
                }
            }
        }
        if requests.is_empty() {
            return Ok(report);
        }
        let (mut snapshot, instances) = snapshot_of(view);
        let guarantees = self.guarantees(cluster).await?;
        let (usage, min_running) = if guarantees.is_empty() {
            (BTreeMap::new(), BTreeMap::new())
        } else {
            (usage_of(view), crate::preemption::min_running(view))
        };
        let plan = snapshot.place(
            &requests,
            &PlaceOptions {
                seed: self.config.seed ^ self.rounds,
                guarantees,
                usage,
                min_running,
            },
        );
        let now = self.env.now();
        for e in &plan.evictions {
            let Some(victim) = view.tasks.get(&e.task_id) else {
                continue;
            };
            let group = queued[e.for_task_index].value.group.clone().unwrap_or_default();
            let why = crate::preemption::reason(e, &group);
            tracing::info!(task = %e.task_id, for_task = %e.for_task, instance = %e.instance_id, "{why}");
            crate::preemption::stop(&self.store, cluster, victim, &why, now).await?;
            report.preempted += 1;
        }
        let mut per_instance: BTreeMap<usize, Vec<&Placement>> = BTreeMap::new();
        for p in &plan.placements {
            per_instance.entry(p.instance_index).or_default().push(p);
        }
        for (idx, placements) in per_instance {
            let ci = instances[idx];
            if self.commit_instance(cluster, ci, &queued, &placements).await? {
                report.placed += placements.len();
            } else {
                report.conflicts += 1;
            }
        }
        for u in &plan.unplaced {
            let t = queued[u.task_index];
            let reasons = if u.reasons.is_empty() {
                vec![u.summary()]
            } else {
                u.reason_lines()
            };
            self.note_reasons(cluster, t, reasons).await?;
            report.unplaced += 1;
        }
        Ok(report)
    }

    /// One transaction: the instance loses the tasks' resources, the tasks
    /// get the instance and their host ports, the queue entries go.
    #[tracing::instrument(skip_all, fields(cluster = %cluster, instance = %ci.value.id))]
    async fn commit_instance(
        &mut self,
        cluster: &str,
        ci: &Stored<ContainerInstance>,
        queued: &[&Stored<Task>],
        placements: &[&Placement],
    ) -> Result<bool, ControlError> {
        let ikey = keys::instance(cluster, &ci.value.id);
        let mut instance = ci.value.clone();
        let mut txn = TxnRequest::new().when(Compare::mod_revision(&ikey, CmpOp::Equal, ci.mod_revision));
        for p in placements {
            let cached = queued[p.task_index];
            let old = &cached.value;
            let Some(td) = self.taskdef(&old.task_definition_arn).await? else {
                continue;
            };
            let mut t = old.clone();
            let mut dynamic = p.dynamic_ports.iter();
            let mut containers = Vec::with_capacity(td.container_definitions.len());
            for cd in &td.container_definitions {
                let mut bindings = Vec::new();
                for pm in &cd.port_mappings {
                    let host = match pm.host_port.filter(|h| *h != 0) {
                        Some(h) => Some(h),
                        None if td.network_mode == berth_model::NetworkMode::Bridge => {
                            dynamic.next().map(|(_, port)| *port)
                        }
                        None if td.network_mode == berth_model::NetworkMode::Host => Some(pm.container_port),
                        None => None,
                    };
                    if let Some(host_port) = host {
                        t.demand.ports.insert(pm.protocol, host_port);
                        bindings.push(NetworkBinding {
                            bind_ip: "0.0.0.0".into(),
                            container_port: pm.container_port,
                            host_port,
                            protocol: pm.protocol,
                        });
                    }
                }
                let existing = old.containers.iter().find(|c| c.name == cd.name);
                containers.push(Container {
                    name: cd.name.clone(),
                    image: cd.image.clone(),
                    last_status: TaskStatus::Pending,
                    exit_code: None,
                    reason: None,
                    runtime_id: existing.and_then(|c| c.runtime_id.clone()),
                    network_bindings: bindings,
                    health_status: Default::default(),
                });
            }
            if td.network_mode == berth_model::NetworkMode::Awsvpc {
                // One IP on an ENI bound to the task's security groups.
                t.demand.enis = vec![berth_model::Eni {
                    security_groups: security_groups(&cached.value).into_iter().collect(),
                    ips: 1,
                }];
            }
            if instance.remaining.checked_sub_assign(&t.demand).is_err() {
                // The engine planned from this very record; a shortfall means
                // the view is stale. Skip the task; the next round replans it.
                continue;
            }
            instance.pending_tasks_count += 1;
            t.containers = containers;
            t.container_instance = Some(ci.value.id.clone());
            t.last_status = TaskStatus::Pending;
            t.pending_reasons.clear();
            t.version += 1;
            let tkey = keys::task(cluster, &t.id);
            txn = txn
                .when(Compare::mod_revision(&tkey, CmpOp::Equal, cached.mod_revision))
                .then(Op::put(&tkey, encode(&t, &cached.raw)?))
                .then(Op::delete(keys::pending(cluster, &t.id)));
            for op in keys::task_index_ops(Some(old), Some(&t)) {
                txn = txn.then(op);
            }
        }
        txn = txn.then(Op::put(&ikey, encode(&instance, &ci.raw)?));
        Ok(self.store.txn(txn).await?.succeeded)
    }

    #[tracing::instrument(skip_all, fields(cluster = %cluster, task = %t.value.id))]
    async fn note_reasons(&self, cluster: &str, t: &Stored<Task>, reasons: Vec<String>) -> Result<(), ControlError> {
        if t.value.pending_reasons == reasons {
            return Ok(());
        }
        let mut task = t.value.clone();
        task.pending_reasons = reasons;
        let key = keys::task(cluster, &task.id);
        // A lost race means the task changed; the next round sees it.
        self.store
            .txn(
                TxnRequest::new()
                    .when(Compare::mod_revision(&key, CmpOp::Equal, t.mod_revision))
                    .then(Op::put(&key, encode(&task, &t.raw)?)),
            )
            .await?;
        Ok(())
    }

    /// Runs until `shutdown` completes: load, plan, then plan again whenever
    /// a task is queued or an instance changes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControlError> {
        berth_records::follow(self.store.clone(), self.env.clock.clone(), self, shutdown).await
    }
}

impl berth_records::Follower for Launcher {
    type View = Cache;
    type Error = ControlError;
    const NAME: &'static str = "launcher";

    async fn load_view(&mut self) -> Result<(Cache, berth_store::Revision), ControlError> {
        crate::services::load_cache(&self.store).await
    }

    fn fold(&mut self, cache: &mut Cache, b: &berth_store::WatchBatch) -> bool {
        let t = cache.apply(b.revision, &b.events);
        // The launcher does not count failures.
        cache.newly_stopped.clear();
        t.pending || t.instances
    }

    async fn step(&mut self, cache: &mut Cache) -> Result<Option<berth_model::Timestamp>, ControlError> {
        let r = self.round(cache).await?;
        if r.placed + r.unplaced + r.conflicts > 0 {
            tracing::debug!(
                placed = r.placed,
                unplaced = r.unplaced,
                conflicts = r.conflicts,
                "launcher round"
            );
        }
        Ok(None)
    }
}

/// Counts the tasks waiting for placement in a cluster (for tests and status).
pub async fn pending_count(store: &DynStore, cluster: &str) -> Result<u64, StoreError> {
    Ok(store
        .range(RangeRequest::prefix(keys::pending_in(cluster).as_bytes()).count_only())
        .await?
        .count)
}
