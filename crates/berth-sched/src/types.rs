//! The engine's inputs and outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use berth_model::{InstanceStatus, PortSet, Protocol, ResourceKind};
use serde::{Deserialize, Serialize};

use crate::SchedError;

/// The consumable scalar resources, in ECS units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Scalars {
    /// CPU units (1024 = one core).
    pub cpu: u64,
    pub memory_mib: u64,
    pub network_mbps: u64,
    pub gpus: u64,
}

impl Scalars {
    pub fn new(cpu: u64, memory_mib: u64) -> Self {
        Scalars {
            cpu,
            memory_mib,
            ..Default::default()
        }
    }

    /// Whether `self` has at least `d` in every dimension, else the first
    /// short dimension.
    pub fn covers(&self, d: &Scalars) -> Result<(), ResourceKind> {
        if self.cpu < d.cpu {
            Err(ResourceKind::Cpu)
        } else if self.memory_mib < d.memory_mib {
            Err(ResourceKind::Memory)
        } else if self.network_mbps < d.network_mbps {
            Err(ResourceKind::Network)
        } else if self.gpus < d.gpus {
            Err(ResourceKind::Gpu)
        } else {
            Ok(())
        }
    }

    pub fn saturating_add(&self, o: &Scalars) -> Scalars {
        Scalars {
            cpu: self.cpu.saturating_add(o.cpu),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            network_mbps: self.network_mbps.saturating_add(o.network_mbps),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }

    pub fn saturating_sub(&self, o: &Scalars) -> Scalars {
        Scalars {
            cpu: self.cpu.saturating_sub(o.cpu),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            network_mbps: self.network_mbps.saturating_sub(o.network_mbps),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    /// The largest of `self[d] / of[d]` over dimensions where `of` is non-zero
    /// (dominant-resource share); `f64::INFINITY` when `self` needs a
    /// dimension `of` lacks.
    pub fn dominant_share(&self, of: &Scalars) -> f64 {
        let pairs = [
            (self.cpu, of.cpu),
            (self.memory_mib, of.memory_mib),
            (self.network_mbps, of.network_mbps),
            (self.gpus, of.gpus),
        ];
        pairs.iter().fold(0.0, |acc: f64, &(u, c)| match (u, c) {
            (0, _) => acc,
            (_, 0) => f64::INFINITY,
            (u, c) => acc.max(u as f64 / c as f64),
        })
    }
}

/// One elastic network interface of an instance: the security groups bound to
/// it (empty = unbound), and its free and total IP addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EniSlot {
    pub security_groups: BTreeSet<String>,
    pub free_ips: u32,
    pub capacity: u32,
}

/// A container instance as the engine sees it in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    /// Registered capacity.
    pub total: Scalars,
    /// What is still free (registered minus running tasks).
    pub remaining: Scalars,
    pub attributes: BTreeMap<String, String>,
    /// Only ACTIVE instances take tasks; DRAINING ones are reported as such.
    pub status: InstanceStatus,
    pub agent_connected: bool,
    /// Dynamic host port range `[low, high]`.
    pub port_range: (u16, u16),
    /// Host ports already reserved by running tasks.
    pub used_ports: PortSet,
    pub enis: Vec<EniSlot>,
    /// Running (and already placed) tasks per group.
    pub groups: BTreeMap<String, u32>,
    /// The running tasks themselves, for preemption and for saying what
    /// would have to move; empty when the caller does not know them (they
    /// are then never evicted). Their resources are already out of
    /// `remaining`, and their groups already in `groups`.
    pub running: Vec<Running>,
}

/// A task already on an instance, as preemption sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Running {
    pub id: String,
    pub demand: Scalars,
    pub group: String,
    /// 0 = critical; only tasks of a higher tier number can be preempted.
    pub tier: u8,
    /// Scale-in protection: never preempted.
    pub protected: bool,
    /// When it started, in any unit that grows with time: the youngest go first.
    pub started: u64,
    /// Host ports it holds (static and dynamic), given back when it is evicted.
    pub ports: PortSet,
    /// The ENI its IP is on.
    pub eni: Option<usize>,
}

impl Instance {
    /// An empty ACTIVE, connected instance with `total` free, no ENIs, and the
    /// ECS default dynamic port range.
    pub fn new(id: impl Into<String>, total: Scalars) -> Self {
        Instance {
            id: id.into(),
            total,
            remaining: total,
            attributes: BTreeMap::new(),
            status: InstanceStatus::Active,
            agent_connected: true,
            port_range: (32768, 61000),
            used_ports: PortSet::default(),
            enis: Vec::new(),
            groups: BTreeMap::new(),
            running: Vec::new(),
        }
    }

    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.insert(name.to_string(), value.to_string());
        self
    }
}

/// A placement constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Constraint {
    /// No two tasks of the same group on one instance.
    DistinctInstance,
    /// Only instances matching a cluster-query-language expression.
    MemberOf(String),
}

impl Constraint {
    /// From the ECS `{type, expression}` shape.
    pub fn from_ecs(kind: &str, expression: Option<&str>) -> Result<Self, SchedError> {
        match (kind, expression) {
            ("distinctInstance", _) => Ok(Constraint::DistinctInstance),
            ("memberOf", Some(e)) => Ok(Constraint::MemberOf(e.to_string())),
            (k, _) => Err(SchedError::Constraint(k.to_string())),
        }
    }
}

/// The resource a binpack strategy packs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinpackField {
    Cpu,
    Memory,
    /// Fenzo-style: CPU, memory and network together.
    Combined,
}

/// A placement strategy; a task carries a chain of them, applied in order
/// (later ones break ties of earlier ones), as in ECS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill the fullest instance that fits; empty instances are opened
    /// largest first, so that the rest stay whole.
    Binpack(BinpackField),
    /// Even out the group's tasks over the values of an attribute.
    SpreadAttribute(String),
    /// Even out the group's tasks over instances.
    SpreadInstance,
    /// A uniformly random instance that fits (seeded).
    Random,
}

impl Strategy {
    /// From the ECS `{type, field}` shape; `binpack` without a field is the
    /// combined CPU/memory/network fitness.
    pub fn from_ecs(kind: &str, field: Option<&str>) -> Result<Self, SchedError> {
        let bad = || SchedError::Strategy(format!("{kind}({})", field.unwrap_or("")));
        match (kind, field) {
            ("random", _) => Ok(Strategy::Random),
            ("binpack", None) => Ok(Strategy::Binpack(BinpackField::Combined)),
            ("binpack", Some(f)) => match f.to_ascii_lowercase().as_str() {
                "cpu" => Ok(Strategy::Binpack(BinpackField::Cpu)),
                "memory" => Ok(Strategy::Binpack(BinpackField::Memory)),
                "combined" | "" => Ok(Strategy::Binpack(BinpackField::Combined)),
                _ => Err(bad()),
            },
            ("spread", Some("instanceId" | "host")) => Ok(Strategy::SpreadInstance),
            ("spread", Some(f)) => match f.strip_prefix("attribute:") {
                Some(name) if !name.is_empty() => Ok(Strategy::SpreadAttribute(name.to_string())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// Parses `binpack`, `binpack(memory)`, `spread(attribute:ecs.availability-zone)`,
    /// `spread(instanceId)`, `random`.
    pub fn parse(s: &str) -> Result<Self, SchedError> {
        let s = s.trim();
        match s.split_once('(') {
            Some((kind, rest)) => {
                let field = rest
                    .strip_suffix(')')
                    .ok_or_else(|| SchedError::Strategy(s.to_string()))?;
                Strategy::from_ecs(kind.trim(), Some(field.trim()))
            }
            None => Strategy::from_ecs(s, None),
        }
    }

    /// ECS's default for services: spread over zones, then over instances.
    pub fn ecs_service_default() -> Vec<Strategy> {
        vec![
            Strategy::SpreadAttribute("ecs.availability-zone".into()),
            Strategy::SpreadInstance,
        ]
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Binpack(BinpackField::Cpu) => f.write_str("binpack(cpu)"),
            Strategy::Binpack(BinpackField::Memory) => f.write_str("binpack(memory)"),
            Strategy::Binpack(BinpackField::Combined) => f.write_str("binpack"),
            Strategy::SpreadAttribute(a) => write!(f, "spread(attribute:{a})"),
            Strategy::SpreadInstance => f.write_str("spread(instanceId)"),
            Strategy::Random => f.write_str("random"),
        }
    }
}

/// A task waiting for placement.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub id: String,
    pub demand: Scalars,
    /// Fixed host ports.
    pub static_ports: PortSet,
    /// One entry per port mapping that wants a host port from the instance's
    /// dynamic range; [`Placement::dynamic_ports`] answers in the same order.
    pub dynamic_ports: Vec<Protocol>,
    /// `Some(set)`: the task takes one IP on an ENI bound to exactly this set.
    pub security_groups: Option<BTreeSet<String>>,
    pub constraints: Vec<Constraint>,
    /// Applied in order; empty means `[binpack]` (combined fitness). Chains
    /// that start with `binpack`, `random`, or are `spread(attribute:X)`
    /// [+ `spread(instanceId)`] / `spread(instanceId)` run on indexes and
    /// settle ties themselves (binpack: by the other resource; spread: a
    /// seeded shuffle), so later entries are not consulted; any other chain
    /// scores every eligible instance entry by entry.
    pub strategy: Vec<Strategy>,
    /// The application / service (fair-share bucket, distinctInstance and
    /// spread scope, `task:group` in expressions).
    pub group: String,
    /// 0 = critical, placed before 1 = flex.
    pub tier: u8,
    /// A DAEMON service's task (pinned to its instance by a constraint):
    /// placed before every other task of the batch, whatever its tier, so
    /// that a new instance gets its daemons before replica tasks fill it.
    pub daemon: bool,
}

impl TaskRequest {
    pub fn new(id: impl Into<String>, demand: Scalars) -> Self {
        TaskRequest {
            id: id.into(),
            demand,
            static_ports: PortSet::default(),
            dynamic_ports: Vec::new(),
            security_groups: None,
            constraints: Vec::new(),
            strategy: Vec::new(),
            group: String::new(),
            tier: 0,
            daemon: false,
        }
    }
}

/// A capacity guarantee for one application in one tier (Titus capacity
/// groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarantee {
    pub group: String,
    pub tier: u8,
    pub capacity: Scalars,
}

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlaceOptions {
    /// Seeds `random` and tie-breaks; the same seed gives the same plan.
    pub seed: u64,
    pub guarantees: Vec<Guarantee>,
    /// What each group already uses on the cluster (for fair share); groups
    /// absent here start at zero.
    pub usage: BTreeMap<String, Scalars>,
    /// Per group, the fewest running tasks preemption may leave it (a flex
    /// service's `minimumHealthyPercent` of its desired count). Preemption
    /// goes below it only when the guarantee could not be met otherwise, and
    /// says so in [`Eviction::below_min_healthy`].
    pub min_running: BTreeMap<String, u32>,
}

/// Where one task goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub task_id: String,
    /// Index of the task in the batch passed to `place`.
    pub task_index: usize,
    pub instance_id: String,
    /// Index of the instance in the snapshot.
    pub instance_index: usize,
    /// Host ports picked for [`TaskRequest::dynamic_ports`], in order.
    pub dynamic_ports: Vec<(Protocol, u16)>,
    /// Index of the ENI the task's IP is on, if it asked for security groups.
    pub eni: Option<usize>,
}

/// A running task stopped to make room for a task under its group's
/// capacity guarantee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eviction {
    /// The running task to stop.
    pub task_id: String,
    pub instance_id: String,
    pub instance_index: usize,
    /// The task that needed the room, and its index in the batch.
    pub for_task: String,
    pub for_task_index: usize,
    /// The eviction takes the victim's group below its
    /// [`PlaceOptions::min_running`]: the guarantee could not be met otherwise.
    pub below_min_healthy: bool,
}

/// Where an unplaced task would fit if movable tasks (flex, without
/// scale-in protection) were moved elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveHint {
    pub instance_id: String,
    /// Flex tasks that would have to move.
    pub tasks: u32,
}

/// Why an instance could not take a task; `Display` gives the ECS reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    /// The instance is DRAINING.
    Draining,
    /// The instance's agent is disconnected.
    Agent,
    /// A `memberOf` expression excludes the instance.
    Attribute,
    /// The instance already runs a task of the group (`distinctInstance`).
    DistinctInstance,
    /// Not enough of a resource.
    Resource(ResourceKind),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Draining => f.write_str("DRAINING"),
            Reason::Agent => f.write_str("AGENT"),
            Reason::Attribute => f.write_str("ATTRIBUTE"),
            Reason::DistinctInstance => f.write_str("DISTINCT_INSTANCE"),
            Reason::Resource(k) => f.write_str(k.ecs_reason()),
        }
    }
}

/// A task left pending, with every instance accounted for under the first
/// check it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    pub task_id: String,
    pub task_index: usize,
    /// Most common first.
    pub reasons: Vec<(Reason, u32)>,
    /// Set when the task itself is malformed (e.g. an expression that does
    /// not parse); such a task is never placed.
    #[serde(serialize_with = "error_text")]
    pub error: Option<SchedError>,
    /// Whether the task would fit on an empty instance its constraints
    /// admit (judged on registered capacity): a task that does is left
    /// pending by packing, not by the cluster's size.
    pub fits_empty: bool,
    /// The instance where the task would fit with the fewest flex tasks moved.
    pub movable: Option<MoveHint>,
}

fn error_text<S: serde::Serializer>(e: &Option<SchedError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_some(&e.to_string()),
        None => s.serialize_none(),
    }
}

impl Unplaced {
    /// `RESOURCE:MEMORY on 912 instances, ATTRIBUTE on 88 instances`.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return e.to_string();
        }
        if self.reasons.is_empty() {
            return "no container instances".to_string();
        }
        self.reason_lines().join(", ")
    }

    /// One line per reason (`RESOURCE:CPU on 3 instances`), then the move
    /// hint (`would fit on i-0abc if 3 flex tasks moved`) when there is one.
    pub fn reason_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} on {n} instance{}", plural(*n)))
            .collect();
        if let Some(m) = &self.movable {
            lines.push(format!(
                "would fit on {} if {} flex task{} moved",
                m.instance_id,
                m.tasks,
                plural(m.tasks)
            ));
        }
        lines
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One capacity tier's account of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierReport {
    pub tier: u8,
    /// Sum of the guarantees of the tier's groups.
    pub guaranteed: Scalars,
    /// Demand of the batch's tasks in this tier.
    pub requested: Scalars,
    /// Demand of those placed.
    pub placed: Scalars,
    pub placed_tasks: usize,
    pub unplaced_tasks: usize,
}

/// The result of one `place` call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In placement order.
    pub placements: Vec<Placement>,
    /// In batch order.
    pub unplaced: Vec<Unplaced>,
    pub tiers: Vec<TierReport>,
    /// Running tasks to stop so that critical tasks under their guarantee
    /// fit (the placements already count on the room they leave).
    pub evictions: Vec<Eviction>,
}
