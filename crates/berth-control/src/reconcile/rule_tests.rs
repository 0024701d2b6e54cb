//! One test (or a few) per rule, each on a hand-built pass: the rule's
//! decision alone, without the others around it.

use berth_model::{
    Deployment, DeploymentCircuitBreaker, DeploymentStatus, HealthStatus, RolloutState, Service, ServiceStatus,
    TaskStatus,
};

use super::*;
use crate::reconcile::{PassInput, ServiceState, Start, TaskView};

const NOW: f64 = 1000.0;

fn deployment(id: &str, td: &str, status: DeploymentStatus, desired: u32) -> Deployment {
    Deployment {
        id: id.into(),
        status,
        task_definition: td.into(),
        desired_count: desired,
        pending_count: 0,
        running_count: 0,
        failed_tasks: 0,
        rollout_state: RolloutState::InProgress,
        rollout_state_reason: String::new(),
        created_at: 0.0,
        updated_at: 0.0,
    }
}

/// `web` wanting `desired` tasks of deployment `d2` (web:2), with `d1`
/// (web:1) the older one; min/max percent 100/200.
fn service(desired: u32) -> Service {
    let json = r#"{"serviceName":"web","serviceArn":"a","clusterArn":"c","status":"ACTIVE",
        "taskDefinition":"web:2","desiredCount":1,"createdAt":0.0}"#;
    let mut svc: Service = serde_json::from_str(json).unwrap();
    svc.desired_count = desired;
    svc.deployments = vec![
        deployment("d2", "web:2", DeploymentStatus::Primary, desired),
        deployment("d1", "web:1", DeploymentStatus::Active, desired),
    ];
    svc
}

/// A healthy RUNNING task of `deployment`, started long ago.
fn task(id: &str, deployment: &str) -> TaskView {
    TaskView {
        id: id.into(),
        deployment: deployment.into(),
        last_status: TaskStatus::Running,
        desired_status: TaskStatus::Running,
        health: HealthStatus::Healthy,
        has_health_check: true,
        started_at: Some(0.0),
        created_at: 0.0,
        instance: Some(format!("i-{id}")),
        instance_draining: false,
        instance_load: 1,
        protected: false,
    }
}

fn pending(id: &str, deployment: &str) -> TaskView {
    TaskView {
        last_status: TaskStatus::Pending,
        health: HealthStatus::Unknown,
        started_at: None,
        ..task(id, deployment)
    }
}

fn ids(n: usize) -> String {
    format!("e{n}")
}

fn input<'a>(svc: &'a Service, state: &'a ServiceState, tasks: &'a [TaskView]) -> PassInput<'a> {
    PassInput {
        service: svc,
        state,
        tasks,
        new_failures: &[],
        now: NOW,
        event_id: &ids,
    }
}

fn stopped<'p>(p: &'p Pass<'_>) -> Vec<&'p str> {
    p.stop.iter().map(|(id, _)| id.as_str()).collect()
}

fn names<'a>(chosen: &[(&'a TaskView, &'static str)]) -> Vec<(&'a str, &'static str)> {
    chosen.iter().map(|(t, r)| (t.id.as_str(), *r)).collect()
}

#[test]
fn failures_count_against_their_deployment_and_back_off() {
    let svc = service(2);
    let state = ServiceState {
        consecutive_failures: 3,
        ..Default::default()
    };
    let failures = [("d2".to_string(), "EssentialContainerExited".to_string())];
    let inp = PassInput {
        new_failures: &failures,
        ..input(&svc, &state, &[])
    };
    let mut p = Pass::new(&inp);
    record_failures(&mut p);
    assert_eq!(p.svc.deployments[0].failed_tasks, 1);
    assert_eq!(p.state.consecutive_failures, 4);
    assert_eq!(p.state.next_launch_at, NOW + 8.0, "1 s doubling: the fourth waits 8 s");
    assert_eq!(
        p.svc.events[0].message,
        "(service web) task failed (EssentialContainerExited); next launch in 8 s (attempt 4)"
    );
    let state = ServiceState {
        consecutive_failures: 30,
        ..Default::default()
    };
    let inp = PassInput {
        new_failures: &failures,
        ..input(&svc, &state, &[])
    };
    let mut p = Pass::new(&inp);
    record_failures(&mut p);
    assert_eq!(p.state.next_launch_at, NOW + 60.0, "capped at a minute");
}

#[test]
fn unhealthy_tasks_past_the_grace_period_are_replaced() {
    let mut svc = service(2);
    svc.health_check_grace_period_seconds = Some(60);
    let sick_old = TaskView {
        health: HealthStatus::Unhealthy,
        ..task("a", "d2")
    };
    let sick_young = TaskView {
        health: HealthStatus::Unhealthy,
        started_at: Some(NOW - 10.0),
        ..task("b", "d2")
    };
    let tasks = [sick_old, sick_young, task("c", "d2")];
    let state = ServiceState::default();
    let inp = input(&svc, &state, &tasks);
    let mut p = Pass::new(&inp);
    replace_unhealthy(&mut p);
    assert_eq!(stopped(&p), ["a"], "b is still within its grace period");
    assert_eq!(p.stop[0].1, "Task failed container health checks");
    assert_eq!(p.svc.deployments[0].failed_tasks, 1);
}

#[test]
fn the_breaker_fails_the_primary_and_rolls_back_to_the_last_stable() {
    let mut svc = service(4);
    svc.deployment_configuration.deployment_circuit_breaker = Some(DeploymentCircuitBreaker {
        enable: true,
        rollback: true,
    });
    svc.deployments[0].failed_tasks = 2;
    let state = ServiceState {
        last_stable: Some("web:1".into()),
        consecutive_failures: 5,
        ..Default::default()
    };
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    trip_circuit_breaker(&mut p);
    assert_eq!(p.svc.events.len(), 0, "2 failures are below the threshold of 3");

    svc.deployments[0].failed_tasks = 3;
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    trip_circuit_breaker(&mut p);
    let primary = p.svc.primary().unwrap();
    assert_eq!(primary.id, "ecs-svc/rollback-e0");
    assert_eq!(primary.task_definition, "web:1");
    assert_eq!(p.svc.task_definition, "web:1");
    let failed = p.svc.deployments.iter().find(|d| d.id == "d2").unwrap();
    assert_eq!(failed.status, DeploymentStatus::Active);
    assert_eq!(failed.rollout_state, RolloutState::Failed);
    assert_eq!(p.state.consecutive_failures, 0);
    let messages: Vec<&str> = p.svc.events.iter().rev().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "(service web) deployment d2 failed: ECS deployment circuit breaker: tasks failed to start (3 failed).",
            "(service web) rolling back to web:1 in deployment ecs-svc/rollback-e0."
        ]
    );
}

#[test]
fn the_breaker_without_rollback_only_fails() {
    let mut svc = service(4);
    svc.deployment_configuration.deployment_circuit_breaker = Some(DeploymentCircuitBreaker {
        enable: true,
        rollback: false,
    });
    svc.deployments[0].failed_tasks = 10;
    let state = ServiceState {
        last_stable: Some("web:1".into()),
        ..Default::default()
    };
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    trip_circuit_breaker(&mut p);
    assert_eq!(p.svc.primary().unwrap().id, "d2");
    assert_eq!(p.svc.primary().unwrap().rollout_state, RolloutState::Failed);
    assert!(Limits::of(&p).primary_failed);
    assert_eq!(threshold(1), 3);
    assert_eq!(threshold(11), 6);
    assert_eq!(threshold(1000), 200);
}

#[test]
fn limits_follow_the_deployment_configuration() {
    let mut svc = service(5);
    svc.deployment_configuration.maximum_percent = 150;
    svc.deployment_configuration.minimum_healthy_percent = 50;
    let state = ServiceState::default();
    let inp = input(&svc, &state, &[]);
    let lim = Limits::of(&Pass::new(&inp));
    assert_eq!(lim.max_total, 7, "5 × 150% rounds down");
    assert_eq!(lim.min_healthy, 3, "5 × 50% rounds up");
    assert_eq!(lim.primary.map(|d| d.id), Some("d2".to_string()));
    svc.status = ServiceStatus::Draining;
    let inp = input(&svc, &state, &[]);
    let lim = Limits::of(&Pass::new(&inp));
    assert_eq!(
        (lim.max_total, lim.min_healthy),
        (0, 0),
        "a deleted service wants nothing"
    );
}

#[test]
fn primary_tasks_start_up_to_desired_within_maximum_percent() {
    let mut svc = service(4);
    svc.deployment_configuration.maximum_percent = 150;
    // Four old tasks, one primary: room for 6 - 5 = 1 more.
    let tasks = [
        task("o1", "d1"),
        task("o2", "d1"),
        task("o3", "d1"),
        task("o4", "d1"),
        task("n1", "d2"),
    ];
    let state = ServiceState::default();
    let inp = input(&svc, &state, &tasks);
    let mut p = Pass::new(&inp);
    let lim = Limits::of(&p);
    assert_eq!(
        start_primary_tasks(&mut p, &lim),
        Some(Start {
            deployment: "d2".into(),
            task_definition: "web:2".into(),
            count: 1
        })
    );
    // A primary task leaving a draining instance does not count as kept.
    let tasks = [TaskView {
        instance_draining: true,
        ..task("n1", "d2")
    }];
    let svc = service(1);
    let inp = input(&svc, &state, &tasks);
    let mut p = Pass::new(&inp);
    let lim = Limits::of(&p);
    assert_eq!(start_primary_tasks(&mut p, &lim).map(|s| s.count), Some(1));
}

#[test]
fn no_start_during_backoff_but_a_wake_up() {
    let svc = service(2);
    let state = ServiceState {
        next_launch_at: NOW + 4.0,
        ..Default::default()
    };
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    let lim = Limits::of(&p);
    assert_eq!(start_primary_tasks(&mut p, &lim), None);
    assert_eq!(p.wake_at, Some(NOW + 4.0));
}

#[test]
fn old_tasks_stand_in_until_replacements_are_healthy() {
    let svc = service(2);
    let state = ServiceState::default();
    // One primary task healthy, one pending: one old task still stands in.
    let tasks = [
        task("o1", "d1"),
        task("o2", "d1"),
        task("n1", "d2"),
        pending("n2", "d2"),
    ];
    let inp = input(&svc, &state, &tasks);
    let p = Pass::new(&inp);
    let lim = Limits::of(&p);
    let leaving = retire_old_tasks(&p, &lim);
    assert_eq!(leaving.len(), 1);
    assert_eq!(leaving[0].1, "Deployment replaced");
    // Both replacements healthy: both old tasks go.
    let tasks = [task("o1", "d1"), task("o2", "d1"), task("n1", "d2"), task("n2", "d2")];
    let inp = input(&svc, &state, &tasks);
    let p = Pass::new(&inp);
    let leaving = retire_old_tasks(&p, &Limits::of(&p));
    assert_eq!(leaving.len(), 2);
}

#[test]
fn tasks_on_draining_instances_leave_with_their_reason() {
    let svc = service(1);
    let state = ServiceState::default();
    let tasks = [
        TaskView {
            instance_draining: true,
            ..task("n1", "d2")
        },
        task("n2", "d2"),
    ];
    let inp = input(&svc, &state, &tasks);
    let p = Pass::new(&inp);
    assert_eq!(
        names(&retire_old_tasks(&p, &Limits::of(&p))),
        [("n1", "Instance is draining")]
    );
}

#[test]
fn a_failed_deployment_keeps_the_old_tasks_that_serve() {
    let mut svc = service(2);
    svc.deployments[0].rollout_state = RolloutState::Failed;
    let state = ServiceState::default();
    let tasks = [task("o1", "d1"), task("o2", "d1")];
    let inp = input(&svc, &state, &tasks);
    let p = Pass::new(&inp);
    assert!(retire_old_tasks(&p, &Limits::of(&p)).is_empty());
}

#[test]
fn scale_in_stops_unprotected_tasks_on_the_emptiest_hosts_first() {
    let svc = service(1);
    let state = ServiceState::default();
    let tasks = [
        TaskView {
            protected: true,
            instance_load: 1,
            ..task("guarded", "d2")
        },
        TaskView {
            instance_load: 9,
            ..task("busy", "d2")
        },
        TaskView {
            instance_load: 1,
            ..task("lonely", "d2")
        },
    ];
    let inp = input(&svc, &state, &tasks);
    let p = Pass::new(&inp);
    let chosen = scale_in(&p, &Limits::of(&p));
    assert_eq!(
        names(&chosen),
        [
            ("lonely", "Scaling activity initiated by deployment"),
            ("busy", "Scaling activity initiated by deployment")
        ]
    );
}

#[test]
fn scale_in_order_prefers_unhealthy_then_empty_hosts_then_newest() {
    let sick = TaskView {
        health: HealthStatus::Unhealthy,
        instance_load: 9,
        ..task("sick", "d2")
    };
    let lonely = TaskView {
        instance_load: 1,
        ..task("lonely", "d2")
    };
    let newer = TaskView {
        instance_load: 1,
        created_at: 5.0,
        ..task("newer", "d2")
    };
    let guarded = TaskView {
        protected: true,
        health: HealthStatus::Unhealthy,
        ..task("guarded", "d2")
    };
    let mut all = [&guarded, &lonely, &newer, &sick];
    all.sort_by(|a, b| scale_in_order(a, b));
    let order: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["sick", "newer", "lonely", "guarded"]);
}

#[test]
fn healthy_tasks_stop_only_above_the_minimum() {
    let svc = service(2);
    let state = ServiceState::default();
    let tasks = [task("a", "d2"), task("b", "d2"), pending("c", "d1")];
    let inp = input(&svc, &state, &tasks);
    let mut p = Pass::new(&inp);
    let lim = Limits::of(&p);
    // 100% of 2 must stay healthy: only the unhealthy one may go.
    let chosen = vec![(&tasks[0], "Deployment replaced"), (&tasks[2], "Deployment replaced")];
    stop_within_minimum_healthy(&mut p, &lim, chosen);
    assert_eq!(stopped(&p), ["c"]);
    // A protected primary task stays even when chosen.
    let guarded = [TaskView {
        protected: true,
        ..task("g", "d2")
    }];
    let svc0 = service(0);
    let inp = input(&svc0, &state, &guarded);
    let mut p = Pass::new(&inp);
    let lim = Limits::of(&p);
    stop_within_minimum_healthy(
        &mut p,
        &lim,
        vec![(&guarded[0], "Scaling activity initiated by deployment")],
    );
    assert!(p.stop.is_empty());
}

#[test]
fn counts_cover_what_remains_after_the_stops() {
    let svc = service(3);
    let state = ServiceState::default();
    let tasks = [task("a", "d2"), pending("b", "d2"), task("c", "d1")];
    let inp = input(&svc, &state, &tasks);
    let mut p = Pass::new(&inp);
    p.stop.push(("c".into(), "Deployment replaced".into()));
    update_counts(&mut p);
    assert_eq!((p.svc.running_count, p.svc.pending_count), (1, 1));
    let d2 = &p.svc.deployments[0];
    assert_eq!((d2.running_count, d2.pending_count, d2.desired_count), (1, 1, 3));
    assert_eq!(p.svc.deployments[1].running_count, 0);
}

#[test]
fn a_deployment_completes_once_its_tasks_settle_and_the_old_ones_are_gone() {
    let mut svc = service(1);
    svc.health_check_grace_period_seconds = Some(30);
    let state = ServiceState {
        consecutive_failures: 2,
        ..Default::default()
    };
    // Healthy but within the grace period: not yet, and wake when it ends.
    let young = [TaskView {
        started_at: Some(NOW - 10.0),
        ..task("n1", "d2")
    }];
    let inp = input(&svc, &state, &young);
    let mut p = Pass::new(&inp);
    complete_deployment(&mut p);
    assert_eq!(p.svc.primary().unwrap().rollout_state, RolloutState::InProgress);
    assert_eq!(p.wake_at, Some(NOW + 20.0));
    assert_eq!(p.state.consecutive_failures, 2);
    assert_eq!(p.svc.deployments.len(), 1, "no old task left: d1 is dropped");
    // Settled, but an old task is still there: not yet.
    let with_old = [task("n1", "d2"), task("o1", "d1")];
    let inp = input(&svc, &state, &with_old);
    let mut p = Pass::new(&inp);
    complete_deployment(&mut p);
    assert_eq!(p.svc.primary().unwrap().rollout_state, RolloutState::InProgress);
    assert_eq!(p.state.consecutive_failures, 0, "a settled task ends the crash streak");
    assert_eq!(p.svc.deployments.len(), 2);
    // Settled and alone: completed.
    let settled = [task("n1", "d2")];
    let inp = input(&svc, &state, &settled);
    let mut p = Pass::new(&inp);
    complete_deployment(&mut p);
    assert_eq!(p.svc.primary().unwrap().rollout_state, RolloutState::Completed);
    assert_eq!(p.state.last_stable.as_deref(), Some("web:2"));
    assert_eq!(p.svc.events[0].message, "(service web) deployment d2 completed.");
}

#[test]
fn report_says_started_and_steady_once() {
    let mut svc = service(1);
    svc.deployments.truncate(1);
    svc.running_count = 1;
    let state = ServiceState::default();
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    report(&mut p, None);
    assert!(p.state.steady);
    assert_eq!(p.svc.events[0].message, "(service web) has reached a steady state.");
    let state = p.state.clone();
    let inp = input(&svc, &state, &[]);
    let mut p = Pass::new(&inp);
    report(&mut p, None);
    assert!(p.svc.events.is_empty(), "steady is reported once, not every pass");
    let start = Start {
        deployment: "d2".into(),
        task_definition: "web:2".into(),
        count: 2,
    };
    let mut p = Pass::new(&inp);
    report(&mut p, Some(&start));
    assert!(!p.state.steady);
    assert_eq!(p.svc.events[0].message, "(service web) has started 2 tasks.");
}

#[test]
fn a_deleted_service_is_inactive_once_its_tasks_are_stopped() {
    let mut svc = service(2);
    svc.status = ServiceStatus::Draining;
    let state = ServiceState::default();
    let tasks = [task("a", "d2")];
    let inp = input(&svc, &state, &tasks);
    assert!(!Pass::new(&inp).finish(None).inactive, "asked to stop is not stopped");
    let gone = [TaskView {
        last_status: TaskStatus::Stopped,
        ..task("a", "d2")
    }];
    let inp = input(&svc, &state, &gone);
    let plan = Pass::new(&inp).finish(None);
    assert!(plan.inactive);
    assert_eq!(plan.service.status, ServiceStatus::Inactive);
}
