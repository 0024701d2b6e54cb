//! The service reconciler's decisions, as a pure function of one service,
//! its tasks and the time: which tasks to start (for which deployment), which
//! to stop and why, and the service record afterwards (counts, deployments
//! and their rollout states, events). No I/O: the shell in `services` feeds
//! it from the store and commits what it returns.
//!
//! Rules, in the order they apply:
//! 1. Tasks that are unhealthy past the grace period are replaced (and count
//!    as failures of their deployment).
//! 2. Rolling deployments honour `maximumPercent` (never more than
//!    `desired × max%` tasks wanting to run) and `minimumHealthyPercent`
//!    (never stop a healthy task when that would leave fewer than
//!    `desired × min%` healthy). New tasks go to the PRIMARY deployment;
//!    older deployments drain once the primary's tasks are healthy.
//! 3. Tasks on DRAINING instances are replaced the same way: replacement
//!    first, then stop, within both limits.
//! 4. Scale-in stops, in order: never a protected task; unhealthy first;
//!    older deployments first; then tasks on the instance running the fewest
//!    tasks (so hosts empty out for cluster scale-down); then the newest.
//! 5. The circuit breaker fails the primary deployment once its failed tasks
//!    reach `clamp(ceil(desired / 2), 3, 200)`; with `rollback` it starts a
//!    new deployment of the last completed task definition. A deployment
//!    completes only when its tasks have stayed healthy through
//!    `healthCheckGracePeriodSeconds`, so tasks that pass their first health
//!    check and then crash within the grace period still trip the breaker.
//! 6. A deployment whose tasks keep failing relaunches with exponential
//!    backoff (1 s doubling to 60 s), reported in the events.

use berth_model::{
    Deployment, HealthStatus, RolloutState, Service, ServiceEvent, ServiceStatus, TaskStatus, Timestamp,
};
use serde::{Deserialize, Serialize};

/// One task of the service, as the planner needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub id: String,
    /// The deployment id (`startedBy`).
    pub deployment: String,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    pub health: HealthStatus,
    /// Whether its task definition has container health checks.
    pub has_health_check: bool,
    pub started_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub instance: Option<String>,
    pub instance_draining: bool,
    /// Tasks (of any service) on its instance.
    pub instance_load: u32,
    pub protected: bool,
}

impl TaskView {
    fn active(&self) -> bool {
        self.desired_status != TaskStatus::Stopped && self.last_status != TaskStatus::Stopped
    }

    /// Healthy for the minimum: running and passing (or without checks).
    pub fn healthy(&self) -> bool {
        self.active()
            && self.last_status == TaskStatus::Running
            && match self.health {
                HealthStatus::Healthy => true,
                HealthStatus::Unknown => !self.has_health_check,
                HealthStatus::Unhealthy => false,
            }
    }

    fn unhealthy_past_grace(&self, grace: f64, now: Timestamp) -> bool {
        self.active()
            && self.last_status == TaskStatus::Running
            && self.health == HealthStatus::Unhealthy
            && self.started_at.is_none_or(|s| now - s >= grace)
    }
}

/// What the reconciler remembers about a service between passes (kept in its
/// own record so that API writes to the service never lose it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceState {
    /// Failures in a row without a task reaching healthy.
    pub consecutive_failures: u32,
    /// No new task starts before this time (restart backoff).
    pub next_launch_at: Timestamp,
    /// Whether the last pass found the service steady (for the event).
    pub steady: bool,
    /// The last task definition whose deployment completed (rollback target).
    pub last_stable: Option<String>,
}

/// A task to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub deployment: String,
    pub task_definition: String,
    pub count: u32,
}

/// The decisions of one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub start: Option<Start>,
    /// Task id and stopped reason.
    pub stop: Vec<(String, String)>,
    pub service: Service,
    pub state: ServiceState,
    /// Set when the service is gone (DRAINING with nothing left).
    pub inactive: bool,
    /// Plan again at this time even if nothing changes (backoff expiry).
    pub wake_at: Option<Timestamp>,
}

/// Inputs besides the tasks.
#[derive(Clone)]
pub struct PassInput<'a> {
    pub service: &'a Service,
    pub state: &'a ServiceState,
    pub tasks: &'a [TaskView],
    /// Failures observed since the last pass, by deployment id.
    pub new_failures: &'a [(String, String)],
    pub now: Timestamp,
    /// Event ids (for determinism in tests, supplied by the caller).
    pub event_id: &'a dyn Fn(usize) -> String,
}

const BACKOFF_MAX: f64 = 60.0;

fn threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

fn event(input: &PassInput<'_>, svc: &mut Service, n: &mut usize, message: String) {
    *n += 1;
    svc.push_event(ServiceEvent {
        id: (input.event_id)(*n),
        created_at: input.now,
        message,
    });
}

/// One reconciliation pass over a service.
pub fn plan(input: &PassInput<'_>) -> ServicePlan {
    let now = input.now;
    let mut svc = input.service.clone();
    let mut state = input.state.clone();
    let mut stop: Vec<(String, String)> = Vec::new();
    let mut events = 0usize;
    let name = format!("(service {})", svc.service_name);
    let grace = f64::from(svc.health_check_grace_period_seconds.unwrap_or(0));
    let desired = if svc.status == ServiceStatus::Active {
        svc.desired_count
    } else {
        0
    };
    let dc = svc.deployment_configuration;

    // Failures reported since last time feed the breaker and the backoff.
    for (deployment, reason) in input.new_failures {
        if let Some(d) = svc.deployments.iter_mut().find(|d| &d.id == deployment) {
            d.failed_tasks += 1;
        }
        state.consecutive_failures += 1;
        let delay = (2f64.powi(state.consecutive_failures.saturating_sub(1).min(10) as i32)).min(BACKOFF_MAX);
        state.next_launch_at = now + delay;
        event(
            input,
            &mut svc,
            &mut events,
            format!(
                "{name} task failed ({reason}); next launch in {delay:.0} s (attempt {})",
                state.consecutive_failures
            ),
        );
    }

    // 1. Unhealthy tasks past the grace period are replaced.
    let mut failed_unhealthy = Vec::new();
    for t in input.tasks.iter().filter(|t| t.unhealthy_past_grace(grace, now)) {
        stop.push((t.id.clone(), "Task failed container health checks".into()));
        failed_unhealthy.push(t.deployment.clone());
    }
    for d in failed_unhealthy {
        if let Some(dep) = svc.deployments.iter_mut().find(|x| x.id == d) {
            dep.failed_tasks += 1;
        }
    }
    let stopping = |id: &str, stop: &[(String, String)]| stop.iter().any(|(s, _)| s == id);

    // 5. Circuit breaker on the primary deployment.
    let breaker = dc.deployment_circuit_breaker.unwrap_or_default();
    if let Some(primary) = svc.deployments.iter().position(|d| d.status == "PRIMARY") {
        let p = &svc.deployments[primary];
        if breaker.enable
            && p.rollout_state == RolloutState::InProgress
            && p.failed_tasks >= threshold(p.desired_count.max(desired))
        {
            let failed_td = p.task_definition.clone();
            let reason = format!(
                "ECS deployment circuit breaker: tasks failed to start ({} failed).",
                p.failed_tasks
            );
            svc.deployments[primary].rollout_state = RolloutState::Failed;
            svc.deployments[primary].rollout_state_reason = reason.clone();
            svc.deployments[primary].updated_at = now;
            let msg = format!("{name} deployment {} failed: {reason}", svc.deployments[primary].id);
            event(input, &mut svc, &mut events, msg);
            if breaker.rollback
                && let Some(target) = state.last_stable.clone().filter(|t| *t != failed_td)
            {
                for d in &mut svc.deployments {
                    if d.status == "PRIMARY" {
                        d.status = "ACTIVE".into();
                    }
                }
                let id = format!("ecs-svc/rollback-{}", (input.event_id)(0));
                svc.deployments.insert(
                    0,
                    Deployment {
                        id: id.clone(),
                        status: "PRIMARY".into(),
                        task_definition: target.clone(),
                        desired_count: desired,
                        pending_count: 0,
                        running_count: 0,
                        failed_tasks: 0,
                        rollout_state: RolloutState::InProgress,
                        rollout_state_reason: format!("ECS deployment rolling back to {target}."),
                        created_at: now,
                        updated_at: now,
                    },
                );
                svc.task_definition = target.clone();
                state.consecutive_failures = 0;
                state.next_launch_at = 0.0;
                event(
                    input,
                    &mut svc,
                    &mut events,
                    format!("{name} rolling back to {target} in deployment {id}."),
                );
            }
        }
    }

    let primary = svc.deployments.iter().find(|d| d.status == "PRIMARY").cloned();
    let primary_failed = primary
        .as_ref()
        .is_some_and(|p| p.rollout_state == RolloutState::Failed);
    let active: Vec<&TaskView> = input
        .tasks
        .iter()
        .filter(|t| t.active() && !stopping(&t.id, &stop))
        .collect();
    let in_primary = |t: &TaskView| primary.as_ref().is_some_and(|p| p.id == t.deployment);
    let max_total = (u64::from(desired) * u64::from(dc.maximum_percent) / 100) as usize;
    let min_healthy = (u64::from(desired) * u64::from(dc.minimum_healthy_percent)).div_ceil(100) as usize;

    // 2 + 3. Start primary tasks up to desired (not counting ones leaving a
    // draining instance), within maximumPercent.
    let keepers = active.iter().filter(|t| in_primary(t) && !t.instance_draining).count();
    let mut start = None;
    let mut wake_at = None;
    if desired as usize > keepers && !primary_failed {
        let room = max_total.max(desired as usize).saturating_sub(active.len());
        let want = (desired as usize - keepers).min(room);
        if want > 0 {
            if now < state.next_launch_at {
                wake_at = Some(state.next_launch_at);
            } else if let Some(p) = &primary {
                start = Some(Start {
                    deployment: p.id.clone(),
                    task_definition: p.task_definition.clone(),
                    count: want as u32,
                });
            }
        }
    }

    // Stop what is surplus, keeping at least the minimum healthy.
    let healthy_now = active.iter().filter(|t| t.healthy()).count();
    let mut can_stop_healthy = healthy_now.saturating_sub(min_healthy);
    let primary_healthy = active
        .iter()
        .filter(|t| in_primary(t) && t.healthy() && !t.instance_draining)
        .count();
    // Old deployments and draining instances go once replacements are healthy.
    let mut leaving: Vec<&TaskView> = active
        .iter()
        .filter(|t| !in_primary(t) || t.instance_draining)
        .copied()
        .collect();
    leaving.sort_by(|a, b| scale_in_order(a, b));
    let surplus_primary = keepers.saturating_sub(desired as usize);
    let mut candidates: Vec<&TaskView> = active
        .iter()
        .filter(|t| in_primary(t) && !t.instance_draining)
        .copied()
        .collect();
    candidates.sort_by(|a, b| scale_in_order(a, b));
    let mut to_stop: Vec<(&TaskView, &str)> = Vec::new();
    let replaced = primary_healthy.min(desired as usize);
    // Old tasks stand in for missing new ones, but leave room under
    // maximumPercent for the replacements to start.
    // A failed deployment without rollback keeps what still serves.
    let old_healthy_needed = if primary_failed {
        desired as usize
    } else {
        (desired as usize)
            .saturating_sub(replaced)
            .min(max_total.saturating_sub(desired as usize))
    };
    let mut old_kept_healthy = 0;
    for t in leaving.iter().rev() {
        // Keep the healthiest old tasks that still stand in for missing new ones.
        if t.healthy() && old_kept_healthy < old_healthy_needed {
            old_kept_healthy += 1;
            continue;
        }
        to_stop.push((
            t,
            if t.instance_draining {
                "Instance is draining"
            } else {
                "Deployment replaced"
            },
        ));
    }
    for t in candidates.iter().filter(|t| !t.protected).take(surplus_primary) {
        to_stop.push((t, "Scaling activity initiated by deployment"));
    }
    for (t, reason) in to_stop {
        if t.protected && !t.instance_draining && in_primary(t) {
            continue;
        }
        if t.healthy() {
            if can_stop_healthy == 0 {
                continue;
            }
            can_stop_healthy -= 1;
        }
        stop.push((t.id.clone(), reason.to_string()));
    }

    // Counts, rollout states, events.
    let remaining: Vec<&TaskView> = input
        .tasks
        .iter()
        .filter(|t| t.active() && !stopping(&t.id, &stop))
        .collect();
    svc.running_count = remaining
        .iter()
        .filter(|t| t.last_status == TaskStatus::Running)
        .count() as u32;
    svc.pending_count = remaining.iter().filter(|t| t.last_status < TaskStatus::Running).count() as u32;
    for d in &mut svc.deployments {
        d.running_count = remaining
            .iter()
            .filter(|t| t.deployment == d.id && t.last_status == TaskStatus::Running)
            .count() as u32;
        d.pending_count = remaining
            .iter()
            .filter(|t| t.deployment == d.id && t.last_status < TaskStatus::Running)
            .count() as u32;
        if d.status == "PRIMARY" {
            d.desired_count = desired;
        }
    }
    let primary_id = primary.as_ref().map(|p| p.id.clone());
    // A primary task completes its deployment (and ends a crash streak) only
    // once it has been healthy through the grace period: one that crashes
    // within it still counts against the deployment and its breaker.
    let settled = |t: &TaskView| t.healthy() && t.started_at.is_none_or(|s| now - s >= grace);
    let primary_healthy_after = remaining
        .iter()
        .filter(|t| Some(&t.deployment) == primary_id.as_ref() && settled(t))
        .count();
    for t in remaining
        .iter()
        .filter(|t| Some(&t.deployment) == primary_id.as_ref() && t.healthy() && !settled(t))
    {
        if let Some(at) = t.started_at.map(|s| s + grace) {
            wake_at = Some(wake_at.map_or(at, |w: f64| w.min(at)));
        }
    }
    let olds_left = remaining.iter().any(|t| Some(&t.deployment) != primary_id.as_ref());
    if primary_healthy_after > 0 {
        state.consecutive_failures = 0;
    }
    let mut completed = None;
    if let Some(p) = svc.deployments.iter_mut().find(|d| d.status == "PRIMARY")
        && p.rollout_state == RolloutState::InProgress
        && primary_healthy_after >= desired as usize
        && !olds_left
    {
        p.rollout_state = RolloutState::Completed;
        p.rollout_state_reason = "ECS deployment completed.".into();
        p.updated_at = now;
        completed = Some((p.id.clone(), p.task_definition.clone()));
    }
    if let Some((id, td)) = completed {
        state.last_stable = Some(td);
        event(
            input,
            &mut svc,
            &mut events,
            format!("{name} deployment {id} completed."),
        );
    }
    if !olds_left {
        svc.deployments.retain(|d| d.status == "PRIMARY");
    }
    if let Some(s) = &start {
        event(
            input,
            &mut svc,
            &mut events,
            format!("{name} has started {} tasks.", s.count),
        );
    }
    let steady = start.is_none()
        && stop.is_empty()
        && svc.deployments.len() == 1
        && svc.running_count == desired
        && svc.pending_count == 0;
    if steady && !state.steady {
        event(
            input,
            &mut svc,
            &mut events,
            format!("{name} has reached a steady state."),
        );
    }
    state.steady = steady;
    // Gone only once the tasks are really stopped, not just asked to stop.
    let inactive = svc.status == ServiceStatus::Draining && input.tasks.iter().all(|t| !t.active());
    if inactive {
        svc.status = ServiceStatus::Inactive;
    }
    ServicePlan {
        start,
        stop,
        service: svc,
        state,
        inactive,
        wake_at,
    }
}

/// Which task goes first when some must: unprotected before protected,
/// unhealthy first, older deployments first, then the emptiest instance,
/// then the newest task.
fn scale_in_order(a: &TaskView, b: &TaskView) -> std::cmp::Ordering {
    a.protected
        .cmp(&b.protected)
        .then_with(|| a.healthy().cmp(&b.healthy()))
        .then_with(|| a.instance_load.cmp(&b.instance_load))
        .then_with(|| b.created_at.total_cmp(&a.created_at))
}

#[cfg(test)]
mod tests;
