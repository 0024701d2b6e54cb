//! The reconciler's rules, one function each, over one [`Pass`]: the
//! service and state being rewritten, the stops decided so far and the
//! events written. `reconcile::plan` runs them in order; each reads what the
//! earlier ones decided (a task already being stopped is not counted twice).

use berth_model::{Deployment, DeploymentStatus, RolloutState, ServiceEvent, ServiceStatus, TaskStatus, Timestamp};

use super::{PassInput, ServicePlan, ServiceState, Start, TaskView};

/// Longest restart backoff, in seconds.
const BACKOFF_MAX: f64 = 60.0;

/// Failed tasks that trip the circuit breaker: `clamp(ceil(desired / 2), 3, 200)`.
pub(super) fn threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

/// One pass while the rules run.
pub(super) struct Pass<'a> {
    pub input: &'a PassInput<'a>,
    pub svc: berth_model::Service,
    pub state: ServiceState,
    /// Task id and stopped reason, in the order decided.
    pub stop: Vec<(String, String)>,
    /// Events written so far (event ids are numbered from 1).
    events: usize,
    /// The desired count, or 0 for a service being deleted.
    pub desired: u32,
    /// `healthCheckGracePeriodSeconds`.
    pub grace: f64,
    pub wake_at: Option<Timestamp>,
}

impl<'a> Pass<'a> {
    pub fn new(input: &'a PassInput<'a>) -> Pass<'a> {
        let svc = input.service.clone();
        let desired = if svc.status == ServiceStatus::Active {
            svc.desired_count
        } else {
            0
        };
        Pass {
            input,
            grace: f64::from(svc.health_check_grace_period_seconds.unwrap_or(0)),
            svc,
            state: input.state.clone(),
            stop: Vec::new(),
            events: 0,
            desired,
            wake_at: None,
        }
    }

    fn now(&self) -> Timestamp {
        self.input.now
    }

    fn event(&mut self, message: String) {
        self.events += 1;
        self.svc.push_event(ServiceEvent {
            id: (self.input.event_id)(self.events),
            created_at: self.input.now,
            message,
        });
    }

    /// How events name the service.
    fn name(&self) -> String {
        format!("(service {})", self.svc.service_name)
    }

    fn stopping(&self, id: &str) -> bool {
        self.stop.iter().any(|(s, _)| s == id)
    }

    /// Tasks that still want to run and that this pass does not stop.
    pub fn remaining(&self) -> Vec<&'a TaskView> {
        let tasks: &'a [TaskView] = self.input.tasks;
        tasks.iter().filter(|t| t.active() && !self.stopping(&t.id)).collect()
    }

    fn primary_id(&self) -> Option<String> {
        self.svc.primary().map(|d| d.id.clone())
    }

    fn wake_no_later_than(&mut self, at: Timestamp) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    pub fn finish(self, start: Option<Start>) -> ServicePlan {
        let mut svc = self.svc;
        // Gone only once the tasks are really stopped, not just asked to stop.
        let inactive = svc.status == ServiceStatus::Draining && self.input.tasks.iter().all(|t| !t.active());
        if inactive {
            svc.status = ServiceStatus::Inactive;
        }
        ServicePlan {
            start,
            stop: self.stop,
            service: svc,
            state: self.state,
            inactive,
            wake_at: self.wake_at,
        }
    }
}

/// Failures reported since the last pass count against their deployment
/// (feeding the circuit breaker) and push the next launch back: 1 s,
/// doubling, at most [`BACKOFF_MAX`] (rule 6).
pub(super) fn record_failures(p: &mut Pass<'_>) {
    let now = p.now();
    for (deployment, reason) in p.input.new_failures {
        if let Some(d) = p.svc.deployments.iter_mut().find(|d| &d.id == deployment) {
            d.failed_tasks += 1;
        }
        p.state.consecutive_failures += 1;
        let n = p.state.consecutive_failures;
        let delay = 2f64.powi(n.saturating_sub(1).min(10) as i32).min(BACKOFF_MAX);
        p.state.next_launch_at = now + delay;
        let message = format!(
            "{} task failed ({reason}); next launch in {delay:.0} s (attempt {n})",
            p.name()
        );
        p.event(message);
    }
}

/// Rule 1: tasks unhealthy past the grace period are stopped, and each
/// counts as a failure of its deployment.
pub(super) fn replace_unhealthy(p: &mut Pass<'_>) {
    let (grace, now) = (p.grace, p.now());
    let tasks: &[TaskView] = p.input.tasks;
    for t in tasks.iter().filter(|t| t.unhealthy_past_grace(grace, now)) {
        p.stop
            .push((t.id.clone(), "Task failed container health checks".into()));
        if let Some(d) = p.svc.deployments.iter_mut().find(|d| d.id == t.deployment) {
            d.failed_tasks += 1;
        }
    }
}

/// Rule 5: the primary deployment fails once its failed tasks reach
/// [`threshold`]; with `rollback`, a new deployment of the last completed
/// task definition takes over.
pub(super) fn trip_circuit_breaker(p: &mut Pass<'_>) {
    let breaker = p
        .svc
        .deployment_configuration
        .deployment_circuit_breaker
        .unwrap_or_default();
    let desired = p.desired;
    let now = p.now();
    let Some(primary) = p.svc.primary_mut() else {
        return;
    };
    if !breaker.enable
        || primary.rollout_state != RolloutState::InProgress
        || primary.failed_tasks < threshold(primary.desired_count.max(desired))
    {
        return;
    }
    let reason = format!(
        "ECS deployment circuit breaker: tasks failed to start ({} failed).",
        primary.failed_tasks
    );
    primary.rollout_state = RolloutState::Failed;
    primary.rollout_state_reason.clone_from(&reason);
    primary.updated_at = now;
    let (id, failed_td) = (primary.id.clone(), primary.task_definition.clone());
    let message = format!("{} deployment {id} failed: {reason}", p.name());
    p.event(message);
    if breaker.rollback
        && let Some(target) = p.state.last_stable.clone().filter(|t| *t != failed_td)
    {
        roll_back(p, target);
    }
}

/// A new primary deployment of `target`, with the crash streak forgotten.
fn roll_back(p: &mut Pass<'_>, target: String) {
    let now = p.now();
    let id = format!("ecs-svc/rollback-{}", (p.input.event_id)(0));
    p.svc.begin_deployment(Deployment {
        id: id.clone(),
        status: DeploymentStatus::Primary,
        task_definition: target.clone(),
        desired_count: p.desired,
        pending_count: 0,
        running_count: 0,
        failed_tasks: 0,
        rollout_state: RolloutState::InProgress,
        rollout_state_reason: format!("ECS deployment rolling back to {target}."),
        created_at: now,
        updated_at: now,
    });
    p.state.consecutive_failures = 0;
    p.state.next_launch_at = 0.0;
    let message = format!("{} rolling back to {target} in deployment {id}.", p.name());
    p.event(message);
}

/// What the deployment configuration allows in this pass, once the breaker
/// has decided which deployment is primary.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Limits {
    pub primary: Option<Deployment>,
    /// The primary failed and nothing rolled back: keep what still serves.
    pub primary_failed: bool,
    /// `desired × maximumPercent`: tasks that may want to run at once.
    pub max_total: usize,
    /// `desired × minimumHealthyPercent`, rounded up.
    pub min_healthy: usize,
}

impl Limits {
    pub fn of(p: &Pass<'_>) -> Limits {
        let dc = p.svc.deployment_configuration;
        let primary = p.svc.primary().cloned();
        let desired = u64::from(p.desired);
        Limits {
            primary_failed: primary
                .as_ref()
                .is_some_and(|d| d.rollout_state == RolloutState::Failed),
            primary,
            max_total: (desired * u64::from(dc.maximum_percent) / 100) as usize,
            min_healthy: (desired * u64::from(dc.minimum_healthy_percent)).div_ceil(100) as usize,
        }
    }

    fn in_primary(&self, t: &TaskView) -> bool {
        self.primary.as_ref().is_some_and(|d| d.id == t.deployment)
    }

    /// A primary task that stays (not leaving a draining instance).
    fn keeper(&self, t: &TaskView) -> bool {
        self.in_primary(t) && !t.instance_draining
    }
}

/// Rules 2 and 3: start primary tasks up to the desired count (tasks
/// leaving a draining instance do not count), within `maximumPercent`, and
/// not before the restart backoff ends.
pub(super) fn start_primary_tasks(p: &mut Pass<'_>, lim: &Limits) -> Option<Start> {
    let active = p.remaining();
    let keepers = active.iter().filter(|t| lim.keeper(t)).count();
    let desired = p.desired as usize;
    if desired <= keepers || lim.primary_failed {
        return None;
    }
    let room = lim.max_total.max(desired).saturating_sub(active.len());
    let want = (desired - keepers).min(room);
    if want == 0 {
        return None;
    }
    if p.now() < p.state.next_launch_at {
        p.wake_at = Some(p.state.next_launch_at);
        return None;
    }
    lim.primary.as_ref().map(|d| Start {
        deployment: d.id.clone(),
        task_definition: d.task_definition.clone(),
        count: want as u32,
    })
}

/// Rules 2 and 3: tasks of older deployments and tasks on draining
/// instances leave, except the healthiest old ones still standing in for
/// primary tasks that are not healthy yet (within the room
/// `maximumPercent` leaves for replacements). A failed deployment without
/// rollback keeps every old task that serves.
pub(super) fn retire_old_tasks<'a>(p: &Pass<'a>, lim: &Limits) -> Vec<(&'a TaskView, &'static str)> {
    let active = p.remaining();
    let desired = p.desired as usize;
    let mut leaving: Vec<&TaskView> = active.iter().filter(|t| !lim.keeper(t)).copied().collect();
    leaving.sort_by(|a, b| scale_in_order(a, b));
    let primary_healthy = active.iter().filter(|t| lim.keeper(t) && t.healthy()).count();
    let stand_ins = if lim.primary_failed {
        desired
    } else {
        desired
            .saturating_sub(primary_healthy.min(desired))
            .min(lim.max_total.saturating_sub(desired))
    };
    let mut kept = 0;
    let mut out = Vec::new();
    for t in leaving.iter().rev() {
        if t.healthy() && kept < stand_ins {
            kept += 1;
            continue;
        }
        let reason = if t.instance_draining {
            "Instance is draining"
        } else {
            "Deployment replaced"
        };
        out.push((*t, reason));
    }
    out
}

/// Rule 4: primary tasks above the desired count stop in scale-in order,
/// never a protected one.
pub(super) fn scale_in<'a>(p: &Pass<'a>, lim: &Limits) -> Vec<(&'a TaskView, &'static str)> {
    let mut keepers: Vec<&TaskView> = p.remaining().into_iter().filter(|t| lim.keeper(t)).collect();
    let surplus = keepers.len().saturating_sub(p.desired as usize);
    keepers.sort_by(|a, b| scale_in_order(a, b));
    keepers
        .into_iter()
        .filter(|t| !t.protected)
        .take(surplus)
        .map(|t| (t, "Scaling activity initiated by deployment"))
        .collect()
}

/// Rule 2's floor: of the chosen tasks, a healthy one stops only while at
/// least `minimumHealthyPercent` stay healthy; a protected primary task
/// stays unless its instance drains.
pub(super) fn stop_within_minimum_healthy<'a>(
    p: &mut Pass<'a>,
    lim: &Limits,
    chosen: impl IntoIterator<Item = (&'a TaskView, &'static str)>,
) {
    let healthy_now = p.remaining().iter().filter(|t| t.healthy()).count();
    let mut budget = healthy_now.saturating_sub(lim.min_healthy);
    for (t, reason) in chosen {
        if t.protected && lim.keeper(t) {
            continue;
        }
        if t.healthy() {
            if budget == 0 {
                continue;
            }
            budget -= 1;
        }
        p.stop.push((t.id.clone(), reason.to_string()));
    }
}

/// Running and pending counts of the service and of each deployment, over
/// the tasks that remain after this pass's stops.
pub(super) fn update_counts(p: &mut Pass<'_>) {
    let remaining = p.remaining();
    let running = |t: &&TaskView| t.last_status == TaskStatus::Running;
    let pending = |t: &&TaskView| t.last_status < TaskStatus::Running;
    p.svc.running_count = remaining.iter().copied().filter(running).count() as u32;
    p.svc.pending_count = remaining.iter().copied().filter(pending).count() as u32;
    let desired = p.desired;
    for d in &mut p.svc.deployments {
        let id = d.id.clone();
        let mine = || remaining.iter().copied().filter(|t| t.deployment == id);
        d.running_count = mine().filter(running).count() as u32;
        d.pending_count = mine().filter(pending).count() as u32;
        if d.status == DeploymentStatus::Primary {
            d.desired_count = desired;
        }
    }
}

/// Rule 5's other half: a primary deployment completes once the desired
/// number of its tasks have stayed healthy through the grace period and no
/// older task is left (so a task that crashes within the grace period
/// still counts against it); older deployments are then dropped. A settled
/// primary task also ends a crash streak.
pub(super) fn complete_deployment(p: &mut Pass<'_>) {
    let (now, grace) = (p.now(), p.grace);
    let remaining = p.remaining();
    let primary_id = p.primary_id();
    let mine: Vec<&TaskView> = remaining
        .iter()
        .filter(|t| Some(&t.deployment) == primary_id.as_ref())
        .copied()
        .collect();
    let settled = |t: &TaskView| t.healthy() && t.started_at.is_none_or(|s| now - s >= grace);
    let settled_count = mine.iter().filter(|t| settled(t)).count();
    for t in mine.iter().filter(|t| t.healthy() && !settled(t)) {
        if let Some(s) = t.started_at {
            p.wake_no_later_than(s + grace);
        }
    }
    let olds_left = remaining.len() > mine.len();
    if settled_count > 0 {
        p.state.consecutive_failures = 0;
    }
    let desired = p.desired as usize;
    let mut completed = None;
    if let Some(d) = p.svc.primary_mut()
        && d.rollout_state == RolloutState::InProgress
        && settled_count >= desired
        && !olds_left
    {
        d.rollout_state = RolloutState::Completed;
        d.rollout_state_reason = "ECS deployment completed.".into();
        d.updated_at = now;
        completed = Some((d.id.clone(), d.task_definition.clone()));
    }
    if let Some((id, td)) = completed {
        p.state.last_stable = Some(td);
        let message = format!("{} deployment {id} completed.", p.name());
        p.event(message);
    }
    if !olds_left {
        p.svc.deployments.retain(|d| d.status == DeploymentStatus::Primary);
    }
}

/// The events a user follows a rollout by: tasks started, and the first
/// pass that finds the service steady.
pub(super) fn report(p: &mut Pass<'_>, start: Option<&Start>) {
    if let Some(s) = start {
        let message = format!("{} has started {} tasks.", p.name(), s.count);
        p.event(message);
    }
    let steady = start.is_none()
        && p.stop.is_empty()
        && p.svc.deployments.len() == 1
        && p.svc.running_count == p.desired
        && p.svc.pending_count == 0;
    if steady && !p.state.steady {
        let message = format!("{} has reached a steady state.", p.name());
        p.event(message);
    }
    p.state.steady = steady;
}

/// Which task goes first when some must: unprotected before protected,
/// unhealthy first, then the emptiest instance, then the newest task.
pub(super) fn scale_in_order(a: &TaskView, b: &TaskView) -> std::cmp::Ordering {
    a.protected
        .cmp(&b.protected)
        .then_with(|| a.healthy().cmp(&b.healthy()))
        .then_with(|| a.instance_load.cmp(&b.instance_load))
        .then_with(|| b.created_at.total_cmp(&a.created_at))
}

#[cfg(test)]
#[path = "rule_tests.rs"]
mod tests;
