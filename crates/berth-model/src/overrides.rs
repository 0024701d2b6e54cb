//! What a RunTask or StartTask call changes about its task definition
//! (`overrides`) and where its task's ENI goes (`networkConfiguration`).
//!
//! [`TaskOverride::apply`] is the one place overrides take effect: the API
//! computes the task's demand from its result, and the gateway sends its
//! result to the agent, so the resources reserved and the process started
//! always agree.

use serde::{Deserialize, Serialize};

use crate::{KeyValuePair, TaskDefinition, Validate, ValidationError};

/// One container's overrides. Members are serialized even when absent
/// (`null`), as task records have always been written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub environment: Option<Vec<KeyValuePair>>,
    #[serde(default)]
    pub cpu: Option<u32>,
    #[serde(default)]
    pub memory: Option<u32>,
    #[serde(default)]
    pub memory_reservation: Option<u32>,
}

/// A task's `overrides`: per-container changes and task-level cpu/memory
/// (strings, as on the ECS wire).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub task_role_arn: Option<String>,
    #[serde(default)]
    pub execution_role_arn: Option<String>,
}

impl TaskOverride {
    /// `td` as the task runs it: each container override replaces the
    /// command, cpu, memory and memory reservation it sets and adds or
    /// replaces environment variables by name; task-level cpu and memory
    /// replace the definition's. The result is validated; errors name the
    /// override at fault (`overrides.containerOverrides[0].name`, ...).
    pub fn apply(&self, td: &TaskDefinition) -> Result<TaskDefinition, ValidationError> {
        let mut out = td.clone();
        for (i, co) in self.container_overrides.iter().enumerate() {
            let at = format!("overrides.containerOverrides[{i}]");
            let name = co
                .name
                .as_deref()
                .ok_or_else(|| ValidationError::new(format!("{at}.name"), "is required"))?;
            let c = out
                .container_definitions
                .iter_mut()
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    ValidationError::new(
                        format!("{at}.name"),
                        format!("no container '{name}' in the task definition"),
                    )
                })?;
            if let Some(cmd) = &co.command {
                c.command.clone_from(cmd);
            }
            for kv in co.environment.iter().flatten() {
                match c.environment.iter_mut().find(|e| e.name == kv.name) {
                    Some(e) => e.value.clone_from(&kv.value),
                    None => c.environment.push(kv.clone()),
                }
            }
            if let Some(cpu) = co.cpu {
                c.cpu = cpu;
            }
            if let Some(m) = co.memory {
                c.memory = Some(m);
            }
            if let Some(m) = co.memory_reservation {
                c.memory_reservation = Some(m);
            }
        }
        if self.cpu.is_some() {
            out.cpu.clone_from(&self.cpu);
        }
        if self.memory.is_some() {
            out.memory.clone_from(&self.memory);
        }
        out.validate()
            .map_err(|e| ValidationError::new(format!("overrides ({})", e.field), e.reason))?;
        Ok(out)
    }
}

/// `awsvpcConfiguration` of a task: the subnets and security groups of the
/// ENI it gets. Kept as ECS sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsVpcConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<String>,
}

/// A task's (or service's) `networkConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awsvpc_configuration: Option<AwsVpcConfiguration>,
}

impl NetworkConfiguration {
    /// The security groups the task's ENI is bound to.
    pub fn security_groups(&self) -> Vec<String> {
        self.awsvpc_configuration
            .as_ref()
            .and_then(|v| v.security_groups.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn td() -> TaskDefinition {
        serde_json::from_value(json!({
            "family": "web", "revision": 1,
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1",
            "containerDefinitions": [
                {"name": "app", "image": "x", "command": ["serve"], "cpu": 128, "memory": 64,
                 "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "y", "command": ["idle"], "memory": 16}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn container_and_task_overrides_reach_the_definition() {
        let ov: TaskOverride = serde_json::from_value(json!({
            "containerOverrides": [{
                "name": "app", "command": ["echo", "hi"], "memory": 256,
                "environment": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]
            }],
            "cpu": "512", "memory": "1024"
        }))
        .unwrap();
        let out = ov.apply(&td()).unwrap();
        let app = &out.container_definitions[0];
        assert_eq!(app.command, vec!["echo", "hi"]);
        assert_eq!(app.memory, Some(256));
        assert_eq!(app.cpu, 128);
        let env: Vec<(&str, &str)> = app
            .environment
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, vec![("A", "1"), ("B", "two"), ("C", "3")]);
        assert_eq!(out.container_definitions[1], td().container_definitions[1]);
        assert_eq!((out.cpu.as_deref(), out.memory.as_deref()), (Some("512"), Some("1024")));
        let demand = out.demand();
        assert_eq!((demand.cpu, demand.memory_mib), (512, 1024));
    }

    #[test]
    fn no_overrides_change_nothing_and_bad_ones_name_the_member() {
        assert_eq!(TaskOverride::default().apply(&td()).unwrap(), td());
        let ov = TaskOverride {
            container_overrides: vec![ContainerOverride {
                name: Some("nope".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = ov.apply(&td()).unwrap_err();
        assert_eq!(e.field, "overrides.containerOverrides[0].name");
        let ov = TaskOverride {
            container_overrides: vec![ContainerOverride::default()],
            ..Default::default()
        };
        assert_eq!(
            ov.apply(&td()).unwrap_err().field,
            "overrides.containerOverrides[0].name"
        );
    }
}
