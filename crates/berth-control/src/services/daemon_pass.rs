//! The reconciler's shell for DAEMON services: feeds [`plan_daemon`] from
//! the cache and commits its decisions the way replica passes do (one
//! transaction compared on the service's revision for the starts and the
//! record, one compare-and-swap per stop).
//!
//! A daemon task is pinned to its instance by a `memberOf(instanceId == ID)`
//! constraint and marked [`DAEMON_MEMBER`], so the launcher places it before
//! every other task and an autoscaler can tell daemons from work.

use std::collections::BTreeMap;

use berth_model::{
    ContainerInstance, DeploymentStatus, InstanceStatus, NetworkConfiguration, PlacementConstraint, RolloutState,
    Service, ServiceEvent, Task, TaskStatus,
};
use berth_records::{Stored, encode, keys};
use berth_sched::{Constraint, Instance, PlaceOptions, Scalars, Snapshot, TaskRequest};
use berth_store::{CmpOp, Compare, Op, TxnRequest};
use serde_json::{Map, Value};

use super::Reconciler;
use crate::ControlError;
use crate::daemon::{DaemonHost, DaemonTask, plan_daemon};

type Cached<T> = Stored<T>;

/// Task member marking a DAEMON service's task (a Berth extension).
pub const DAEMON_MEMBER: &str = "berthDaemon";
/// Task member naming the instance a daemon task is pinned to.
pub const DAEMON_INSTANCE: &str = "berthDaemonInstance";

/// Whether the service record says `schedulingStrategy: DAEMON`.
pub fn is_daemon(svc: &Cached<Service>) -> bool {
    svc.raw.get("schedulingStrategy").and_then(Value::as_str) == Some("DAEMON")
}

/// Whether the constraints admit the instance (judged as if it were empty,
/// ACTIVE and connected: status is checked by the caller).
fn admits(ci: &ContainerInstance, constraints: &[Constraint]) -> bool {
    let mut inst = Instance::from_model(ci, []);
    inst.status = InstanceStatus::Active;
    inst.agent_connected = true;
    inst.remaining = inst.total;
    let mut probe = TaskRequest::new("probe", Scalars::default());
    probe.constraints = constraints.to_vec();
    Snapshot::new(vec![inst])
        .place(&[probe], &PlaceOptions::default())
        .placements
        .len()
        == 1
}

impl Reconciler {
    pub(super) async fn reconcile_daemon(
        &mut self,
        cluster: &str,
        name: &str,
        svc: &Cached<Service>,
        instances: &BTreeMap<String, Cached<ContainerInstance>>,
        tasks: &[Cached<Task>],
    ) -> Result<(), ControlError> {
        let now = self.env.now();
        let Some(primary) = svc
            .value
            .deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
            .cloned()
        else {
            return Ok(());
        };
        let Some(td) = self.taskdef(&primary.task_definition).await? else {
            tracing::warn!(service = name, "task definition missing; cannot start daemon tasks");
            return Ok(());
        };
        let constraints: Vec<Constraint> = svc
            .value
            .placement_constraints
            .iter()
            .chain(&td.placement_constraints)
            .filter_map(|c| Constraint::from_ecs(&c.kind, c.expression.as_deref()).ok())
            .filter(|c| *c != Constraint::DistinctInstance)
            .collect();
        let active = svc.value.status == berth_model::ServiceStatus::Active;
        let hosts: Vec<DaemonHost> = instances
            .values()
            .map(|ci| DaemonHost {
                id: ci.value.id.clone(),
                eligible: active && ci.value.status == InstanceStatus::Active && admits(&ci.value, &constraints),
                draining: ci.value.status == InstanceStatus::Draining,
            })
            .collect();
        let mut with_checks = BTreeMap::new();
        for t in tasks {
            let arn = &t.value.task_definition_arn;
            if !with_checks.contains_key(arn) {
                let checks = self
                    .taskdef(arn)
                    .await?
                    .is_some_and(|d| d.container_definitions.iter().any(|c| c.health_check.is_some()));
                with_checks.insert(arn.clone(), checks);
            }
        }
        let views: Vec<DaemonTask> = tasks
            .iter()
            .map(|t| DaemonTask {
                id: t.value.id.clone(),
                deployment: t.value.started_by.clone().unwrap_or_default(),
                instance: t
                    .value
                    .container_instance
                    .clone()
                    .or_else(|| t.raw.get(DAEMON_INSTANCE).and_then(Value::as_str).map(str::to_string)),
                last_status: t.value.last_status,
                desired_status: t.value.desired_status,
                health: t.value.health_status,
                has_health_check: with_checks.get(&t.value.task_definition_arn).copied().unwrap_or(false),
                created_at: t.value.created_at,
            })
            .collect();
        let plan = plan_daemon(&hosts, &views, &primary.id);
        let service = self.daemon_record(svc, tasks, &plan, &primary.id, now);
        if plan.start.is_empty() && plan.stop.is_empty() && service == svc.value {
            return Ok(());
        }
        let skey = keys::service(cluster, name);
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(&skey, CmpOp::Equal, svc.mod_revision))
            .then(Op::put(&skey, encode(&service, &svc.raw)?));
        let tier = svc
            .raw
            .get(keys::SERVICE_TIER)
            .and_then(Value::as_u64)
            .and_then(|t| u8::try_from(t).ok())
            .filter(|t| *t <= 1)
            .unwrap_or(berth_model::DEFAULT_TIER);
        let network = svc
            .raw
            .get("networkConfiguration")
            .and_then(|v| serde_json::from_value::<NetworkConfiguration>(v.clone()).ok());
        for host in &plan.start {
            let mut t = self.new_task(cluster, name, &primary.id, &primary.task_definition, &td, now);
            t.tier = tier;
            t.placement_strategy.clone_from(&svc.value.placement_strategy);
            t.placement_constraints.clone_from(&svc.value.placement_constraints);
            t.placement_constraints.push(PlacementConstraint {
                kind: "memberOf".into(),
                expression: Some(format!("instanceId == {host}")),
            });
            t.network_configuration.clone_from(&network);
            let mut extras = Map::new();
            extras.insert(DAEMON_MEMBER.into(), Value::Bool(true));
            extras.insert(DAEMON_INSTANCE.into(), Value::String(host.clone()));
            let tkey = keys::task(cluster, &t.id);
            txn = txn
                .when(Compare::missing(&tkey))
                .then(Op::put(&tkey, encode(&t, &extras)?))
                .then(Op::put(keys::pending(cluster, &t.id), tkey.as_bytes()));
            for op in keys::task_index_ops(None, Some(&t)) {
                txn = txn.then(op);
            }
        }
        if !self.store.txn(txn).await?.succeeded {
            // Planned from a stale view; the watch brings the fresh one.
            return Ok(());
        }
        for (id, reason) in &plan.stop {
            if let Some(t) = tasks.iter().find(|t| &t.value.id == id) {
                self.stop_task(cluster, t, reason).await?;
            }
        }
        Ok(())
    }

    /// The service record after the pass: desired = eligible instances,
    /// counts, the primary's rollout state and an event for what started.
    fn daemon_record(
        &mut self,
        svc: &Cached<Service>,
        tasks: &[Cached<Task>],
        plan: &crate::daemon::DaemonPlan,
        primary: &str,
        now: f64,
    ) -> Service {
        let mut s = svc.value.clone();
        let stopping = |id: &str| plan.stop.iter().any(|(s, _)| s == id);
        let live: Vec<&Task> = tasks
            .iter()
            .map(|t| &t.value)
            .filter(|t| t.desired_status != TaskStatus::Stopped && t.last_status != TaskStatus::Stopped)
            .filter(|t| !stopping(&t.id))
            .collect();
        s.desired_count = plan.desired;
        s.running_count = live.iter().filter(|t| t.last_status == TaskStatus::Running).count() as u32;
        s.pending_count =
            live.iter().filter(|t| t.last_status < TaskStatus::Running).count() as u32 + plan.start.len() as u32;
        for d in &mut s.deployments {
            let mine = |t: &&&Task| t.started_by.as_deref() == Some(d.id.as_str());
            d.running_count = live
                .iter()
                .filter(mine)
                .filter(|t| t.last_status == TaskStatus::Running)
                .count() as u32;
            d.pending_count = live
                .iter()
                .filter(mine)
                .filter(|t| t.last_status < TaskStatus::Running)
                .count() as u32;
            if d.id == primary {
                d.desired_count = plan.desired;
                d.pending_count += plan.start.len() as u32;
                if plan.complete && d.rollout_state == RolloutState::InProgress {
                    d.rollout_state = RolloutState::Completed;
                    d.rollout_state_reason = "ECS deployment completed.".into();
                    d.updated_at = now;
                }
            }
        }
        if plan.complete {
            s.deployments.retain(|d| d.id == primary);
        }
        if !plan.start.is_empty() {
            self.events += 1;
            s.push_event(ServiceEvent {
                id: format!("{:016x}{:08x}", self.events, 0),
                created_at: now,
                message: format!(
                    "(service {}) has started {} tasks: one on each of {}.",
                    s.service_name,
                    plan.start.len(),
                    plan.start.join(", ")
                ),
            });
        }
        s
    }
}
