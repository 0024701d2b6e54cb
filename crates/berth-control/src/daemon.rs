//! The DAEMON scheduling strategy's decisions, as a pure function of one
//! service's instances, tasks and deployment: one task per container
//! instance that can run it, as ECS does.
//!
//! Rules, in the order they apply:
//! 1. A task on (or pinned to) an instance that is not ACTIVE, is gone, or
//!    that the service's constraints no longer admit is stopped.
//! 2. An eligible instance running more than one of the service's tasks
//!    keeps the best (primary deployment, then healthy, then oldest).
//! 3. An eligible instance with none gets one task of the primary
//!    deployment, pinned to it, at once: a joining instance gets its daemons
//!    before replica tasks fill it (the engine places daemon tasks first).
//! 4. Deployments roll host by host: while no instance is between an old
//!    task and a healthy new one, the first instance still on an older
//!    deployment has its task replaced (stop the old, start the new).
//!
//! The desired count is the number of eligible instances.

use berth_model::{HealthStatus, TaskStatus};

/// A container instance as the daemon planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonHost {
    pub id: String,
    /// ACTIVE with the service's constraints admitting it.
    pub eligible: bool,
    /// DRAINING (for the stop reason).
    pub draining: bool,
}

/// One task of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonTask {
    pub id: String,
    pub deployment: String,
    /// Where it runs, or the instance it is pinned to while pending.
    pub instance: Option<String>,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    pub health: HealthStatus,
    pub has_health_check: bool,
    pub created_at: f64,
}

impl DaemonTask {
    fn active(&self) -> bool {
        self.desired_status != TaskStatus::Stopped && self.last_status != TaskStatus::Stopped
    }

    fn healthy(&self) -> bool {
        self.active()
            && self.last_status == TaskStatus::Running
            && match self.health {
                HealthStatus::Healthy => true,
                HealthStatus::Unknown => !self.has_health_check,
                HealthStatus::Unhealthy => false,
            }
    }
}

/// The decisions of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonPlan {
    /// Instances to start a primary task on.
    pub start: Vec<String>,
    /// Task id and stopped reason.
    pub stop: Vec<(String, String)>,
    /// Eligible instances: the service's desired count.
    pub desired: u32,
    /// Every eligible instance runs a healthy primary task and nothing else.
    pub complete: bool,
}

/// One pass over a DAEMON service whose PRIMARY deployment is `primary`.
pub fn plan_daemon(hosts: &[DaemonHost], tasks: &[DaemonTask], primary: &str) -> DaemonPlan {
    let mut plan = DaemonPlan::default();
    let eligible = |id: &str| hosts.iter().any(|h| h.id == id && h.eligible);
    let active: Vec<&DaemonTask> = tasks.iter().filter(|t| t.active()).collect();
    // 1. Tasks where the service may no longer run.
    for t in &active {
        let Some(at) = t.instance.as_deref() else {
            // Not pinned: not a daemon task this planner started; replace it.
            plan.stop.push((t.id.clone(), "Daemon task without an instance".into()));
            continue;
        };
        if !eligible(at) {
            let reason = match hosts.iter().find(|h| h.id == at) {
                Some(h) if h.draining => "Instance is draining",
                Some(_) => "Instance no longer matches the service's placement constraints",
                None => "Instance deregistered",
            };
            plan.stop.push((t.id.clone(), reason.into()));
        }
    }
    let mut in_transition = false;
    let mut outdated: Vec<(&str, &DaemonTask)> = Vec::new();
    for h in hosts.iter().filter(|h| h.eligible) {
        plan.desired += 1;
        let mut here: Vec<&DaemonTask> = active
            .iter()
            .filter(|t| t.instance.as_deref() == Some(h.id.as_str()))
            .copied()
            .collect();
        // 2. The best first: primary, healthy, oldest.
        here.sort_by(|a, b| {
            (b.deployment == primary)
                .cmp(&(a.deployment == primary))
                .then_with(|| b.healthy().cmp(&a.healthy()))
                .then_with(|| a.created_at.total_cmp(&b.created_at))
        });
        let Some(keep) = here.first() else {
            // 3. A new (or emptied) instance.
            plan.start.push(h.id.clone());
            continue;
        };
        for extra in &here[1..] {
            plan.stop
                .push((extra.id.clone(), "Duplicate daemon task on the instance".into()));
        }
        if keep.deployment != primary {
            outdated.push((h.id.as_str(), keep));
        } else if !keep.healthy() {
            in_transition = true;
        }
    }
    // 4. One instance at a time moves to the primary deployment.
    if !in_transition && let Some((host, old)) = outdated.first() {
        plan.stop.push((old.id.clone(), "Deployment replaced".into()));
        plan.start.push((*host).to_string());
    }
    plan.complete = plan.start.is_empty() && plan.stop.is_empty() && !in_transition && outdated.is_empty();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> DaemonHost {
        DaemonHost {
            id: id.into(),
            eligible: true,
            draining: false,
        }
    }

    fn task(id: &str, deployment: &str, instance: &str, healthy: bool) -> DaemonTask {
        DaemonTask {
            id: id.into(),
            deployment: deployment.into(),
            instance: Some(instance.into()),
            last_status: if healthy {
                TaskStatus::Running
            } else {
                TaskStatus::Pending
            },
            desired_status: TaskStatus::Running,
            health: HealthStatus::Unknown,
            has_health_check: false,
            created_at: 0.0,
        }
    }

    #[test]
    fn one_task_per_eligible_instance() {
        let mut hosts = vec![host("i-1"), host("i-2"), host("i-3")];
        hosts[2].eligible = false;
        let plan = plan_daemon(&hosts, &[task("a", "d1", "i-1", true)], "d1");
        assert_eq!(plan.start, ["i-2"]);
        assert!(plan.stop.is_empty());
        assert_eq!(plan.desired, 2);
        assert!(!plan.complete);
    }

    #[test]
    fn a_joining_instance_gets_one_and_a_draining_one_loses_its_task() {
        let mut hosts = vec![host("i-1"), host("i-2"), host("i-3")];
        hosts[1].eligible = false;
        hosts[1].draining = true;
        let tasks = [task("a", "d1", "i-1", true), task("b", "d1", "i-2", true)];
        let plan = plan_daemon(&hosts, &tasks, "d1");
        assert_eq!(plan.start, ["i-3"]);
        assert_eq!(plan.stop, [("b".to_string(), "Instance is draining".to_string())]);
        assert_eq!(plan.desired, 2);
    }

    #[test]
    fn a_deregistered_instance_loses_its_task_and_duplicates_go() {
        let mut older = task("a1", "d1", "i-1", true);
        older.created_at = 1.0;
        let mut newer = task("a2", "d1", "i-1", true);
        newer.created_at = 2.0;
        let plan = plan_daemon(&[host("i-1")], &[newer, older, task("g", "d1", "i-gone", true)], "d1");
        assert_eq!(
            plan.stop,
            [
                ("g".to_string(), "Instance deregistered".to_string()),
                ("a2".to_string(), "Duplicate daemon task on the instance".to_string())
            ]
        );
        assert!(plan.start.is_empty());
    }

    #[test]
    fn deployments_roll_host_by_host() {
        let hosts = [host("i-1"), host("i-2"), host("i-3")];
        let old = [
            task("a", "d1", "i-1", true),
            task("b", "d1", "i-2", true),
            task("c", "d1", "i-3", true),
        ];
        // d2 is primary: the first host moves.
        let plan = plan_daemon(&hosts, &old, "d2");
        assert_eq!(plan.stop, [("a".to_string(), "Deployment replaced".to_string())]);
        assert_eq!(plan.start, ["i-1"]);
        // Its replacement is not healthy yet: nothing else moves.
        let mut now = old.to_vec();
        now[0] = task("a2", "d2", "i-1", false);
        let plan = plan_daemon(&hosts, &now, "d2");
        assert!(plan.stop.is_empty() && plan.start.is_empty(), "{plan:?}");
        // Healthy: the next host moves.
        now[0] = task("a2", "d2", "i-1", true);
        let plan = plan_daemon(&hosts, &now, "d2");
        assert_eq!(plan.stop, [("b".to_string(), "Deployment replaced".to_string())]);
        assert_eq!(plan.start, ["i-2"]);
        // All on d2 and healthy: complete.
        now[1] = task("b2", "d2", "i-2", true);
        now[2] = task("c2", "d2", "i-3", true);
        assert!(plan_daemon(&hosts, &now, "d2").complete);
    }
}
