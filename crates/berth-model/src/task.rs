//! Tasks: a placed (or pending) instance of a task definition.

use serde::{Deserialize, Serialize};

use crate::{
    NetworkConfiguration, PlacementConstraint, PlacementStrategy, Resources, TaskDefinition, TaskOverride, Timestamp,
    Validate, ValidationError, validate::check_name,
};

/// The ECS task lifecycle, in order. `lastStatus` only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Provisioning => "PROVISIONING",
            TaskStatus::Pending => "PENDING",
            TaskStatus::Activating => "ACTIVATING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Deactivating => "DEACTIVATING",
            TaskStatus::Stopping => "STOPPING",
            TaskStatus::Deprovisioning => "DEPROVISIONING",
            TaskStatus::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PROVISIONING" => TaskStatus::Provisioning,
            "PENDING" => TaskStatus::Pending,
            "ACTIVATING" => TaskStatus::Activating,
            "RUNNING" => TaskStatus::Running,
            "DEACTIVATING" => TaskStatus::Deactivating,
            "STOPPING" => TaskStatus::Stopping,
            "DEPROVISIONING" => TaskStatus::Deprovisioning,
            "STOPPED" => TaskStatus::Stopped,
            _ => return None,
        })
    }

    /// Whether a status change from `self` to `next` is allowed (forward only,
    /// or staying put).
    pub fn can_become(self, next: TaskStatus) -> bool {
        next >= self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    #[serde(default)]
    pub bind_ip: String,
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default)]
    pub protocol: crate::Protocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub image: String,
    pub last_status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub health_status: HealthStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Short id (the last ARN segment).
    pub id: String,
    pub task_arn: String,
    pub cluster: String,
    pub task_definition_arn: String,
    /// Set once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_instance: Option<String>,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// What the task reserves on its instance (including assigned ports).
    pub demand: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    /// TaskFailedToStart, EssentialContainerExited, UserInitiated, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(default)]
    pub health_status: HealthStatus,
    /// Capacity tier (0 critical, 1 flex); a Berth extension.
    #[serde(default)]
    pub tier: u8,
    /// Why the task is not placed yet; a Berth extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_reasons: Vec<String>,
    #[serde(default)]
    pub version: u64,
    /// What RunTask/StartTask changed about the definition (the agent runs
    /// `overrides.apply(definition)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<TaskOverride>,
    /// The caller's (or service's) constraints, on top of the definition's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_strategy: Vec<PlacementStrategy>,
    /// `awsvpc` tasks: the security groups their ENI is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
}

impl Task {
    /// A new task of `definition` (overrides already applied): wanted
    /// RUNNING, waiting in PROVISIONING for placement, one container per
    /// container definition, reserving the definition's demand. Callers
    /// set the members their call has (group, startedBy, tier, placement).
    pub fn new(
        id: String,
        task_arn: String,
        cluster: &str,
        task_definition_arn: String,
        definition: &TaskDefinition,
        created_at: Timestamp,
    ) -> Task {
        let status = TaskStatus::Provisioning;
        Task {
            id,
            task_arn,
            cluster: cluster.to_string(),
            task_definition_arn,
            container_instance: None,
            last_status: status,
            desired_status: TaskStatus::Running,
            containers: definition
                .container_definitions
                .iter()
                .map(|c| Container {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    last_status: status,
                    exit_code: None,
                    reason: None,
                    runtime_id: None,
                    network_bindings: Vec::new(),
                    health_status: HealthStatus::Unknown,
                })
                .collect(),
            demand: definition.demand(),
            started_by: None,
            group: None,
            created_at,
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            health_status: HealthStatus::Unknown,
            tier: 0,
            pending_reasons: Vec::new(),
            version: 1,
            overrides: None,
            placement_constraints: Vec::new(),
            placement_strategy: Vec::new(),
            network_configuration: None,
        }
    }

    /// Places the task on `instance`: PENDING, with the host ports bound
    /// for each container (`bindings` by container name; containers not
    /// named get none) and `demand` (which includes those ports) reserved.
    pub fn place(&mut self, instance: &str, bindings: &[(String, Vec<NetworkBinding>)], demand: Resources) {
        self.container_instance = Some(instance.to_string());
        self.last_status = TaskStatus::Pending;
        for c in &mut self.containers {
            c.last_status = TaskStatus::Pending;
            c.network_bindings = bindings
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
        }
        self.demand = demand;
        self.pending_reasons.clear();
    }
}

impl Validate for Task {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.id.is_empty() {
            return Err(ValidationError::new("task", "id must not be empty"));
        }
        check_name("cluster", &self.cluster)?;
        if let Some(g) = &self.group
            && g.len() > 255
        {
            return Err(ValidationError::new("group", "must be at most 255 characters"));
        }
        if let Some(s) = &self.started_by
            && s.len() > 128
        {
            return Err(ValidationError::new("startedBy", "must be at most 128 characters"));
        }
        if !matches!(self.desired_status, TaskStatus::Running | TaskStatus::Stopped) {
            return Err(ValidationError::new("desiredStatus", "must be RUNNING or STOPPED"));
        }
        if self.tier > 1 {
            return Err(ValidationError::new("tier", "must be 0 (critical) or 1 (flex)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves_forward_only() {
        assert!(TaskStatus::Pending.can_become(TaskStatus::Running));
        assert!(!TaskStatus::Stopped.can_become(TaskStatus::Running));
        for s in ["PROVISIONING", "RUNNING", "STOPPED", "DEPROVISIONING"] {
            assert_eq!(TaskStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(
            serde_json::to_string(&TaskStatus::Deprovisioning).unwrap(),
            "\"DEPROVISIONING\""
        );
    }
}
