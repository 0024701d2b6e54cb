//! Benchmark workloads: the JSON file format (documented in
//! `docs/scheduler.md`), the packing lower bound and the report
//! `berth sched bench` prints. The generator is in `generate`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Constraint, EniSlot, Guarantee, Instance, Plan, Scalars, SchedError, Snapshot, Strategy, TaskRequest};

/// Hosts without a `network_mbps` are not metered on network.
const UNMETERED: u64 = u64::MAX / 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub id: String,
    pub cpu: u64,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mbps: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u64,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub enis: u32,
    #[serde(default)]
    pub ips_per_eni: u32,
}

/// An ECS-shaped `{type, expression}` or `{type, field}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcsRule {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: String,
    pub cpu: u64,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network_mbps: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u64,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub tier: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "is_zero16")]
    pub dynamic_ports: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<EcsRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strategy: Vec<EcsRule>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero16(n: &u16) -> bool {
    *n == 0
}

/// A replayable scheduling workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(default)]
    pub name: String,
    pub hosts: Vec<HostSpec>,
    pub tasks: Vec<TaskSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guarantees: Vec<Guarantee>,
}

impl Workload {
    /// Reads the JSON format.
    pub fn from_json(text: &str) -> Result<Self, SchedError> {
        serde_json::from_str(text).map_err(|e| SchedError::Workload(e.to_string()))
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.hosts
            .iter()
            .map(|h| {
                let total = Scalars {
                    cpu: h.cpu,
                    memory_mib: h.memory_mib,
                    network_mbps: h.network_mbps.unwrap_or(UNMETERED),
                    gpus: h.gpus,
                };
                let mut inst = Instance::new(h.id.clone(), total);
                inst.attributes = h.attributes.clone();
                inst.enis = (0..h.enis)
                    .map(|_| EniSlot {
                        security_groups: BTreeSet::new(),
                        free_ips: h.ips_per_eni,
                        capacity: h.ips_per_eni,
                    })
                    .collect();
                inst
            })
            .collect()
    }

    /// The tasks as engine requests; `strategy` / `constraint` (when given)
    /// replace each task's own.
    pub fn requests(
        &self,
        strategy: Option<&[Strategy]>,
        constraint: Option<&str>,
    ) -> Result<Vec<TaskRequest>, SchedError> {
        self.tasks
            .iter()
            .map(|t| {
                let mut r = TaskRequest::new(
                    t.id.clone(),
                    Scalars {
                        cpu: t.cpu,
                        memory_mib: t.memory_mib,
                        network_mbps: t.network_mbps,
                        gpus: t.gpus,
                    },
                );
                r.group.clone_from(&t.group);
                r.tier = t.tier;
                if !t.security_groups.is_empty() {
                    r.security_groups = Some(t.security_groups.iter().cloned().collect());
                }
                for p in &t.host_ports {
                    r.static_ports.tcp.insert(*p);
                }
                r.dynamic_ports = vec![berth_model::Protocol::Tcp; t.dynamic_ports as usize];
                r.constraints = t
                    .constraints
                    .iter()
                    .map(|c| Constraint::from_ecs(&c.kind, c.expression.as_deref()))
                    .collect::<Result<_, _>>()?;
                r.strategy = t
                    .strategy
                    .iter()
                    .map(|s| Strategy::from_ecs(&s.kind, s.field.as_deref()))
                    .collect::<Result<_, _>>()?;
                if let Some(s) = strategy {
                    r.strategy = s.to_vec();
                }
                if let Some(c) = constraint {
                    r.constraints = vec![Constraint::MemberOf(c.to_string())];
                }
                Ok(r)
            })
            .collect()
    }
}

/// The fewest hosts whose capacity covers `demand`: for each dimension, the
/// count of hosts taken largest-first until their sum covers that dimension;
/// the largest count over dimensions. No packing can use fewer.
pub fn lower_bound_hosts(capacities: &[Scalars], demand: &Scalars) -> usize {
    let dims: [fn(&Scalars) -> u64; 4] = [|s| s.cpu, |s| s.memory_mib, |s| s.network_mbps, |s| s.gpus];
    dims.iter()
        .map(|dim| {
            let want = dim(demand);
            if want == 0 {
                return 0;
            }
            let mut caps: Vec<u64> = capacities.iter().map(dim).collect();
            caps.sort_unstable_by(|a, b| b.cmp(a));
            let mut sum = 0u64;
            for (i, c) in caps.iter().enumerate() {
                sum = sum.saturating_add(*c);
                if sum >= want {
                    return i + 1;
                }
            }
            caps.len()
        })
        .max()
        .unwrap_or(0)
}

/// One benchmark result, as `berth sched bench --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub workload: String,
    pub strategy: String,
    pub seed: u64,
    pub hosts: usize,
    pub tasks: usize,
    pub placed: usize,
    pub unplaced: usize,
    /// Pending tasks that would fit on an empty host of the workload (one
    /// their constraints admit): a half-empty cluster should leave none.
    pub unplaced_fitting: usize,
    pub hosts_used: usize,
    /// The fewest hosts that could hold the whole demand, placed and pending.
    pub lower_bound_hosts: usize,
    pub seconds: f64,
    pub placements_per_s: f64,
    pub cpu_util: f64,
    pub mem_util: f64,
}

fn spec_demand(t: &TaskSpec) -> Scalars {
    Scalars {
        cpu: t.cpu,
        memory_mib: t.memory_mib,
        network_mbps: t.network_mbps,
        gpus: t.gpus,
    }
}

impl BenchReport {
    /// Summarises a plan; `after` is the snapshot the plan was placed into
    /// (which started from `workload`'s empty hosts), `seconds` the wall time
    /// the caller measured around `place`.
    pub fn new(workload: &Workload, after: &Snapshot, plan: &Plan, seconds: f64, strategy: &str, seed: u64) -> Self {
        let used: Vec<_> = after.hosts.iter().filter(|h| h.tasks > 0).collect();
        let cap = used.iter().fold(Scalars::default(), |a, h| a.saturating_add(&h.total));
        let left = used.iter().fold(Scalars::default(), |a, h| a.saturating_add(&h.free));
        let busy = cap.saturating_sub(&left);
        let demand = workload
            .tasks
            .iter()
            .fold(Scalars::default(), |a, t| a.saturating_add(&spec_demand(t)));
        let capacities: Vec<Scalars> = after.hosts.iter().map(|h| h.total).collect();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { round4(a as f64 / b as f64) };
        BenchReport {
            workload: workload.name.clone(),
            strategy: strategy.to_string(),
            seed,
            hosts: workload.hosts.len(),
            tasks: workload.tasks.len(),
            placed: plan.placements.len(),
            unplaced: plan.unplaced.len(),
            unplaced_fitting: plan.unplaced.iter().filter(|u| u.fits_empty).count(),
            hosts_used: used.len(),
            lower_bound_hosts: lower_bound_hosts(&capacities, &demand),
            seconds: round4(seconds),
            placements_per_s: if seconds > 0.0 {
                (plan.placements.len() as f64 / seconds).round()
            } else {
                0.0
            },
            cpu_util: ratio(busy.cpu, cap.cpu),
            mem_util: ratio(busy.memory_mib, cap.memory_mib),
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_file_reads_the_documented_shape() {
        let w = Workload::from_json(
            r#"{"name": "hetero-1k-10k",
                "hosts": [{"id": "h-00000", "cpu": 16384, "memory_mib": 65536, "network_mbps": 10240,
                           "attributes": {"ecs.instance-type": "m4.4xlarge", "ecs.availability-zone": "us-east-1a"},
                           "enis": 4, "ips_per_eni": 7},
                          {"id": "h-00001", "cpu": 1024, "memory_mib": 1024}],
                "tasks": [{"id": "t-000000", "cpu": 1024, "memory_mib": 2048, "network_mbps": 100,
                           "group": "app-17", "tier": 0, "security_groups": ["sg-1"]}]}"#,
        )
        .unwrap();
        let inst = w.instances();
        assert_eq!(inst[0].enis.len(), 4);
        assert_eq!(inst[0].enis[0].capacity, 7);
        assert_eq!(inst[1].total.network_mbps, UNMETERED, "no network_mbps: not metered");
        let reqs = w
            .requests(None, Some("attribute:ecs.instance-type == m4.4xlarge"))
            .unwrap();
        assert_eq!(reqs[0].group, "app-17");
        let mut s = Snapshot::new(inst);
        let plan = s.place(&reqs, &crate::PlaceOptions::default());
        assert_eq!(plan.placements[0].instance_id, "h-00000");
        assert_eq!(plan.placements[0].eni, Some(0));
        assert!(Workload::from_json(r#"{"hosts": [{"id": "x"}], "tasks": []}"#).is_err());
    }

    #[test]
    fn lower_bound_takes_largest_hosts_first_per_dimension() {
        let caps = [
            Scalars::new(8, 100),
            Scalars::new(4, 10),
            Scalars::new(2, 10),
            Scalars::new(1, 300),
        ];
        // CPU 9 needs hosts 8 + 4; memory 350 needs 300 + 100: two each.
        assert_eq!(lower_bound_hosts(&caps, &Scalars::new(9, 350)), 2);
        assert_eq!(lower_bound_hosts(&caps, &Scalars::new(13, 0)), 3);
        assert_eq!(lower_bound_hosts(&caps, &Scalars::new(0, 0)), 0);
        assert_eq!(
            lower_bound_hosts(&caps, &Scalars::new(100, 0)),
            4,
            "capped at the host count"
        );
    }

    #[test]
    fn report_counts_hosts_and_utilisation() {
        let w = Workload::generate(crate::GenSpec {
            hosts: 50,
            tasks: 200,
            seed: 1,
            ..Default::default()
        });
        let mut s = Snapshot::new(w.instances());
        let reqs = w.requests(None, None).unwrap();
        let plan = s.place(&reqs, &crate::PlaceOptions::default());
        let r = BenchReport::new(&w, &s, &plan, 0.5, "binpack", 1);
        assert_eq!(r.placed + r.unplaced, 200);
        assert_eq!(r.placements_per_s, (r.placed as f64 / 0.5).round());
        let used: BTreeSet<usize> = plan.placements.iter().map(|p| p.instance_index).collect();
        assert_eq!(r.hosts_used, used.len());
        assert!(r.lower_bound_hosts <= r.hosts_used);
        assert_eq!(r.unplaced_fitting, 0, "50 hosts hold 200 tasks");
        assert!(r.cpu_util > 0.0 && r.cpu_util <= 1.0 && r.mem_util > 0.0 && r.mem_util <= 1.0);
    }
}
