//! Services: desired count, deployments, placement, load balancers, events.

use serde::{Deserialize, Serialize};

use crate::validate::{check_name, check_range};
use crate::{PlacementConstraint, Timestamp, Validate, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    Active,
    Draining,
    Inactive,
}

/// Where a deployment stands among a service's deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    /// The newest deployment: new tasks are started for it.
    Primary,
    /// An older deployment whose tasks drain as the primary's become healthy.
    Active,
    /// A deployment with nothing left.
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStrategy {
    /// binpack, spread or random.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Validate for PlacementStrategy {
    fn validate(&self) -> Result<(), ValidationError> {
        match (self.kind.as_str(), self.field.as_deref()) {
            ("random", _) => Ok(()),
            ("binpack", Some("cpu" | "memory" | "CPU" | "MEMORY")) => Ok(()),
            // Berth extension: Fenzo-style fitness over CPU, memory and network together.
            ("binpack", Some("combined")) => Ok(()),
            ("binpack", _) => Err(ValidationError::new(
                "field",
                "binpack needs field cpu, memory or combined (Berth: CPU, memory and network together)",
            )),
            ("spread", Some(f)) if f == "instanceId" || f.starts_with("attribute:") || f == "host" => Ok(()),
            ("spread", _) => Err(ValidationError::new(
                "field",
                "spread needs field instanceId or attribute:NAME",
            )),
            (other, _) => Err(ValidationError::new(
                "type",
                format!("'{other}' is not a strategy; expected binpack, spread or random"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_group_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_name: Option<String>,
    pub container_name: String,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    #[serde(default = "default_max")]
    pub maximum_percent: u32,
    #[serde(default = "default_min")]
    pub minimum_healthy_percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_circuit_breaker: Option<DeploymentCircuitBreaker>,
}

fn default_max() -> u32 {
    200
}
fn default_min() -> u32 {
    100
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        DeploymentConfiguration {
            maximum_percent: default_max(),
            minimum_healthy_percent: default_min(),
            deployment_circuit_breaker: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub status: DeploymentStatus,
    pub task_definition: String,
    pub desired_count: u32,
    #[serde(default)]
    pub pending_count: u32,
    #[serde(default)]
    pub running_count: u32,
    #[serde(default)]
    pub failed_tasks: u32,
    pub rollout_state: RolloutState,
    #[serde(default)]
    pub rollout_state_reason: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: Timestamp,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub service_name: String,
    pub service_arn: String,
    pub cluster_arn: String,
    pub status: ServiceStatus,
    pub task_definition: String,
    pub desired_count: u32,
    #[serde(default)]
    pub running_count: u32,
    #[serde(default)]
    pub pending_count: u32,
    #[serde(default)]
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub placement_strategy: Vec<PlacementStrategy>,
    #[serde(default)]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<u32>,
    /// Newest first, capped.
    #[serde(default)]
    pub events: Vec<ServiceEvent>,
    pub created_at: Timestamp,
}

impl Service {
    /// Most events a service keeps.
    pub const MAX_EVENTS: usize = 100;

    /// Adds an event at the front and drops the oldest past the cap.
    pub fn push_event(&mut self, event: ServiceEvent) {
        self.events.insert(0, event);
        self.events.truncate(Self::MAX_EVENTS);
    }

    /// The deployment new tasks are started for, if any.
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.status == DeploymentStatus::Primary)
    }

    pub fn primary_mut(&mut self) -> Option<&mut Deployment> {
        self.deployments
            .iter_mut()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    /// Makes `d` the primary deployment (listed first, as ECS does); the
    /// previous primary becomes ACTIVE and drains.
    pub fn begin_deployment(&mut self, mut d: Deployment) {
        for old in &mut self.deployments {
            if old.status == DeploymentStatus::Primary {
                old.status = DeploymentStatus::Active;
                old.updated_at = d.created_at;
            }
        }
        d.status = DeploymentStatus::Primary;
        self.task_definition.clone_from(&d.task_definition);
        self.deployments.insert(0, d);
    }
}

impl Validate for Service {
    fn validate(&self) -> Result<(), ValidationError> {
        check_name("serviceName", &self.service_name)?;
        if self.task_definition.is_empty() {
            return Err(ValidationError::new("taskDefinition", "is required"));
        }
        check_range("desiredCount", i64::from(self.desired_count), 0, 100_000)?;
        let dc = &self.deployment_configuration;
        check_range(
            "deploymentConfiguration.maximumPercent",
            i64::from(dc.maximum_percent),
            100,
            1000,
        )?;
        check_range(
            "deploymentConfiguration.minimumHealthyPercent",
            i64::from(dc.minimum_healthy_percent),
            0,
            100,
        )?;
        if self.placement_strategy.len() > 5 {
            return Err(ValidationError::new(
                "placementStrategy",
                "at most 5 strategies are allowed",
            ));
        }
        for (i, s) in self.placement_strategy.iter().enumerate() {
            s.validate().map_err(|e| e.within(&format!("placementStrategy[{i}]")))?;
        }
        for (i, c) in self.placement_constraints.iter().enumerate() {
            c.validate()
                .map_err(|e| e.within(&format!("placementConstraints[{i}]")))?;
        }
        for (i, lb) in self.load_balancers.iter().enumerate() {
            if lb.container_port == 0 {
                return Err(ValidationError::new(
                    format!("loadBalancers[{i}].containerPort"),
                    "must be between 1 and 65535",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_and_events() {
        let s = PlacementStrategy {
            kind: "spread".into(),
            field: Some("attribute:ecs.availability-zone".into()),
        };
        s.validate().unwrap();
        let bad = PlacementStrategy {
            kind: "binpack".into(),
            field: Some("disk".into()),
        };
        assert_eq!(bad.validate().unwrap_err().field, "field");
        let combined = PlacementStrategy {
            kind: "binpack".into(),
            field: Some("combined".into()),
        };
        combined.validate().unwrap();
        let json = r#"{"serviceName":"web","serviceArn":"a","clusterArn":"c","status":"ACTIVE",
            "taskDefinition":"web:1","desiredCount":2,"createdAt":1.0}"#;
        let mut svc: Service = serde_json::from_str(json).unwrap();
        svc.validate().unwrap();
        assert_eq!(svc.deployment_configuration.maximum_percent, 200);
        assert_eq!(svc.primary(), None);
        for i in 0..150 {
            svc.push_event(ServiceEvent {
                id: i.to_string(),
                created_at: f64::from(i),
                message: "m".into(),
            });
        }
        assert_eq!(svc.events.len(), Service::MAX_EVENTS);
        assert_eq!(svc.events[0].id, "149", "newest first");
        svc.deployment_configuration.minimum_healthy_percent = 101;
        assert_eq!(
            svc.validate().unwrap_err().field,
            "deploymentConfiguration.minimumHealthyPercent"
        );
    }

    fn deployment(id: &str, td: &str) -> Deployment {
        Deployment {
            id: id.into(),
            status: DeploymentStatus::Primary,
            task_definition: td.into(),
            desired_count: 1,
            pending_count: 0,
            running_count: 0,
            failed_tasks: 0,
            rollout_state: RolloutState::InProgress,
            rollout_state_reason: String::new(),
            created_at: 0.0,
            updated_at: 0.0,
        }
    }

    #[test]
    fn deployment_status_reads_the_stored_strings() {
        // Records written while the status was a plain string read back.
        let json = r#"{"id":"d1","status":"PRIMARY","taskDefinition":"web:1","desiredCount":1,
            "rolloutState":"IN_PROGRESS","createdAt":1.0,"updatedAt":1.0}"#;
        let d: Deployment = serde_json::from_str(json).unwrap();
        assert_eq!(d.status, DeploymentStatus::Primary);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["status"], "PRIMARY");
        let active = serde_json::json!({"status": "ACTIVE"});
        assert_eq!(
            active["status"],
            serde_json::to_value(DeploymentStatus::Active).unwrap()
        );
        let bad = json.replace("PRIMARY", "PRIMARILY");
        assert!(serde_json::from_str::<Deployment>(&bad).is_err());
    }

    #[test]
    fn a_new_deployment_demotes_the_primary() {
        let json = r#"{"serviceName":"web","serviceArn":"a","clusterArn":"c","status":"ACTIVE",
            "taskDefinition":"web:1","desiredCount":2,"createdAt":1.0}"#;
        let mut svc: Service = serde_json::from_str(json).unwrap();
        svc.begin_deployment(deployment("d1", "web:1"));
        svc.begin_deployment(deployment("d2", "web:2"));
        assert_eq!(svc.primary().map(|d| d.id.as_str()), Some("d2"));
        assert_eq!(svc.deployments[1].status, DeploymentStatus::Active);
        assert_eq!(svc.task_definition, "web:2");
    }
}
