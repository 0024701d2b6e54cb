//! Task definitions: `family:revision` and their container definitions.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::validate::{check_name, check_range};
use crate::{KeyValuePair, Protocol, Resources, Timestamp, Validate, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    Awsvpc,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskDefinitionStatus {
    #[default]
    Active,
    Inactive,
    DeleteInProgress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    /// 0 or absent: a dynamic host port from the instance's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub command: Vec<String>,
    #[serde(default = "default_interval")]
    pub interval: u32,
    #[serde(default = "default_timeout")]
    pub timeout: u32,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub start_period: u32,
}

fn default_interval() -> u32 {
    30
}
fn default_timeout() -> u32 {
    5
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    pub container_name: String,
    /// START, COMPLETE, SUCCESS or HEALTHY.
    pub condition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_point: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValuePair>,
    #[serde(default)]
    pub cpu: u32,
    /// Hard limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Soft limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default = "default_true")]
    pub essential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ContainerDependency>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementConstraint {
    /// `distinctInstance` or `memberOf`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

impl Validate for PlacementConstraint {
    fn validate(&self) -> Result<(), ValidationError> {
        match (self.kind.as_str(), &self.expression) {
            ("distinctInstance", _) => Ok(()),
            ("memberOf", Some(e)) if !e.trim().is_empty() => Ok(()),
            ("memberOf", _) => Err(ValidationError::new("expression", "memberOf needs an expression")),
            (other, _) => Err(ValidationError::new(
                "type",
                format!("'{other}' is not a constraint type; expected distinctInstance or memberOf"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    pub family: String,
    pub revision: u32,
    pub task_definition_arn: String,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraint>,
    /// Task-level CPU units / memory MiB, as strings on the ECS wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default)]
    pub status: TaskDefinitionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistered_at: Option<Timestamp>,
}

impl TaskDefinition {
    /// `family:revision`.
    pub fn family_revision(&self) -> String {
        format!("{}:{}", self.family, self.revision)
    }

    /// What one task of this definition needs from an instance: task-level
    /// cpu/memory when set, else the sum over containers (memory from the hard
    /// limit, else the reservation), plus each static host port.
    pub fn demand(&self) -> Resources {
        let mut r = Resources::default();
        for c in &self.container_definitions {
            r.cpu += u64::from(c.cpu);
            r.memory_mib += u64::from(c.memory.or(c.memory_reservation).unwrap_or(0));
            for pm in &c.port_mappings {
                if let Some(hp) = pm.host_port.filter(|p| *p != 0) {
                    r.ports.insert(pm.protocol, hp);
                }
            }
        }
        if let Some(cpu) = self.cpu.as_deref().and_then(|s| s.parse::<u64>().ok()) {
            r.cpu = cpu;
        }
        if let Some(mem) = self.memory.as_deref().and_then(|s| s.parse::<u64>().ok()) {
            r.memory_mib = mem;
        }
        r
    }
}

impl Validate for TaskDefinition {
    fn validate(&self) -> Result<(), ValidationError> {
        check_name("family", &self.family)?;
        if self.container_definitions.is_empty() {
            return Err(ValidationError::new(
                "containerDefinitions",
                "at least one container is required",
            ));
        }
        if self.container_definitions.len() > 10 {
            return Err(ValidationError::new(
                "containerDefinitions",
                "at most 10 containers are allowed",
            ));
        }
        let mut names = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, c) in self.container_definitions.iter().enumerate() {
            let at = format!("containerDefinitions[{i}]");
            check_name("name", &c.name).map_err(|e| e.within(&at))?;
            if !names.insert(c.name.as_str()) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("duplicate container name '{}'", c.name),
                ));
            }
            if c.image.is_empty() {
                return Err(ValidationError::new(format!("{at}.image"), "is required"));
            }
            check_range(&format!("{at}.cpu"), i64::from(c.cpu), 0, 10 * 1024 * 1024)?;
            if let Some(m) = c.memory {
                check_range(&format!("{at}.memory"), i64::from(m), 6, 16 * 1024 * 1024)?;
            }
            if let Some(m) = c.memory_reservation {
                check_range(&format!("{at}.memoryReservation"), i64::from(m), 4, 16 * 1024 * 1024)?;
                if c.memory.is_some_and(|hard| hard < m) {
                    return Err(ValidationError::new(
                        format!("{at}.memoryReservation"),
                        "must not be greater than memory",
                    ));
                }
            }
            if self.memory.is_none() && c.memory.is_none() && c.memory_reservation.is_none() {
                return Err(ValidationError::new(
                    format!("{at}.memory"),
                    "container memory or memoryReservation is required when the task sets no memory",
                ));
            }
            for (j, pm) in c.port_mappings.iter().enumerate() {
                if pm.container_port == 0 {
                    return Err(ValidationError::new(
                        format!("{at}.portMappings[{j}].containerPort"),
                        "must be between 1 and 65535",
                    ));
                }
                if let Some(hp) = pm.host_port.filter(|p| *p != 0)
                    && !host_ports.insert((pm.protocol, hp))
                {
                    return Err(ValidationError::new(
                        format!("{at}.portMappings[{j}].hostPort"),
                        format!("host port {hp} is used twice in this task definition"),
                    ));
                }
            }
            if let Some(hc) = &c.health_check {
                match hc.command.first().map(String::as_str) {
                    Some("CMD") | Some("CMD-SHELL") if hc.command.len() > 1 => {}
                    _ => {
                        return Err(ValidationError::new(
                            format!("{at}.healthCheck.command"),
                            "must start with CMD or CMD-SHELL followed by the command",
                        ));
                    }
                }
                check_range(&format!("{at}.healthCheck.interval"), i64::from(hc.interval), 1, 300)?;
                check_range(&format!("{at}.healthCheck.timeout"), i64::from(hc.timeout), 1, 120)?;
                check_range(&format!("{at}.healthCheck.retries"), i64::from(hc.retries), 1, 10)?;
                check_range(
                    &format!("{at}.healthCheck.startPeriod"),
                    i64::from(hc.start_period),
                    0,
                    300,
                )?;
            }
            if let Some(t) = c.stop_timeout {
                check_range(&format!("{at}.stopTimeout"), i64::from(t), 0, 120)?;
            }
        }
        for (i, c) in self.container_definitions.iter().enumerate() {
            for (j, d) in c.depends_on.iter().enumerate() {
                let at = format!("containerDefinitions[{i}].dependsOn[{j}]");
                if !names.contains(d.container_name.as_str()) || d.container_name == c.name {
                    return Err(ValidationError::new(
                        format!("{at}.containerName"),
                        format!(
                            "'{}' is not another container of this task definition",
                            d.container_name
                        ),
                    ));
                }
                if !matches!(d.condition.as_str(), "START" | "COMPLETE" | "SUCCESS" | "HEALTHY") {
                    return Err(ValidationError::new(
                        format!("{at}.condition"),
                        "must be START, COMPLETE, SUCCESS or HEALTHY",
                    ));
                }
            }
        }
        for field in [("cpu", &self.cpu), ("memory", &self.memory)] {
            if let Some(v) = field.1
                && v.parse::<u64>().map_or(true, |n| n == 0)
            {
                return Err(ValidationError::new(
                    field.0,
                    format!("'{v}' is not a positive integer"),
                ));
            }
        }
        for (i, pc) in self.placement_constraints.iter().enumerate() {
            pc.validate()
                .map_err(|e| e.within(&format!("placementConstraints[{i}]")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TaskDefinition {
        serde_json::from_str(
            r#"{"family":"web","revision":1,"taskDefinitionArn":"x",
                "containerDefinitions":[{"name":"app","image":"echo","cpu":256,"memory":512,
                  "portMappings":[{"containerPort":8080,"hostPort":80},{"containerPort":9090}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn demand_sums_containers_and_static_ports() {
        let d = td().demand();
        assert_eq!((d.cpu, d.memory_mib), (256, 512));
        assert!(d.ports.contains(Protocol::Tcp, 80));
        assert_eq!(d.ports.len(), 1, "dynamic ports are not static demand");
        assert!(td().container_definitions[0].essential, "essential defaults to true");
    }

    #[test]
    fn validation_names_the_field() {
        td().validate().unwrap();
        let mut bad = td();
        bad.container_definitions[0].memory = None;
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "containerDefinitions[0].memory");
        let mut bad = td();
        bad.container_definitions[0].depends_on.push(ContainerDependency {
            container_name: "nope".into(),
            condition: "START".into(),
        });
        assert_eq!(
            bad.validate().unwrap_err().field,
            "containerDefinitions[0].dependsOn[0].containerName"
        );
        let mut bad = td();
        bad.family = "has space".into();
        assert_eq!(bad.validate().unwrap_err().field, "family");
    }
}
