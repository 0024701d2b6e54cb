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
//!
//! Each rule is a function in `rules` with its own unit tests; [`plan`] only
//! runs them in order over one [`Pass`](rules::Pass). The scenario tests in
//! `tests` check the rules together over many passes.

use berth_model::{HealthStatus, Service, TaskStatus, Timestamp};
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

/// One reconciliation pass over a service: the rules of the module
/// documentation, applied in order.
pub fn plan(input: &PassInput<'_>) -> ServicePlan {
    let mut pass = rules::Pass::new(input);
    rules::record_failures(&mut pass);
    rules::replace_unhealthy(&mut pass);
    rules::trip_circuit_breaker(&mut pass);
    let limits = rules::Limits::of(&pass);
    let start = rules::start_primary_tasks(&mut pass, &limits);
    let leaving = rules::retire_old_tasks(&pass, &limits);
    let surplus = rules::scale_in(&pass, &limits);
    rules::stop_within_minimum_healthy(&mut pass, &limits, leaving.into_iter().chain(surplus));
    rules::update_counts(&mut pass);
    rules::complete_deployment(&mut pass);
    rules::report(&mut pass, start.as_ref());
    pass.finish(start)
}

mod rules;
#[cfg(test)]
mod tests;
