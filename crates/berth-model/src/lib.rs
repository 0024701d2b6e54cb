//! Berth's domain model, in Amazon ECS terms and units: the resource vector
//! every crate shares, clusters, container instances, task definitions,
//! tasks, services, ARNs, and validation whose errors name the offending field
//! (they become `InvalidParameterException` messages at the API).
//!
//! This crate is plain data: it does no I/O, reads no clock and must not
//! depend on any other Berth crate. Serde shapes follow the ECS JSON API
//! (camelCase members, timestamps as epoch seconds) so the API layer can
//! serve them directly.

mod arn;
mod cluster;
mod lb;
mod overrides;
mod resources;
mod service;
mod task;
mod taskdef;
mod tiers;
mod validate;

pub use arn::{Arn, ArnContext, DEFAULT_ACCOUNT, DEFAULT_REGION, ResourceType, short_name};
pub use cluster::{Attribute, Cluster, ContainerInstance, InstanceStatus, KeyValuePair, Tag, VersionInfo};
pub use lb::{
    LbAlgorithm, Listener, ListenerRule, LoadBalancerDef, TargetGroup, TargetHealthCheck, TargetHealthRecord,
    TargetRecord, target_group_name,
};
pub use overrides::{AwsVpcConfiguration, ContainerOverride, NetworkConfiguration, TaskOverride};
pub use resources::{Eni, PortSet, Protocol, ResourceKind, Resources, Shortfall};
pub use service::{
    Deployment, DeploymentCircuitBreaker, DeploymentConfiguration, DeploymentStatus, LoadBalancer, PlacementStrategy,
    RolloutState, Service, ServiceEvent, ServiceStatus,
};
pub use task::{Container, HealthStatus, NetworkBinding, Task, TaskStatus};
pub use taskdef::{
    ContainerDefinition, ContainerDependency, HealthCheck, NetworkMode, PlacementConstraint, PortMapping,
    TaskDefinition, TaskDefinitionStatus,
};
pub use tiers::{CapacityGuarantee, DEFAULT_TIER, GUARANTEE_TAG, TIER_TAG, guarantees_from_tags, tier_from_tags};
pub use validate::{Validate, ValidationError};

/// Seconds since the Unix epoch, as ECS timestamps are on the wire.
pub type Timestamp = f64;
