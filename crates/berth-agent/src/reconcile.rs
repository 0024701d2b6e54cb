//! The reconcile diff: a pure function from what the agent has and what the
//! server wants to the actions that converge them, keyed by task ARN. Applying
//! the same input twice yields no new action, which is what makes at-least-
//! once delivery safe.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::TaskStatus;
use berth_proto::{DesiredTask, TaskUpdate};

/// What the agent knows of one of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTask {
    pub last_status: TaskStatus,
    /// A stop was already requested.
    pub stopping: bool,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a task the agent does not have.
    Start(DesiredTask),
    /// Stop a running task.
    Stop { task_arn: String, reason: String },
    /// Remove a stopped task's containers and record.
    Forget { task_arn: String },
    /// The server wants stopped a task this agent never had: confirm it.
    ConfirmStopped(DesiredTask),
}

/// The reason given when a task is missing from a full desired set.
pub const NOT_DESIRED: &str = "Task is no longer in the server's desired set for this instance";

fn plan_one(local: Option<&LocalTask>, task: &DesiredTask, out: &mut Vec<Action>) {
    match (task.desired_status, local) {
        (TaskStatus::Stopped, None) => out.push(Action::ConfirmStopped(task.clone())),
        (TaskStatus::Stopped, Some(l)) if l.last_status < TaskStatus::Stopped && !l.stopping => {
            out.push(Action::Stop {
                task_arn: task.task_arn.clone(),
                reason: task
                    .stop_reason
                    .clone()
                    .unwrap_or_else(|| "Task stopped by user".into()),
            });
        }
        (TaskStatus::Stopped, Some(_)) => {}
        // Desired running: start only what we never had. A task we have,
        // even stopped, is never started again.
        (_, None) => out.push(Action::Start(task.clone())),
        (_, Some(_)) => {}
    }
}

/// Actions for a full desired set: everything in it is converged, and
/// everything the agent has that is not in it is stopped, then forgotten.
pub fn plan_full(local: &BTreeMap<String, LocalTask>, desired: &[DesiredTask]) -> Vec<Action> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for task in desired {
        if !seen.insert(task.task_arn.as_str()) {
            continue;
        }
        plan_one(local.get(&task.task_arn), task, &mut out);
    }
    for (arn, l) in local {
        if seen.contains(arn.as_str()) {
            continue;
        }
        if l.last_status >= TaskStatus::Stopped {
            out.push(Action::Forget { task_arn: arn.clone() });
        } else if !l.stopping {
            out.push(Action::Stop {
                task_arn: arn.clone(),
                reason: NOT_DESIRED.into(),
            });
        }
    }
    out
}

/// Actions for one change.
pub fn plan_update(local: &BTreeMap<String, LocalTask>, update: &TaskUpdate) -> Vec<Action> {
    let mut out = Vec::new();
    match update {
        TaskUpdate::Add { task } => plan_one(local.get(&task.task_arn), task, &mut out),
        TaskUpdate::Stop { task_arn, reason } => {
            if let Some(l) = local.get(task_arn)
                && l.last_status < TaskStatus::Stopped
                && !l.stopping
            {
                out.push(Action::Stop {
                    task_arn: task_arn.clone(),
                    reason: reason.clone().unwrap_or_else(|| "Task stopped by user".into()),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(arn: &str, status: TaskStatus) -> DesiredTask {
        serde_json::from_value(serde_json::json!({
            "taskArn": arn, "cluster": "c", "desiredStatus": status,
            "taskDefinition": {"family": "f", "revision": 1, "taskDefinitionArn": "td",
                "containerDefinitions": [{"name": "a", "image": "i", "memory": 64}]}
        }))
        .unwrap()
    }

    fn local(items: &[(&str, TaskStatus, bool)]) -> BTreeMap<String, LocalTask> {
        items
            .iter()
            .map(|(a, s, stopping)| {
                (
                    a.to_string(),
                    LocalTask {
                        last_status: *s,
                        stopping: *stopping,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn full_set_converges_and_is_idempotent() {
        use TaskStatus::*;
        let have = local(&[
            ("a", Running, false),
            ("b", Running, false),
            ("c", Stopped, false),
            ("d", Running, true),
        ]);
        let want = vec![
            task("a", Running),
            task("b", Stopped),
            task("e", Running),
            task("e", Running),
        ];
        let plan = plan_full(&have, &want);
        assert_eq!(
            plan,
            vec![
                Action::Stop {
                    task_arn: "b".into(),
                    reason: "Task stopped by user".into()
                },
                Action::Start(task("e", Running)),
                Action::Forget { task_arn: "c".into() },
            ],
            "a kept, b stopped, e started once, c forgotten, d already stopping"
        );
        // After applying: the same set again asks for nothing new.
        let have = local(&[
            ("a", Running, false),
            ("b", Running, true),
            ("e", Pending, false),
            ("d", Running, true),
        ]);
        let again = plan_full(&have, &want[..3]);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn missing_from_full_set_is_stopped_not_orphaned() {
        let have = local(&[("x", TaskStatus::Running, false)]);
        assert_eq!(
            plan_full(&have, &[]),
            vec![Action::Stop {
                task_arn: "x".into(),
                reason: NOT_DESIRED.into()
            }]
        );
    }

    #[test]
    fn stopped_tasks_never_restart_and_unknown_stops_are_confirmed() {
        let have = local(&[("a", TaskStatus::Stopped, false)]);
        let add = TaskUpdate::Add {
            task: task("a", TaskStatus::Running),
        };
        assert!(plan_update(&have, &add).is_empty());
        let stop_unknown = task("z", TaskStatus::Stopped);
        assert_eq!(
            plan_full(&have, &[task("a", TaskStatus::Running), stop_unknown.clone()]),
            vec![Action::ConfirmStopped(stop_unknown)]
        );
        let stop = TaskUpdate::Stop {
            task_arn: "nope".into(),
            reason: None,
        };
        assert!(plan_update(&have, &stop).is_empty());
    }
}
