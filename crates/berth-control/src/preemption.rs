//! The launcher's side of preemption: what the engine needs to choose
//! victims (which running tasks are protected, how young they are, the
//! floor each flex service keeps), and carrying out its evictions.
//!
//! An evicted task is stopped with stop code `TaskPreempted` (a Berth
//! extension; ECS's nearest is `SpotInterruption`) and a reason naming the
//! task that needed the room. Its resources come back only once its agent
//! has stopped it, so until then the launcher plans as if the room were
//! already free (the preempting task is placed there again, and its commit
//! waits for the instance record to show the room): otherwise every round
//! before the victim stops would choose another victim.

use std::collections::BTreeMap;

use berth_model::{ServiceStatus, Task, TaskStatus};
use berth_records::{ClusterView, Stored, keys};
use berth_sched::{Eviction, Instance, Scalars};
use berth_store::DynStore;
use serde_json::Value;

use crate::ControlError;

type Cached<T> = Stored<T>;

/// The stop code of a preempted task.
pub const TASK_PREEMPTED: &str = "TaskPreempted";

fn scalars(r: &berth_model::Resources) -> Scalars {
    Scalars {
        cpu: r.cpu,
        memory_mib: r.memory_mib,
        network_mbps: r.network_mbps,
        gpus: r.gpus,
    }
}

/// Whether a task has scale-in protection now (UpdateTaskProtection).
pub(crate) fn protected(t: &Cached<Task>, now: f64) -> bool {
    t.raw.get("protectionEnabled").and_then(Value::as_bool).unwrap_or(false)
        && t.raw
            .get("protectionExpiresAt")
            .and_then(Value::as_f64)
            .is_none_or(|e| e > now)
}

/// Fills in what the model record does not say about the instance's running
/// tasks: protection; and takes tasks already being stopped out of the
/// candidates, handing the room of those being preempted back.
pub(crate) fn refine(inst: &mut Instance, tasks: &[&Cached<Task>], now: f64) {
    let by_id: BTreeMap<&str, &Cached<Task>> = tasks.iter().map(|t| (t.value.id.as_str(), *t)).collect();
    inst.running.retain(|r| {
        let Some(t) = by_id.get(r.id.as_str()) else {
            return true;
        };
        t.value.desired_status != TaskStatus::Stopped
    });
    for r in &mut inst.running {
        if let Some(t) = by_id.get(r.id.as_str()) {
            r.protected = protected(t, now);
        }
    }
    for t in tasks {
        if t.value.desired_status == TaskStatus::Stopped && t.value.stop_code.as_deref() == Some(TASK_PREEMPTED) {
            inst.remaining = inst
                .remaining
                .saturating_add(&scalars(&t.value.demand))
                .min_of(&inst.total);
        }
    }
}

trait MinOf {
    fn min_of(&self, cap: &Scalars) -> Scalars;
}

impl MinOf for Scalars {
    fn min_of(&self, cap: &Scalars) -> Scalars {
        Scalars {
            cpu: self.cpu.min(cap.cpu),
            memory_mib: self.memory_mib.min(cap.memory_mib),
            network_mbps: self.network_mbps.min(cap.network_mbps),
            gpus: self.gpus.min(cap.gpus),
        }
    }
}

/// Per flex service group (`service:NAME`), the tasks its
/// `minimumHealthyPercent` keeps: preemption goes below only when a
/// guarantee needs it.
pub(crate) fn min_running(view: &ClusterView) -> BTreeMap<String, u32> {
    view.services
        .iter()
        .filter(|(_, s)| s.value.status == ServiceStatus::Active)
        .filter(|(_, s)| s.raw.get(keys::SERVICE_TIER).and_then(Value::as_u64).unwrap_or(1) >= 1)
        .map(|(name, s)| {
            let pct = u64::from(s.value.deployment_configuration.minimum_healthy_percent);
            let floor = (u64::from(s.value.desired_count) * pct).div_ceil(100);
            (format!("service:{name}"), floor as u32)
        })
        .collect()
}

/// The stopped reason of an evicted task.
pub(crate) fn reason(e: &Eviction, group: &str) -> String {
    let mut r = format!(
        "Preempted to make room for task {} ({} is within its capacity guarantee)",
        e.for_task,
        if group.is_empty() { "its group" } else { group }
    );
    if e.below_min_healthy {
        r.push_str("; its service goes below minimumHealthyPercent because the guarantee could not be met otherwise");
    }
    r
}

/// Stops an evicted task: desired STOPPED, stop code `TaskPreempted`.
pub(crate) async fn stop(
    store: &DynStore,
    cluster: &str,
    t: &Cached<Task>,
    why: &str,
    now: f64,
) -> Result<(), ControlError> {
    let mut task = t.value.clone();
    if task.desired_status == TaskStatus::Stopped {
        return Ok(());
    }
    task.desired_status = TaskStatus::Stopped;
    task.stopping_at.get_or_insert(now);
    task.stop_code = Some(TASK_PREEMPTED.into());
    task.stopped_reason = Some(why.to_string());
    task.version += 1;
    // A lost race means the task changed; the next round decides again.
    store
        .txn(berth_records::replace(&keys::task(cluster, &task.id), t, &task)?)
        .await?;
    Ok(())
}
