//! The service reconciler's shell: feeds [`reconcile::plan`] from the
//! watch-fed [`Cache`] and commits its decisions.
//!
//! Starting tasks and updating the service record happen in one
//! transaction that compares the service's `mod_revision`: a pass planned
//! from a view that does not yet include the previous pass's own writes
//! fails that compare instead of starting tasks twice. Stops are separate
//! compare-and-swap writes per task. Failures (tasks of a service that stop
//! on their own) are taken from the cache's stop transitions and kept until
//! a commit records them.

use std::collections::BTreeMap;
use std::future::Future;

use berth_model::{InstanceStatus, NetworkConfiguration, Service, Task, TaskDefinition, TaskStatus, Timestamp};
use berth_records::{Cache, Env, Stored, TaskDefs, encode, keys};
use berth_store::{CmpOp, Compare, DynStore, Op, TxnRequest};
use serde_json::Value;

use crate::ControlError;
use crate::reconcile::{self, PassInput, ServiceState, TaskView};

mod daemon_pass;
pub use daemon_pass::{DAEMON_INSTANCE, DAEMON_MEMBER};

/// The service reconciler.
pub struct Reconciler {
    store: DynStore,
    env: Env,
    taskdefs: TaskDefs,
    /// Failures not yet recorded, per `cluster/service`: (deployment, reason).
    failures: BTreeMap<String, Vec<(String, String)>>,
    events: u64,
}

impl Reconciler {
    pub fn new(store: DynStore) -> Self {
        Reconciler {
            store,
            env: Env::system(),
            taskdefs: TaskDefs::default(),
            failures: BTreeMap::new(),
            events: 0,
        }
    }

    /// Stamps records with `env`'s clock and names tasks with its ids.
    pub fn with_env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    async fn taskdef(&mut self, arn: &str) -> Result<Option<TaskDefinition>, ControlError> {
        Ok(self.taskdefs.get(&self.store, arn).await?)
    }

    /// Turns the cache's stop transitions into failures of their services.
    fn collect_failures(&mut self, cache: &mut Cache) {
        for t in cache.newly_stopped.drain(..) {
            let Some(service) = t.group.as_deref().and_then(|g| g.strip_prefix("service:")) else {
                continue;
            };
            let failed = matches!(
                t.stop_code.as_deref(),
                Some("EssentialContainerExited") | Some("TaskFailedToStart")
            );
            if !failed {
                continue;
            }
            let reason = t
                .stopped_reason
                .clone()
                .or_else(|| t.stop_code.clone())
                .unwrap_or_else(|| "stopped".into());
            self.failures
                .entry(format!("{}/{service}", t.cluster))
                .or_default()
                .push((t.started_by.clone().unwrap_or_default(), reason));
        }
    }

    /// One pass over every service; returns the earliest time a service
    /// asked to be looked at again.
    pub async fn pass(&mut self, cache: &mut Cache) -> Result<Option<Timestamp>, ControlError> {
        self.collect_failures(cache);
        let mut wake: Option<Timestamp> = None;
        let clusters: Vec<String> = cache.clusters.keys().cloned().collect();
        for cluster in clusters {
            let Some(view) = cache.clusters.get(&cluster) else {
                continue;
            };
            if view.services.is_empty() {
                continue;
            }
            // Per-instance load and draining, for scale-in and replacement.
            let mut load: BTreeMap<&str, u32> = BTreeMap::new();
            for t in view.tasks.values() {
                if let Some(ci) = t.value.container_instance.as_deref() {
                    *load.entry(ci).or_insert(0) += 1;
                }
            }
            let draining: Vec<&str> = view
                .instances
                .values()
                .filter(|i| i.value.status != InstanceStatus::Active)
                .map(|i| i.value.id.as_str())
                .collect();
            let mut by_service: BTreeMap<&str, Vec<&Stored<Task>>> = BTreeMap::new();
            for t in view.tasks.values() {
                if let Some(s) = t.value.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
                    by_service.entry(s).or_default().push(t);
                }
            }
            let mut work = Vec::new();
            for (name, svc) in &view.services {
                if svc.value.status == berth_model::ServiceStatus::Inactive {
                    continue;
                }
                let state = view
                    .service_states
                    .get(name)
                    .and_then(|(b, _)| serde_json::from_slice::<ServiceState>(b).ok())
                    .unwrap_or_default();
                let state_rev = view.service_states.get(name).map_or(0, |(_, r)| *r);
                let tasks: Vec<Stored<Task>> = by_service
                    .get(name.as_str())
                    .map(|v| v.iter().map(|t| (*t).clone()).collect())
                    .unwrap_or_default();
                work.push((name.clone(), svc.clone(), state, state_rev, tasks));
            }
            let load: BTreeMap<String, u32> = load.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let draining: Vec<String> = draining.into_iter().map(str::to_string).collect();
            let instances = view.instances.clone();
            for (name, svc, state, state_rev, tasks) in work {
                if daemon_pass::is_daemon(&svc) {
                    self.reconcile_daemon(&cluster, &name, &svc, &instances, &tasks).await?;
                    continue;
                }
                let at = self
                    .reconcile_one(&cluster, &name, &svc, &state, state_rev, &tasks, &load, &draining)
                    .await?;
                if let Some(at) = at {
                    wake = Some(wake.map_or(at, |w: f64| w.min(at)));
                }
            }
        }
        Ok(wake)
    }

    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "reconcile", skip_all, fields(cluster = %cluster, service = %name))]
    async fn reconcile_one(
        &mut self,
        cluster: &str,
        name: &str,
        svc: &Stored<Service>,
        state: &ServiceState,
        state_rev: i64,
        tasks: &[Stored<Task>],
        load: &BTreeMap<String, u32>,
        draining: &[String],
    ) -> Result<Option<Timestamp>, ControlError> {
        let now = self.env.now();
        let mut views = Vec::with_capacity(tasks.len());
        for t in tasks {
            let has_health_check = self
                .taskdef(&t.value.task_definition_arn)
                .await?
                .is_some_and(|td| td.container_definitions.iter().any(|c| c.health_check.is_some()));
            let mut v = task_view(t, has_health_check, load, draining, now);
            if !svc.value.load_balancers.is_empty() {
                crate::targets::apply_lb_health(&mut v, &t.raw);
            }
            views.push(v);
        }
        let key = format!("{cluster}/{name}");
        let failures = self.failures.get(&key).cloned().unwrap_or_default();
        let base = self.events;
        let ids = move |n: usize| format!("{:016x}{:08x}", base, n);
        let plan = reconcile::plan(&PassInput {
            service: &svc.value,
            state,
            tasks: &views,
            new_failures: &failures,
            now,
            event_id: &ids,
        });
        self.events += 1;
        let changed = plan.start.is_some()
            || !plan.stop.is_empty()
            || plan.state != *state
            || service_differs(&plan.service, &svc.value);
        if !changed {
            self.failures.remove(&key);
            return Ok(plan.wake_at);
        }
        let skey = keys::service(cluster, name);
        let stkey = keys::service_state(cluster, name);
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(&skey, CmpOp::Equal, svc.mod_revision))
            .when(Compare::mod_revision(&stkey, CmpOp::Equal, state_rev))
            .then(Op::put(&skey, encode(&plan.service, &svc.raw)?))
            .then(Op::put(&stkey, berth_records::to_json(&plan.state)?));
        if plan.inactive {
            txn = txn.then(Op::delete(keys::service_index(cluster, name)));
        }
        if let Some(start) = &plan.start {
            let Some(td) = self.taskdef(&start.task_definition).await? else {
                tracing::warn!(
                    service = name,
                    td = start.task_definition,
                    "task definition missing; cannot start tasks"
                );
                return Ok(None);
            };
            let tier = svc
                .raw
                .get(keys::SERVICE_TIER)
                .and_then(Value::as_u64)
                .and_then(|t| u8::try_from(t).ok())
                .filter(|t| *t <= 1)
                .unwrap_or(berth_model::DEFAULT_TIER);
            // A service's tasks carry its placement and network configuration.
            let network = svc
                .raw
                .get("networkConfiguration")
                .and_then(|v| serde_json::from_value::<NetworkConfiguration>(v.clone()).ok());
            for _ in 0..start.count {
                let mut t = self.new_task(cluster, name, &start.deployment, &start.task_definition, &td, now);
                t.tier = tier;
                t.placement_strategy.clone_from(&svc.value.placement_strategy);
                t.placement_constraints.clone_from(&svc.value.placement_constraints);
                t.network_configuration.clone_from(&network);
                let tkey = keys::task(cluster, &t.id);
                txn = txn
                    .when(Compare::missing(&tkey))
                    .then(Op::put(&tkey, berth_records::to_json(&t)?))
                    .then(Op::put(keys::pending(cluster, &t.id), tkey.as_bytes()));
                for op in keys::task_index_ops(None, Some(&t)) {
                    txn = txn.then(op);
                }
            }
        }
        if !self.store.txn(txn).await?.succeeded {
            // Planned from a stale view; the watch brings the fresh one.
            return Ok(None);
        }
        self.failures.remove(&key);
        for (id, reason) in &plan.stop {
            if let Some(t) = tasks.iter().find(|t| &t.value.id == id) {
                if !svc.value.load_balancers.is_empty()
                    && (t.value.last_status == TaskStatus::Running
                        || t.raw.contains_key(crate::targets::DEREGISTRATION))
                {
                    // Deregister first: the target controller drains, then stops it.
                    self.mark_deregistration(cluster, t, reason).await?;
                } else {
                    self.stop_task(cluster, t, reason).await?;
                }
            }
        }
        Ok(plan.wake_at)
    }

    /// Asks the target controller to deregister a task and stop it once its
    /// targets have drained.
    #[tracing::instrument(skip_all, fields(cluster = %cluster, task = %t.value.id))]
    async fn mark_deregistration(&self, cluster: &str, t: &Stored<Task>, reason: &str) -> Result<(), ControlError> {
        if t.raw.contains_key(crate::targets::DEREGISTRATION) {
            return Ok(());
        }
        let mut raw = t.raw.clone();
        raw.insert(
            crate::targets::DEREGISTRATION.into(),
            serde_json::json!({"reason": reason, "at": self.env.now()}),
        );
        let tkey = keys::task(cluster, &t.value.id);
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(&tkey, CmpOp::Equal, t.mod_revision))
            .then(Op::put(&tkey, encode(&t.value, &raw)?));
        self.store.txn(txn).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(cluster = %cluster, task = %t.value.id))]
    async fn stop_task(&self, cluster: &str, t: &Stored<Task>, reason: &str) -> Result<(), ControlError> {
        let mut task = t.value.clone();
        let at = self.env.now();
        task.desired_status = TaskStatus::Stopped;
        task.stopping_at.get_or_insert(at);
        task.stop_code.get_or_insert_with(|| "ServiceSchedulerInitiated".into());
        task.stopped_reason.get_or_insert_with(|| reason.to_string());
        let unplaced = task.container_instance.is_none();
        if unplaced {
            task.last_status = TaskStatus::Stopped;
            task.stopped_at.get_or_insert(at);
            for c in &mut task.containers {
                c.last_status = TaskStatus::Stopped;
            }
        }
        task.version += 1;
        let mut txn = berth_records::replace(&keys::task(cluster, &task.id), t, &task)?;
        if unplaced {
            txn = txn.then(Op::delete(keys::pending(cluster, &task.id)));
        }
        // A lost race means the task changed; the next pass decides again.
        self.store.txn(txn).await?;
        Ok(())
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControlError> {
        berth_records::follow(self.store.clone(), self.env.clock.clone(), self, shutdown).await
    }
}

/// The view most controllers plan from: the [`Cache`] and its revision.
pub(crate) async fn load_cache(store: &DynStore) -> Result<(Cache, berth_store::Revision), ControlError> {
    let cache = Cache::load(store.as_ref()).await?;
    let revision = cache.revision;
    Ok((cache, revision))
}

impl berth_records::Follower for Reconciler {
    type View = Cache;
    type Error = ControlError;
    const NAME: &'static str = "service reconciler";

    async fn load_view(&mut self) -> Result<(Cache, berth_store::Revision), ControlError> {
        load_cache(&self.store).await
    }

    fn fold(&mut self, cache: &mut Cache, b: &berth_store::WatchBatch) -> bool {
        let t = cache.apply(b.revision, &b.events);
        t.instances || t.other
    }

    async fn step(&mut self, cache: &mut Cache) -> Result<Option<Timestamp>, ControlError> {
        self.pass(cache).await
    }
}

/// The planner's view of one task.
pub(crate) fn task_view(
    t: &Stored<Task>,
    has_health_check: bool,
    load: &BTreeMap<String, u32>,
    draining: &[String],
    now: Timestamp,
) -> TaskView {
    let ci = t.value.container_instance.clone();
    TaskView {
        id: t.value.id.clone(),
        deployment: t.value.started_by.clone().unwrap_or_default(),
        last_status: t.value.last_status,
        // A task being deregistered from its load balancer is on its way out.
        desired_status: if t.raw.contains_key(crate::targets::DEREGISTRATION) {
            TaskStatus::Stopped
        } else {
            t.value.desired_status
        },
        health: t.value.health_status,
        has_health_check,
        started_at: t.value.started_at,
        created_at: t.value.created_at,
        instance_draining: ci.as_ref().is_some_and(|c| draining.contains(c)),
        instance_load: ci.as_ref().and_then(|c| load.get(c)).copied().unwrap_or(0),
        instance: ci,
        protected: t.raw.get("protectionEnabled").and_then(Value::as_bool).unwrap_or(false)
            && t.raw
                .get("protectionExpiresAt")
                .and_then(Value::as_f64)
                .is_none_or(|e| e > now),
    }
}

/// Whether the parts of the service the reconciler maintains changed
/// (ignoring event timestamps of identical messages is not needed: events
/// are only added when something happened).
fn service_differs(a: &Service, b: &Service) -> bool {
    a != b
}

impl Reconciler {
    /// A new PROVISIONING task of a service deployment.
    fn new_task(
        &self,
        cluster: &str,
        service: &str,
        deployment: &str,
        td_arn: &str,
        td: &TaskDefinition,
        now: Timestamp,
    ) -> Task {
        let id = self.env.new_id();
        let arn_prefix = td_arn
            .split(":task-definition/")
            .next()
            .unwrap_or("arn:aws:ecs:us-east-1:123456789012");
        let mut t = Task::new(
            id.clone(),
            format!("{arn_prefix}:task/{cluster}/{id}"),
            cluster,
            td_arn.to_string(),
            td,
            now,
        );
        t.started_by = Some(deployment.to_string());
        t.group = Some(format!("service:{service}"));
        t
    }
}
