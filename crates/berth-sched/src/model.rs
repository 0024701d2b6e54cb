//! Conversions between `berth-model` records and the engine: instances
//! with their running tasks, task definitions as demand, placements as
//! network bindings, and query-language subjects read off an instance record.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{ContainerInstance, NetworkBinding, NetworkMode, Task, TaskDefinition, TaskStatus};

use crate::expr::{Ast, Subject};
use crate::{Constraint, EniSlot, Instance, Placement, Running, Scalars, SchedError, Snapshot, Strategy, TaskRequest};

fn scalars(r: &berth_model::Resources) -> Scalars {
    Scalars {
        cpu: r.cpu,
        memory_mib: r.memory_mib,
        network_mbps: r.network_mbps,
        gpus: r.gpus,
    }
}

impl Instance {
    /// From a registered container instance and the tasks placed on it that
    /// still hold resources (every one not yet STOPPED): the free
    /// resources, ports and ENI IPs are the registered ones minus those
    /// tasks' demands, so the state never drifts from the tasks themselves.
    pub fn from_model<'a>(ci: &ContainerInstance, tasks: impl IntoIterator<Item = &'a Task>) -> Instance {
        let mut remaining = ci.registered.clone();
        let mut groups: BTreeMap<String, u32> = BTreeMap::new();
        let mut running = Vec::new();
        for t in tasks {
            if t.container_instance.as_deref() != Some(ci.id.as_str()) || t.last_status == TaskStatus::Stopped {
                continue;
            }
            if remaining.checked_sub_assign(&t.demand).is_err() {
                // The store over-committed this instance; count what fits
                // rather than inventing capacity.
                remaining.cpu = remaining.cpu.saturating_sub(t.demand.cpu);
                remaining.memory_mib = remaining.memory_mib.saturating_sub(t.demand.memory_mib);
                remaining.network_mbps = remaining.network_mbps.saturating_sub(t.demand.network_mbps);
                remaining.gpus = remaining.gpus.saturating_sub(t.demand.gpus);
                remaining.ports.tcp.extend(t.demand.ports.tcp.iter().copied());
                remaining.ports.udp.extend(t.demand.ports.udp.iter().copied());
            }
            *groups.entry(t.group.clone().unwrap_or_default()).or_insert(0) += 1;
            running.push(Running {
                id: t.id.clone(),
                demand: scalars(&t.demand),
                group: t.group.clone().unwrap_or_default(),
                tier: t.tier,
                // Scale-in protection lives outside the typed record; the
                // launcher sets it.
                protected: false,
                started: (t.started_at.unwrap_or(t.created_at).max(0.0) * 1000.0) as u64,
                ports: t.demand.ports.clone(),
                eni: t.demand.enis.first().and_then(|want| {
                    ci.remaining
                        .enis
                        .iter()
                        .position(|now| now.security_groups == want.security_groups)
                }),
            });
        }
        let enis = remaining
            .enis
            .iter()
            .zip(&ci.registered.enis)
            .map(|(now, reg)| EniSlot {
                security_groups: now.security_groups.clone(),
                free_ips: now.ips,
                capacity: reg.ips,
            })
            .collect();
        Instance {
            id: ci.id.clone(),
            total: scalars(&ci.registered),
            remaining: scalars(&remaining),
            attributes: ci.attributes.clone(),
            status: ci.status,
            agent_connected: ci.agent_connected,
            port_range: ci.port_range,
            used_ports: remaining.ports,
            enis,
            groups,
            running,
        }
    }
}

impl Instance {
    /// The engine's view of one instance as its record says: what the record
    /// says is left (the record every placement compares and updates) plus
    /// the task groups running on it, for spread, `distinctInstance` and
    /// `task:group`.
    pub fn from_record<'a>(ci: &ContainerInstance, tasks: impl IntoIterator<Item = &'a Task>) -> Instance {
        let mut inst = Instance::from_model(ci, tasks);
        inst.remaining = scalars(&ci.remaining);
        inst.used_ports = ci.remaining.ports.clone();
        for (slot, eni) in inst.enis.iter_mut().zip(&ci.remaining.enis) {
            slot.free_ips = eni.ips;
            slot.security_groups.clone_from(&eni.security_groups);
        }
        inst
    }
}

/// A query-language subject's value on a container instance record, or
/// `None` when it has none (`task:group` is multi-valued: see [`Ast::eval`]).
pub fn instance_subject(ci: &ContainerInstance, subject: &Subject) -> Option<String> {
    match subject {
        Subject::Attribute(name) => ci.attributes.get(name).cloned(),
        Subject::InstanceId => Some(ci.id.clone()),
        Subject::Ec2InstanceId => Some(ci.ec2_instance_id.clone()),
        Subject::AgentConnected => Some(ci.agent_connected.to_string()),
        Subject::AgentVersion => Some(ci.version_info.agent_version.clone()).filter(|v| !v.is_empty()),
        Subject::RunningTasksCount => Some(ci.running_tasks_count.to_string()),
        Subject::PendingTasksCount => Some(ci.pending_tasks_count.to_string()),
        Subject::TaskGroup => None,
    }
}

impl Ast {
    /// Whether a container instance record (with the task groups running on
    /// it) satisfies the expression.
    pub fn matches_instance(&self, ci: &ContainerInstance, groups: &[&str]) -> bool {
        self.eval(&|s| instance_subject(ci, s), groups)
    }
}

impl Placement {
    /// The host ports this placement gives each container of `td`, as
    /// network bindings (one list per container, in order): static host
    /// ports as written, dynamic ones in the order the engine picked them,
    /// container ports in `host` mode; none in `awsvpc` mode.
    pub fn network_bindings(&self, td: &TaskDefinition) -> Vec<Vec<NetworkBinding>> {
        let mut dynamic = self.dynamic_ports.iter();
        td.container_definitions
            .iter()
            .map(|cd| {
                cd.port_mappings
                    .iter()
                    .filter_map(|pm| {
                        let host_port = match (pm.host_port.filter(|h| *h != 0), td.network_mode) {
                            (_, NetworkMode::Awsvpc | NetworkMode::None) => return None,
                            (Some(h), _) => h,
                            (None, NetworkMode::Host) => pm.container_port,
                            (None, NetworkMode::Bridge) => dynamic.next()?.1,
                        };
                        Some(NetworkBinding {
                            bind_ip: "0.0.0.0".into(),
                            container_port: pm.container_port,
                            host_port,
                            protocol: pm.protocol,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

impl Snapshot {
    /// The cluster as its registered instances and running tasks describe it.
    pub fn from_model(instances: &[ContainerInstance], tasks: &[Task]) -> Snapshot {
        let mut by_instance: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
        for t in tasks {
            if let Some(ci) = t.container_instance.as_deref() {
                by_instance.entry(ci).or_default().push(t);
            }
        }
        Snapshot::new(
            instances
                .iter()
                .map(|ci| Instance::from_model(ci, by_instance.get(ci.id.as_str()).into_iter().flatten().copied()))
                .collect(),
        )
    }
}

impl TaskRequest {
    /// One task of `td`: its demand (task-level or summed containers), its
    /// static and dynamic host ports, and its placement constraints.
    /// `awsvpc` tasks take an ENI IP with `security_groups`.
    pub fn from_task_definition(
        id: impl Into<String>,
        td: &TaskDefinition,
        group: impl Into<String>,
        security_groups: &[String],
    ) -> Result<TaskRequest, SchedError> {
        let demand = td.demand();
        let mut r = TaskRequest::new(id, scalars(&demand));
        r.static_ports = demand.ports;
        if td.network_mode != NetworkMode::Awsvpc {
            for c in &td.container_definitions {
                for pm in &c.port_mappings {
                    if pm.host_port.unwrap_or(0) == 0 && td.network_mode == NetworkMode::Bridge {
                        r.dynamic_ports.push(pm.protocol);
                    }
                }
            }
        } else {
            r.static_ports = Default::default();
            r.security_groups = Some(security_groups.iter().cloned().collect::<BTreeSet<_>>());
        }
        r.constraints = td
            .placement_constraints
            .iter()
            .map(|c| Constraint::from_ecs(&c.kind, c.expression.as_deref()))
            .collect::<Result<_, _>>()?;
        r.group = group.into();
        Ok(r)
    }

    /// Sets the strategy chain from ECS `placementStrategy` entries.
    pub fn with_ecs_strategy(mut self, chain: &[berth_model::PlacementStrategy]) -> Result<Self, SchedError> {
        self.strategy = chain
            .iter()
            .map(|s| Strategy::from_ecs(&s.kind, s.field.as_deref()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{InstanceStatus, PortSet, Protocol, Resources};

    fn td() -> TaskDefinition {
        serde_json::from_str(
            r#"{"family":"web","revision":1,"taskDefinitionArn":"x",
                "containerDefinitions":[{"name":"app","image":"echo","cpu":256,"memory":512,
                  "portMappings":[{"containerPort":8080,"hostPort":80},{"containerPort":9090},
                                  {"containerPort":53,"protocol":"udp"}]}],
                "placementConstraints":[{"type":"distinctInstance"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn task_definition_becomes_a_request() {
        let r = TaskRequest::from_task_definition("t-1", &td(), "service:web", &[]).unwrap();
        assert_eq!(r.demand, Scalars::new(256, 512));
        assert!(r.static_ports.contains(Protocol::Tcp, 80));
        assert_eq!(r.dynamic_ports, vec![Protocol::Tcp, Protocol::Udp]);
        assert_eq!(r.constraints, vec![Constraint::DistinctInstance]);
        assert_eq!(r.group, "service:web");
        let mut bad = td();
        bad.placement_constraints[0].kind = "sameHost".into();
        assert!(TaskRequest::from_task_definition("t", &bad, "g", &[]).is_err());
    }

    fn instance() -> ContainerInstance {
        serde_json::from_value(serde_json::json!({
            "id": "ci-1", "cluster": "default", "ec2InstanceId": "i-0abc", "status": "ACTIVE",
            "agentConnected": true, "registered": Resources::new(1024, 1024), "remaining": Resources::new(512, 1024),
            "portRange": [32768, 61000], "registeredAt": 0.0, "runningTasksCount": 3,
            "attributes": {"ecs.instance-type": "t2.micro", "zone": "a"}
        }))
        .unwrap()
    }

    #[test]
    fn expressions_evaluate_on_an_instance_record() {
        let ci = instance();
        let t = |q: &str| {
            crate::parse_expression(q)
                .unwrap()
                .matches_instance(&ci, &["service:web"])
        };
        assert!(t("attribute:ecs.instance-type == t2.micro"));
        assert!(t("attribute:ecs.instance-type =~ t2.*"));
        assert!(
            !t("attribute:ecs.instance-type == t2.*"),
            "== is exact; =~ takes wildcards"
        );
        assert!(t("attribute:zone in [a, b] and runningTasksCount > 2"));
        assert!(!t("attribute:zone not_in [a]"));
        assert!(t("not(attribute:zone == b)"));
        assert!(!t("not(attribute:zone == a)"));
        assert!(t("attribute:missing exists or ec2InstanceId == i-0abc"));
        assert!(t("instanceId == ci-1 and agentConnected == true"));
        assert!(!t("attribute:missing exists || agentConnected == false"));
        assert!(t("attribute:missing !exists and pendingTasksCount == 0"));
        assert!(t("task:group == service:web"));
        assert!(t("task:group != service:db"));
        assert!(!t("agentVersion exists"), "an agent that reported no version has none");
    }

    #[test]
    fn placements_become_network_bindings() {
        let td = td();
        let p = Placement {
            task_id: "t".into(),
            task_index: 0,
            instance_id: "ci-1".into(),
            instance_index: 0,
            dynamic_ports: vec![(Protocol::Tcp, 32800), (Protocol::Udp, 32801)],
            eni: None,
        };
        let b = p.network_bindings(&td);
        let ports: Vec<(u16, u16, Protocol)> = b[0]
            .iter()
            .map(|b| (b.container_port, b.host_port, b.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (8080, 80, Protocol::Tcp),
                (9090, 32800, Protocol::Tcp),
                (53, 32801, Protocol::Udp)
            ]
        );
    }

    #[test]
    fn a_record_view_keeps_what_the_record_says_is_left() {
        let ci = instance();
        let i = Instance::from_record(&ci, []);
        assert_eq!(
            i.remaining,
            Scalars::new(512, 1024),
            "the record, not registered minus tasks"
        );
        assert_eq!(i.total, Scalars::new(1024, 1024));
    }

    #[test]
    fn instance_state_is_rebuilt_from_running_tasks() {
        let mut registered = Resources::new(4096, 8192);
        registered.enis = vec![berth_model::Eni {
            security_groups: Default::default(),
            ips: 3,
        }];
        let ci: ContainerInstance = serde_json::from_value(serde_json::json!({
            "id": "i-1", "cluster": "default", "ec2InstanceId": "i-1", "status": "ACTIVE",
            "agentConnected": true, "registered": registered, "remaining": registered,
            "portRange": [32768, 61000], "registeredAt": 0.0
        }))
        .unwrap();
        let mut demand = Resources::new(1024, 2048);
        demand.ports = PortSet::default();
        demand.ports.insert(Protocol::Tcp, 32768);
        demand.enis = vec![berth_model::Eni {
            security_groups: ["sg-1".to_string()].into(),
            ips: 1,
        }];
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "t-1", "taskArn": "a", "cluster": "default", "taskDefinitionArn": "td",
            "containerInstance": "i-1", "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
            "demand": demand, "group": "service:web", "createdAt": 0.0
        }))
        .unwrap();
        let mut stopped = task.clone();
        stopped.last_status = TaskStatus::Stopped;
        let s = Snapshot::from_model(std::slice::from_ref(&ci), &[task, stopped]);
        let i = s.instance(0).unwrap();
        assert_eq!(i.status, InstanceStatus::Active);
        assert_eq!(i.remaining, Scalars::new(3072, 6144));
        assert!(i.used_ports.contains(Protocol::Tcp, 32768));
        assert_eq!(i.enis[0].free_ips, 2);
        assert_eq!(i.enis[0].capacity, 3);
        assert_eq!(i.groups.get("service:web"), Some(&1));
    }
}
