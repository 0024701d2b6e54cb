//! Clusters and the container instances (hosts) registered to them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::check_name;
use crate::{Resources, Timestamp, Validate, ValidationError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValuePair {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A cluster: a namespace of instances, tasks and services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub cluster_name: String,
    pub cluster_arn: String,
    /// ACTIVE or INACTIVE (after deletion).
    pub status: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub settings: Vec<KeyValuePair>,
    pub created_at: Timestamp,
}

impl Validate for Cluster {
    fn validate(&self) -> Result<(), ValidationError> {
        check_name("clusterName", &self.cluster_name)?;
        for (i, t) in self.tags.iter().enumerate() {
            if t.key.is_empty() || t.key.len() > 128 {
                return Err(ValidationError::new(
                    format!("tags[{i}].key"),
                    "must be 1 to 128 characters",
                ));
            }
        }
        Ok(())
    }
}

/// ACTIVE, DRAINING (no new placements, service tasks move away) or INACTIVE
/// (deregistered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    Active,
    Draining,
    Inactive,
}

/// An attribute on a container instance (`ecs.availability-zone`, custom).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub agent_hash: String,
    #[serde(default)]
    pub docker_version: String,
}

/// A host registered to a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstance {
    /// Short id (the last ARN segment).
    pub id: String,
    pub cluster: String,
    pub ec2_instance_id: String,
    pub status: InstanceStatus,
    pub agent_connected: bool,
    pub registered: Resources,
    pub remaining: Resources,
    /// Dynamic host port range `[low, high]` the scheduler may hand out.
    pub port_range: (u16, u16),
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub version_info: VersionInfo,
    #[serde(default)]
    pub running_tasks_count: u32,
    #[serde(default)]
    pub pending_tasks_count: u32,
    pub registered_at: Timestamp,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Validate for ContainerInstance {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.id.is_empty() {
            return Err(ValidationError::new("containerInstance", "must not be empty"));
        }
        check_name("cluster", &self.cluster)?;
        if self.registered.cpu == 0 {
            return Err(ValidationError::new("totalResources.CPU", "must be greater than 0"));
        }
        if self.registered.memory_mib == 0 {
            return Err(ValidationError::new("totalResources.MEMORY", "must be greater than 0"));
        }
        if self.port_range.0 > self.port_range.1 {
            return Err(ValidationError::new(
                "portRange",
                format!(
                    "low port {} is above high port {}",
                    self.port_range.0, self.port_range.1
                ),
            ));
        }
        if self.remaining.cpu > self.registered.cpu || self.remaining.memory_mib > self.registered.memory_mib {
            return Err(ValidationError::new(
                "remainingResources",
                "exceed the registered resources",
            ));
        }
        for name in self.attributes.keys() {
            if name.is_empty() || name.len() > 128 {
                return Err(ValidationError::new("attributes.name", "must be 1 to 128 characters"));
            }
        }
        Ok(())
    }
}
