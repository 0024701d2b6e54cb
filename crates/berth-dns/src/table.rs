//! The discovery table: for every service, its tasks that may receive
//! traffic, computed from the store records the follower keeps.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use berth_model::{HealthStatus, ServiceStatus, Task, TaskDefinition, TaskStatus};
use berth_records::ClusterView;
use serde::Serialize;

/// The instance attribute holding the host IP tasks are reached at.
pub const HOST_IP_ATTRIBUTE: &str = "berth.host-ip";

/// One task a service's clients may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub task_arn: String,
    pub task_id: String,
    /// The host IP (instance attribute `berth.host-ip`).
    pub ip: IpAddr,
    /// The dynamic host port of the first port mapping of the first
    /// essential container that has one; `None` when no container maps a port.
    pub port: Option<u16>,
    /// `HEALTHY`, or `UNKNOWN` for tasks whose definition has no health check.
    pub health: HealthStatus,
    pub container_instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// The task definition revision it runs.
    pub task_definition_arn: String,
}

/// One service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoints {
    pub cluster: String,
    pub service: String,
    /// Ordered by task id.
    pub tasks: Vec<Endpoint>,
}

/// What the follower learned about a task definition (they are immutable).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskDefInfo {
    pub has_health_check: bool,
    /// The container and container port whose host binding is the service port.
    pub port: Option<(String, u16)>,
}

impl TaskDefInfo {
    pub fn of(td: &TaskDefinition) -> Self {
        let port = td
            .container_definitions
            .iter()
            .filter(|c| c.essential)
            .chain(td.container_definitions.iter().filter(|c| !c.essential))
            .find_map(|c| c.port_mappings.first().map(|p| (c.name.clone(), p.container_port)));
        TaskDefInfo {
            has_health_check: td.container_definitions.iter().any(|c| c.health_check.is_some()),
            port,
        }
    }
}

/// Every service's endpoints, keyed by lower-cased `(cluster, service)` (DNS
/// names are case-insensitive), as of a store revision.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub revision: i64,
    pub services: BTreeMap<(String, String), ServiceEndpoints>,
}

impl Table {
    /// The endpoints of one service (names compared case-insensitively).
    pub fn get(&self, cluster: &str, service: &str) -> Option<&ServiceEndpoints> {
        self.services
            .get(&(cluster.to_ascii_lowercase(), service.to_ascii_lowercase()))
    }
}

/// Whether a task may receive traffic: RUNNING, still wanted, and healthy
/// (or without health checks).
pub fn serving(t: &Task, has_health_check: bool) -> bool {
    t.last_status == TaskStatus::Running
        && t.desired_status == TaskStatus::Running
        && match t.health_status {
            HealthStatus::Healthy => true,
            HealthStatus::Unknown => !has_health_check,
            HealthStatus::Unhealthy => false,
        }
}

fn host_port(t: &Task, info: &TaskDefInfo) -> Option<u16> {
    if let Some((container, port)) = &info.port {
        let bound = t
            .containers
            .iter()
            .filter(|c| &c.name == container)
            .flat_map(|c| c.network_bindings.iter())
            .find(|b| b.container_port == *port)
            .map(|b| b.host_port);
        if bound.is_some() {
            return bound;
        }
    }
    t.containers
        .iter()
        .flat_map(|c| c.network_bindings.iter())
        .next()
        .map(|b| b.host_port)
}

/// Builds one cluster's part of the table. `taskdefs` must hold every task
/// definition the cluster's service tasks run (missing ones count as having
/// no health check and no port information).
pub fn build_cluster(
    cluster: &str,
    view: &ClusterView,
    taskdefs: &HashMap<String, TaskDefInfo>,
    out: &mut BTreeMap<(String, String), ServiceEndpoints>,
) {
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in view.tasks.values() {
        if let Some(s) = t.value.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
            by_service.entry(s).or_default().push(&t.value);
        }
    }
    for (name, svc) in &view.services {
        if svc.value.status == ServiceStatus::Inactive {
            continue;
        }
        let mut tasks = Vec::new();
        for t in by_service.get(name.as_str()).map(Vec::as_slice).unwrap_or_default() {
            let default = TaskDefInfo::default();
            let info = taskdefs.get(&t.task_definition_arn).unwrap_or(&default);
            if !serving(t, info.has_health_check) {
                continue;
            }
            let Some(ci) = t.container_instance.as_deref() else {
                continue;
            };
            let Some(instance) = view.instances.get(ci) else {
                continue;
            };
            let Some(ip) = instance
                .value
                .attributes
                .get(HOST_IP_ATTRIBUTE)
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            tasks.push(Endpoint {
                task_arn: t.task_arn.clone(),
                task_id: t.id.clone(),
                ip,
                port: host_port(t, info),
                health: t.health_status,
                container_instance: ci.to_string(),
                availability_zone: instance.value.attributes.get("ecs.availability-zone").cloned(),
                task_definition_arn: t.task_definition_arn.clone(),
            });
        }
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        out.insert(
            (cluster.to_ascii_lowercase(), name.to_ascii_lowercase()),
            ServiceEndpoints {
                cluster: cluster.to_string(),
                service: name.clone(),
                tasks,
            },
        );
    }
}
