//! The target controller: keeps load balancer target groups in step with the
//! tasks of services that have `loadBalancers`.
//!
//! - A service task that is RUNNING (and container-healthy when its task
//!   definition has health checks) is registered as `hostIp:hostPort` of the
//!   mapped container port in each of its target groups
//!   (`/lb/targets/{group}/{addr}`). The host IP is the instance attribute
//!   `berth.host-ip`.
//! - The reconciler does not stop such a task itself: it marks it with
//!   `berthDeregistration` (reason, time). This controller then turns its
//!   targets to `draining` (the data plane stops sending new requests and
//!   finishes the ones in flight) and the task's lastStatus to DEACTIVATING.
//!   Once the data plane reports every target `drained` (no request left in
//!   flight), or at the latest when the group's deregistration delay has
//!   passed, it sets the task's desiredStatus to STOPPED and removes the
//!   targets in the same transaction.
//! - Targets of tasks that stopped (or are stopping) on their own go at once.
//! - The data plane's health of a task's targets is copied onto the task as
//!   `berthTargetHealth` (`initial`, `healthy`, `unhealthy`), which the
//!   reconciler's planner treats like a container health check: a task is
//!   not healthy for deployments until its targets are, and one whose target
//!   stays unhealthy past the grace period is replaced.
//!
//! Every write compares the mod revision it was planned from; a lost race is
//! planned again from the watch's next batch.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use berth_model::{HealthStatus, TargetGroup, TargetHealthRecord, TargetRecord, Task, TaskStatus, Timestamp};
use berth_records::{Cache, Env, Stored, TaskDefs, encode, keys};
use berth_store::{
    CmpOp, Compare, DynStore, Event, EventKind, Op, RangeRequest, Revision, StoreError, TxnRequest, WatchBatch,
};
use serde_json::{Value, json};

use crate::ControlError;

/// The task member the reconciler sets instead of stopping an LB-registered task.
pub const DEREGISTRATION: &str = "berthDeregistration";
/// The task member carrying its targets' health.
pub const TARGET_HEALTH: &str = "berthTargetHealth";

/// The `/lb/` records the controller plans from.
#[derive(Debug, Default, Clone)]
pub struct LbView {
    pub groups: BTreeMap<String, TargetGroup>,
    /// `(group, addr)` → record and mod revision.
    pub targets: BTreeMap<(String, String), (TargetRecord, Revision)>,
    pub health: BTreeMap<(String, String), (TargetHealthRecord, Revision)>,
}

fn group_addr<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

impl LbView {
    /// Loads the `/lb/` records at `revision`.
    pub async fn load(store: &DynStore, revision: Revision) -> Result<LbView, StoreError> {
        let mut v = LbView::default();
        let resp = store
            .range(RangeRequest::prefix(keys::LB.as_bytes()).at(revision))
            .await?;
        for kv in resp.kvs {
            v.put(&kv.key, &kv.value, kv.mod_revision);
        }
        Ok(v)
    }

    fn put(&mut self, key: &[u8], value: &[u8], rev: Revision) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        if let Some(name) = key.strip_prefix(keys::TARGETGROUPS) {
            if let Ok(g) = serde_json::from_slice::<TargetGroup>(value) {
                self.groups.insert(name.to_string(), g);
            }
        } else if let Some((g, a)) = group_addr(key, keys::TARGETS) {
            if let Ok(t) = serde_json::from_slice::<TargetRecord>(value) {
                self.targets.insert((g.to_string(), a.to_string()), (t, rev));
            }
        } else if let Some((g, a)) = group_addr(key, keys::TARGET_HEALTH) {
            if let Ok(h) = serde_json::from_slice::<TargetHealthRecord>(value) {
                self.health.insert((g.to_string(), a.to_string()), (h, rev));
            }
        } else {
            return false;
        }
        true
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        if let Some(name) = key.strip_prefix(keys::TARGETGROUPS) {
            self.groups.remove(name);
        } else if let Some((g, a)) = group_addr(key, keys::TARGETS) {
            self.targets.remove(&(g.to_string(), a.to_string()));
        } else if let Some((g, a)) = group_addr(key, keys::TARGET_HEALTH) {
            self.health.remove(&(g.to_string(), a.to_string()));
        } else {
            return false;
        }
        true
    }

    /// Applies a batch; whether it touched `/lb/` records.
    pub fn apply(&mut self, events: &[Event]) -> bool {
        let mut touched = false;
        for e in events {
            touched |= match e.kind {
                EventKind::Put => self.put(&e.kv.key, &e.kv.value, e.kv.mod_revision),
                EventKind::Delete => self.delete(&e.kv.key),
            };
        }
        touched
    }
}

/// `hostIp:hostPort` of each target group a task belongs in: `(group, addr,
/// deregistration delay)`. Groups that do not exist and ports not bound yet
/// are left out.
fn task_targets(t: &Task, svc: &berth_model::Service, host_ip: &str, lb: &LbView) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for l in &svc.load_balancers {
        let Some(arn) = &l.target_group_arn else { continue };
        let group = berth_model::target_group_name(arn);
        let Some(g) = lb.groups.get(group) else { continue };
        let port = t
            .containers
            .iter()
            .filter(|c| c.name == l.container_name)
            .flat_map(|c| c.network_bindings.iter())
            .find(|b| b.container_port == l.container_port)
            .map(|b| b.host_port);
        if let Some(p) = port.filter(|p| *p != 0) {
            out.push((
                group.to_string(),
                format!("{host_ip}:{p}"),
                f64::from(g.deregistration_delay_seconds),
            ));
        }
    }
    out
}

/// The target controller (see the module docs).
pub struct TargetController {
    store: DynStore,
    env: Env,
    taskdefs: TaskDefs,
}

impl TargetController {
    pub fn new(store: DynStore) -> Self {
        TargetController {
            store,
            env: Env::system(),
            taskdefs: TaskDefs::default(),
        }
    }

    /// Stamps records with `env`'s clock.
    pub fn with_env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    async fn has_health_check(&mut self, arn: &str) -> Result<bool, ControlError> {
        Ok(self
            .taskdefs
            .get(&self.store, arn)
            .await?
            .is_some_and(|td| td.container_definitions.iter().any(|c| c.health_check.is_some())))
    }

    /// One pass; returns the earliest drain deadline to wake up for.
    #[tracing::instrument(name = "targets_pass", skip_all)]
    pub async fn pass(&mut self, cache: &Cache, lb: &LbView) -> Result<Option<Timestamp>, ControlError> {
        let now = self.env.now();
        let mut wake: Option<Timestamp> = None;
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for (cname, view) in &cache.clusters {
            for t in view.tasks.values() {
                let Some(sname) = t.value.group.as_deref().and_then(|g| g.strip_prefix("service:")) else {
                    continue;
                };
                let Some(svc) = view.services.get(sname) else { continue };
                if svc.value.load_balancers.is_empty() {
                    continue;
                }
                if t.value.desired_status == TaskStatus::Stopped {
                    continue;
                }
                let host_ip = t
                    .value
                    .container_instance
                    .as_deref()
                    .and_then(|ci| view.instances.get(ci))
                    .and_then(|ci| ci.value.attributes.get("berth.host-ip").cloned())
                    .unwrap_or_else(|| "127.0.0.1".into());
                let addrs = task_targets(&t.value, &svc.value, &host_ip, lb);
                if let Some(m) = t.raw.get(DEREGISTRATION) {
                    let at = m.get("at").and_then(Value::as_f64).unwrap_or(now);
                    let reason = m.get("reason").and_then(Value::as_str).unwrap_or("Deregistered");
                    let mut deadline = at;
                    let mut registered = Vec::new();
                    // Whether the data plane has finished every request on
                    // every one of the task's targets.
                    let mut drained = true;
                    for (g, a, delay) in &addrs {
                        let k = (g.clone(), a.clone());
                        if let Some((rec, rev)) = lb.targets.get(&k) {
                            wanted.insert(k.clone());
                            let until = at + delay;
                            deadline = deadline.max(until);
                            registered.push((k.clone(), *rev));
                            if rec.state != "draining" {
                                drained = false;
                                let mut r = rec.clone();
                                r.state = "draining".into();
                                r.drain_until = Some(until);
                                self.put_target(g, a, &r, *rev).await?;
                            } else if lb.health.get(&k).is_none_or(|(h, _)| h.state != "drained") {
                                drained = false;
                            }
                        }
                    }
                    if registered.is_empty() || drained || now >= deadline {
                        self.stop_task(cname, t, reason, "ServiceSchedulerInitiated", &registered, lb)
                            .await?;
                    } else {
                        if t.value.last_status == TaskStatus::Running {
                            // ECS shows a task leaving its target groups as DEACTIVATING.
                            self.mark_deactivating(cname, t).await?;
                        }
                        wake = Some(wake.map_or(deadline, |w: f64| w.min(deadline)));
                    }
                    continue;
                }
                let container_ok = match t.value.health_status {
                    HealthStatus::Healthy => true,
                    HealthStatus::Unhealthy => false,
                    HealthStatus::Unknown => !self.has_health_check(&t.value.task_definition_arn).await?,
                };
                if t.value.last_status != TaskStatus::Running || !container_ok {
                    continue;
                }
                let mut states = Vec::new();
                for (g, a, _) in &addrs {
                    let k = (g.clone(), a.clone());
                    wanted.insert(k.clone());
                    match lb.targets.get(&k) {
                        Some((rec, _)) if rec.task_arn == t.value.task_arn => {}
                        Some((_, rev)) => {
                            // A stale record of an earlier task on the same port.
                            let rec = new_target(a, t, cname, sname, now);
                            self.put_target(g, a, &rec, *rev).await?;
                        }
                        None => {
                            let rec = new_target(a, t, cname, sname, now);
                            self.put_target(g, a, &rec, 0).await?;
                        }
                    }
                    states.push(lb.health.get(&k).map_or("initial", |(h, _)| h.state.as_str()));
                }
                if addrs.is_empty() {
                    continue;
                }
                let agg = if states.contains(&"unhealthy") {
                    "unhealthy"
                } else if states.iter().all(|s| matches!(*s, "healthy" | "ejected")) {
                    "healthy"
                } else {
                    "initial"
                };
                if t.raw.get(TARGET_HEALTH).and_then(Value::as_str) != Some(agg) {
                    let mut raw = t.raw.clone();
                    raw.insert(TARGET_HEALTH.into(), json!(agg));
                    let tkey = keys::task(cname, &t.value.id);
                    let txn = TxnRequest::new()
                        .when(Compare::mod_revision(&tkey, CmpOp::Equal, t.mod_revision))
                        .then(Op::put(&tkey, encode(&t.value, &raw)?));
                    self.store.txn(txn).await?;
                }
            }
        }
        for ((g, a), (_, rev)) in &lb.targets {
            if !wanted.contains(&(g.clone(), a.clone())) {
                let key = keys::target(g, a);
                let txn = TxnRequest::new()
                    .when(Compare::mod_revision(&key, CmpOp::Equal, *rev))
                    .then(Op::delete(&key))
                    .then(Op::delete(keys::target_health(g, a)));
                self.store.txn(txn).await?;
            }
        }
        Ok(wake)
    }

    async fn put_target(&self, group: &str, addr: &str, rec: &TargetRecord, rev: Revision) -> Result<(), ControlError> {
        let key = keys::target(group, addr);
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(&key, CmpOp::Equal, rev))
            .then(Op::put(&key, berth_records::to_json(rec)?));
        if rev == 0 || rec.state == "registered" {
            // A fresh registration starts from `initial`, not an old health record.
            txn = txn.then(Op::delete(keys::target_health(group, addr)));
        }
        self.store.txn(txn).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(cluster = %cluster, task = %t.value.id))]
    async fn mark_deactivating(&self, cluster: &str, t: &Stored<Task>) -> Result<(), ControlError> {
        let mut task = t.value.clone();
        task.last_status = TaskStatus::Deactivating;
        task.version += 1;
        self.store
            .txn(berth_records::replace(&keys::task(cluster, &task.id), t, &task)?)
            .await?;
        Ok(())
    }

    /// Stops a drained task and removes its targets, in one transaction.
    #[tracing::instrument(skip_all, fields(cluster = %cluster, task = %t.value.id))]
    async fn stop_task(
        &self,
        cluster: &str,
        t: &Stored<Task>,
        reason: &str,
        code: &str,
        targets: &[((String, String), Revision)],
        _lb: &LbView,
    ) -> Result<(), ControlError> {
        let mut task = t.value.clone();
        let at = self.env.now();
        task.desired_status = TaskStatus::Stopped;
        task.stopping_at.get_or_insert(at);
        task.stop_code.get_or_insert_with(|| code.to_string());
        task.stopped_reason.get_or_insert_with(|| reason.to_string());
        task.version += 1;
        let mut txn = berth_records::replace(&keys::task(cluster, &task.id), t, &task)?;
        for ((g, a), rev) in targets {
            let key = keys::target(g, a);
            txn = txn
                .when(Compare::mod_revision(&key, CmpOp::Equal, *rev))
                .then(Op::delete(&key))
                .then(Op::delete(keys::target_health(g, a)));
        }
        self.store.txn(txn).await?;
        Ok(())
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControlError> {
        berth_records::follow(self.store.clone(), self.env.clock.clone(), self, shutdown).await
    }
}

impl berth_records::Follower for TargetController {
    type View = (Cache, LbView);
    type Error = ControlError;
    const NAME: &'static str = "target controller";

    async fn load_view(&mut self) -> Result<((Cache, LbView), Revision), ControlError> {
        let (cache, revision) = crate::services::load_cache(&self.store).await?;
        let lb = LbView::load(&self.store, revision).await?;
        Ok(((cache, lb), revision))
    }

    fn fold(&mut self, (cache, lb): &mut (Cache, LbView), b: &WatchBatch) -> bool {
        let t = cache.apply(b.revision, &b.events);
        let l = lb.apply(&b.events);
        cache.newly_stopped.clear();
        t.instances || t.other || l
    }

    async fn step(&mut self, (cache, lb): &mut (Cache, LbView)) -> Result<Option<Timestamp>, ControlError> {
        self.pass(cache, lb).await
    }
}

fn new_target(addr: &str, t: &Stored<Task>, cluster: &str, service: &str, now: Timestamp) -> TargetRecord {
    TargetRecord {
        id: addr.to_string(),
        task_arn: t.value.task_arn.clone(),
        cluster: cluster.to_string(),
        service: service.to_string(),
        state: "registered".into(),
        registered_at: now,
        drain_until: None,
    }
}

/// Folds a task's load balancer health into the planner's view: a task is
/// healthy for deployments only once its targets pass, and a target that
/// fails its checks makes the task unhealthy (replaced after the grace
/// period, counted by the circuit breaker).
pub fn apply_lb_health(v: &mut crate::reconcile::TaskView, raw: &serde_json::Map<String, Value>) {
    match raw.get(TARGET_HEALTH).and_then(Value::as_str) {
        Some("healthy") => {}
        Some("unhealthy") => {
            v.has_health_check = true;
            v.health = HealthStatus::Unhealthy;
        }
        _ => {
            v.has_health_check = true;
            if v.health == HealthStatus::Healthy {
                v.health = HealthStatus::Unknown;
            }
        }
    }
}
