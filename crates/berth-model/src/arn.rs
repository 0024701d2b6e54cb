//! Amazon Resource Names in ECS form: `arn:aws:ecs:REGION:ACCOUNT:TYPE/...`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_ACCOUNT: &str = "123456789012";

/// Where ARNs are minted: region and account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArnContext {
    pub region: String,
    pub account: String,
}

impl Default for ArnContext {
    fn default() -> Self {
        ArnContext {
            region: DEFAULT_REGION.to_string(),
            account: DEFAULT_ACCOUNT.to_string(),
        }
    }
}

/// The resource types that carry ECS ARNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    Cluster,
    ContainerInstance,
    TaskDefinition,
    Task,
    Service,
    Container,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::ContainerInstance => "container-instance",
            ResourceType::TaskDefinition => "task-definition",
            ResourceType::Task => "task",
            ResourceType::Service => "service",
            ResourceType::Container => "container",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cluster" => ResourceType::Cluster,
            "container-instance" => ResourceType::ContainerInstance,
            "task-definition" => ResourceType::TaskDefinition,
            "task" => ResourceType::Task,
            "service" => ResourceType::Service,
            "container" => ResourceType::Container,
            _ => return None,
        })
    }
}

/// A parsed ECS ARN. `path` is what follows `TYPE/`, e.g. `CLUSTER/ID` for a
/// task (the long ARN format) or `family:3` for a task definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arn {
    pub region: String,
    pub account: String,
    pub resource: ResourceType,
    pub path: String,
}

impl Arn {
    pub fn new(ctx: &ArnContext, resource: ResourceType, path: impl Into<String>) -> Self {
        Arn {
            region: ctx.region.clone(),
            account: ctx.account.clone(),
            resource,
            path: path.into(),
        }
    }

    /// Parses `arn:aws:ecs:REGION:ACCOUNT:TYPE/PATH`; `field` names the member
    /// in errors.
    pub fn parse(s: &str, field: &str) -> Result<Self, ValidationError> {
        let bad = |reason: &str| ValidationError::new(field, format!("'{s}' is not a valid ECS ARN: {reason}"));
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(_partition), Some("ecs"), Some(region), Some(account), Some(rest)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("expected arn:aws:ecs:REGION:ACCOUNT:TYPE/NAME"));
        };
        let (kind, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("missing '/' after the resource type"))?;
        let resource = ResourceType::parse(kind).ok_or_else(|| bad("unknown resource type"))?;
        if path.is_empty() {
            return Err(bad("empty resource name"));
        }
        Ok(Arn {
            region: region.to_string(),
            account: account.to_string(),
            resource,
            path: path.to_string(),
        })
    }

    /// The last path segment: a name, id or `family:revision`.
    pub fn last_segment(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:aws:ecs:{}:{}:{}/{}",
            self.region,
            self.account,
            self.resource.as_str(),
            self.path
        )
    }
}

/// Accepts a name or an ARN of `resource` type and returns the short name
/// (last segment), as ECS does wherever it takes "name or ARN".
pub fn short_name(input: &str, resource: ResourceType, field: &str) -> Result<String, ValidationError> {
    if input.starts_with("arn:") {
        let arn = Arn::parse(input, field)?;
        if arn.resource != resource {
            return Err(ValidationError::new(
                field,
                format!(
                    "expected a {} ARN, got a {} ARN",
                    resource.as_str(),
                    arn.resource.as_str()
                ),
            ));
        }
        Ok(arn.last_segment().to_string())
    } else if input.is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else {
        Ok(input.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_names() {
        let ctx = ArnContext::default();
        let arn = Arn::new(&ctx, ResourceType::Task, "default/abc123");
        let s = arn.to_string();
        assert_eq!(s, "arn:aws:ecs:us-east-1:123456789012:task/default/abc123");
        assert_eq!(Arn::parse(&s, "task").unwrap(), arn);
        assert_eq!(short_name(&s, ResourceType::Task, "task").unwrap(), "abc123");
        assert_eq!(short_name("abc", ResourceType::Task, "task").unwrap(), "abc");
        let err = short_name(&s, ResourceType::Cluster, "cluster").unwrap_err();
        assert!(err.to_string().contains("cluster"), "{err}");
        assert!(Arn::parse("arn:aws:s3:::bucket", "x").is_err());
    }
}
