//! Scenario tests: a tiny simulated world applies each plan (started tasks
//! become healthy after a few steps, stopped ones vanish) and the invariants
//! are checked at every step, not only at the end.

use super::*;
use berth_model::{
    Deployment, DeploymentCircuitBreaker, DeploymentConfiguration, DeploymentStatus, HealthStatus, RolloutState,
    ServiceStatus,
};

struct World {
    svc: Service,
    state: ServiceState,
    tasks: Vec<(TaskView, u32)>,
    next_id: usize,
    now: f64,
    /// Task definitions whose tasks crash right after starting.
    crashing: Vec<String>,
    /// Task definitions whose tasks turn healthy, then crash a few ticks later.
    late_crashing: Vec<String>,
    draining: Vec<String>,
    td_of: std::collections::BTreeMap<String, String>,
}

fn service(desired: u32, min: u32, max: u32) -> Service {
    let json = format!(
        r#"{{"serviceName":"web","serviceArn":"a","clusterArn":"c","status":"ACTIVE","taskDefinition":"web:1",
            "desiredCount":{desired},"createdAt":0.0,
            "deploymentConfiguration":{{"minimumHealthyPercent":{min},"maximumPercent":{max}}},
            "deployments":[{{"id":"d1","status":"PRIMARY","taskDefinition":"web:1","desiredCount":{desired},
              "rolloutState":"IN_PROGRESS","createdAt":0.0,"updatedAt":0.0}}]}}"#
    );
    serde_json::from_str(&json).unwrap()
}

impl World {
    fn new(svc: Service) -> World {
        World {
            svc,
            state: ServiceState::default(),
            tasks: Vec::new(),
            next_id: 0,
            now: 100.0,
            crashing: Vec::new(),
            late_crashing: Vec::new(),
            draining: Vec::new(),
            td_of: Default::default(),
        }
    }

    fn healthy(&self) -> usize {
        self.tasks.iter().filter(|(t, _)| t.healthy()).count()
    }

    /// One pass plus one tick of the world; returns the plan.
    fn step(&mut self) -> ServicePlan {
        let mut failures = Vec::new();
        // Tick: pending tasks start; crashing ones stop with a failure.
        for (t, age) in &mut self.tasks {
            *age += 1;
            if t.last_status < TaskStatus::Running && *age >= 2 {
                let td = self.td_of.get(&t.deployment).cloned().unwrap_or_default();
                if self.crashing.contains(&td) {
                    t.last_status = TaskStatus::Stopped;
                    failures.push((t.deployment.clone(), "EssentialContainerExited".to_string()));
                } else {
                    t.last_status = TaskStatus::Running;
                    t.health = HealthStatus::Healthy;
                    t.started_at = Some(self.now);
                }
            }
            if t.last_status == TaskStatus::Running && *age >= 5 {
                let td = self.td_of.get(&t.deployment).cloned().unwrap_or_default();
                if self.late_crashing.contains(&td) {
                    t.last_status = TaskStatus::Stopped;
                    failures.push((t.deployment.clone(), "EssentialContainerExited".to_string()));
                }
            }
            t.instance_draining = t.instance.as_ref().is_some_and(|i| self.draining.contains(i));
        }
        self.tasks.retain(|(t, _)| t.last_status != TaskStatus::Stopped);
        let views: Vec<TaskView> = self.tasks.iter().map(|(t, _)| t.clone()).collect();
        let ids = |n: usize| format!("e{n}");
        let input = PassInput {
            service: &self.svc,
            state: &self.state,
            tasks: &views,
            new_failures: &failures,
            now: self.now,
            event_id: &ids,
        };
        let p = plan(&input);
        for (id, _) in &p.stop {
            self.tasks.retain(|(t, _)| &t.id != id);
        }
        for d in &p.service.deployments {
            self.td_of.insert(d.id.clone(), d.task_definition.clone());
        }
        if let Some(s) = &p.start {
            for _ in 0..s.count {
                self.next_id += 1;
                let instance = format!("i-{}", self.next_id % 4);
                self.tasks.push((
                    TaskView {
                        id: format!("t{}", self.next_id),
                        deployment: s.deployment.clone(),
                        last_status: TaskStatus::Provisioning,
                        desired_status: TaskStatus::Running,
                        health: HealthStatus::Unknown,
                        has_health_check: true,
                        started_at: None,
                        created_at: self.now,
                        instance: Some(instance),
                        instance_draining: false,
                        instance_load: 1,
                        protected: false,
                    },
                    0,
                ));
            }
        }
        self.svc = p.service.clone();
        self.state = p.state.clone();
        self.now += 1.0;
        p
    }

    fn run_until_steady(&mut self, min_healthy: usize, steps: usize) {
        for i in 0..steps {
            let before = self.healthy();
            let p = self.step();
            let after = self.healthy();
            if before >= min_healthy {
                assert!(
                    after >= min_healthy,
                    "step {i}: healthy fell to {after} below {min_healthy}: {:?}",
                    p.stop
                );
            }
            if self.state.steady {
                return;
            }
        }
        panic!("not steady after {steps} steps: {:#?}", self.svc);
    }

    fn deploy(&mut self, td: &str, id: &str) {
        self.svc.begin_deployment(Deployment {
            id: id.into(),
            status: DeploymentStatus::Primary,
            task_definition: td.into(),
            desired_count: self.svc.desired_count,
            pending_count: 0,
            running_count: 0,
            failed_tasks: 0,
            rollout_state: RolloutState::InProgress,
            rollout_state_reason: String::new(),
            created_at: self.now,
            updated_at: self.now,
        });
        self.td_of.insert(id.into(), td.into());
    }
}

#[test]
fn fresh_service_starts_desired_and_reaches_steady_state() {
    let mut w = World::new(service(3, 100, 200));
    let p = w.step();
    assert_eq!(p.start.as_ref().map(|s| s.count), Some(3));
    w.run_until_steady(0, 10);
    assert_eq!(w.healthy(), 3);
    assert_eq!(w.svc.deployments[0].rollout_state, RolloutState::Completed);
    assert!(w.svc.events.iter().any(|e| e.message.contains("steady state")));
    assert_eq!(w.state.last_stable.as_deref(), Some("web:1"));
}

#[test]
fn rolling_deployment_never_dips_below_minimum_healthy() {
    for (min, max) in [(100, 200), (50, 100), (100, 150), (75, 125)] {
        let mut w = World::new(service(4, min, max));
        w.run_until_steady(0, 10);
        w.deploy("web:2", "d2");
        let min_healthy = (4 * min as usize).div_ceil(100);
        w.run_until_steady(min_healthy, 40);
        assert_eq!(w.svc.deployments.len(), 1, "min {min} max {max}");
        assert_eq!(w.svc.deployments[0].task_definition, "web:2");
        assert!(w.tasks.iter().all(|(t, _)| t.deployment == "d2"));
        assert_eq!(w.healthy(), 4);
    }
}

#[test]
fn never_more_than_maximum_percent_running() {
    let mut w = World::new(service(4, 100, 150));
    w.run_until_steady(0, 10);
    w.deploy("web:2", "d2");
    for _ in 0..30 {
        w.step();
        assert!(w.tasks.len() <= 6, "{} tasks exceed 150% of 4", w.tasks.len());
    }
}

#[test]
fn circuit_breaker_fails_and_rolls_back() {
    let mut svc = service(4, 100, 200);
    svc.deployment_configuration = DeploymentConfiguration {
        deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
            enable: true,
            rollback: true,
        }),
        ..svc.deployment_configuration
    };
    let mut w = World::new(svc);
    w.run_until_steady(0, 10);
    w.crashing.push("web:2".into());
    w.deploy("web:2", "d2");
    let mut failed = false;
    for _ in 0..200 {
        w.step();
        w.now += 5.0;
        if w.svc.events.iter().any(|e| e.message.contains("rolling back to web:1")) {
            failed = true;
            break;
        }
        assert!(w.healthy() >= 4, "the old tasks keep serving while the new ones crash");
    }
    assert!(failed, "circuit breaker never tripped: {:#?}", w.svc.events);
    w.run_until_steady(4, 40);
    assert_eq!(w.svc.task_definition, "web:1");
    assert!(w.tasks.iter().all(|(t, _)| w.td_of[&t.deployment] == "web:1"));
}

#[test]
fn crash_after_healthy_within_grace_trips_the_breaker() {
    let mut svc = service(4, 100, 200);
    svc.health_check_grace_period_seconds = Some(30);
    svc.deployment_configuration = DeploymentConfiguration {
        deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
            enable: true,
            rollback: true,
        }),
        ..svc.deployment_configuration
    };
    let mut w = World::new(svc);
    for _ in 0..100 {
        w.step();
        if w.state.last_stable.is_some() {
            break;
        }
    }
    assert_eq!(w.state.last_stable.as_deref(), Some("web:1"), "completes once settled");
    w.late_crashing.push("web:2".into());
    w.deploy("web:2", "d2");
    let mut tripped = false;
    for _ in 0..200 {
        w.step();
        assert!(
            w.svc
                .deployments
                .iter()
                .all(|d| d.task_definition != "web:2" || d.rollout_state != RolloutState::Completed),
            "a deployment whose tasks crash within the grace period must not complete"
        );
        if w.svc.events.iter().any(|e| e.message.contains("rolling back to web:1")) {
            tripped = true;
            break;
        }
    }
    assert!(tripped, "circuit breaker never tripped: {:#?}", w.svc.events);
    for _ in 0..200 {
        w.step();
        if w.svc.deployments.len() == 1 && w.svc.deployments[0].rollout_state == RolloutState::Completed {
            break;
        }
    }
    assert_eq!(w.svc.task_definition, "web:1");
    assert_eq!(w.svc.deployments[0].rollout_state, RolloutState::Completed);
}

#[test]
fn crash_loop_backs_off() {
    let mut w = World::new(service(1, 100, 200));
    w.crashing.push("web:1".into());
    let mut delays = Vec::new();
    for _ in 0..40 {
        let p = w.step();
        if let Some(at) = p.wake_at {
            delays.push(at - w.now);
        }
    }
    assert!(w.state.consecutive_failures >= 3);
    assert!(w.svc.events.iter().any(|e| e.message.contains("next launch in")));
    assert!(!delays.is_empty(), "a crash loop must wait before relaunching");
}

#[test]
fn scale_in_spares_protected_and_empties_hosts() {
    let mut w = World::new(service(4, 100, 200));
    w.run_until_steady(0, 10);
    w.tasks[0].0.protected = true;
    let protected = w.tasks[0].0.id.clone();
    // The task alone on its host goes before those on a busy host.
    for (i, (t, _)) in w.tasks.iter_mut().enumerate() {
        t.instance_load = if i == 1 { 1 } else { 5 };
    }
    let lonely = w.tasks[1].0.id.clone();
    w.svc.desired_count = 2;
    let p = w.step();
    let stopped: Vec<&String> = p.stop.iter().map(|(id, _)| id).collect();
    assert_eq!(stopped.len(), 2);
    assert!(!stopped.contains(&&protected));
    assert!(stopped.contains(&&lonely), "{stopped:?}");
    w.svc.desired_count = 1;
    w.step();
    assert_eq!(w.tasks.len(), 1);
    assert_eq!(w.tasks[0].0.id, protected, "the protected task survives");
}

#[test]
fn draining_instance_is_replaced_before_its_task_stops() {
    let mut w = World::new(service(2, 100, 200));
    w.run_until_steady(0, 10);
    let victim = w.tasks[0].0.instance.clone().unwrap();
    w.draining.push(victim.clone());
    w.run_until_steady(2, 20);
    assert!(
        w.tasks
            .iter()
            .all(|(t, _)| t.instance.as_deref() != Some(victim.as_str()) || !t.instance_draining)
    );
}

#[test]
fn deleted_service_drains_to_inactive() {
    let mut w = World::new(service(2, 100, 200));
    w.run_until_steady(0, 10);
    w.svc.status = ServiceStatus::Draining;
    w.svc.desired_count = 0;
    let p = w.step();
    assert_eq!(p.stop.len(), 2);
    let p = w.step();
    assert!(p.inactive);
}
