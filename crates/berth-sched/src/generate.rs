//! Synthetic workloads for `berth sched bench --generate`: the standard
//! heterogeneous shape (after the shapes Netflix reported for Titus) and four
//! others, so that the engine's tuning is checked on more than one
//! distribution: bimodal large/small tasks, memory-heavy tasks, a GPU-heavy
//! fleet, and an all-equal fleet and batch. Every shape loads the cluster to
//! about three quarters of its tightest resource, so a good packing places
//! every task. Deterministic per seed.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::SchedError;
use crate::workload::{HostSpec, TaskSpec, Workload};

/// Which distribution of hosts and tasks [`Workload::generate`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// 8/16/32-core hosts; tasks mostly of 1–2 cores, a few up to 32 cores.
    #[default]
    Default,
    /// The default hosts; tasks either 1 core or 16/32 cores, nothing between.
    Bimodal,
    /// A memory-optimized fleet (r-family hosts, 7.6–8 GiB per core) and
    /// tasks of 6–12 GiB per core, so memory binds first.
    Memory,
    /// Four in ten hosts carry 1–4 GPUs; one task in sixteen needs 1–4 GPUs.
    Gpu,
    /// One host type and one task size: packing must be exact.
    Uniform,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Default,
        Shape::Bimodal,
        Shape::Memory,
        Shape::Gpu,
        Shape::Uniform,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Default => "default",
            Shape::Bimodal => "bimodal",
            Shape::Memory => "memory",
            Shape::Gpu => "gpu",
            Shape::Uniform => "uniform",
        }
    }
}

impl std::str::FromStr for Shape {
    type Err = SchedError;

    fn from_str(s: &str) -> Result<Self, SchedError> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == s.trim())
            .ok_or_else(|| {
                SchedError::Workload(format!(
                    "unknown shape '{s}'; expected default, bimodal, memory, gpu or uniform"
                ))
            })
    }
}

/// `hosts=N,tasks=M,seed=S,shape=NAME` for [`Workload::generate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenSpec {
    pub hosts: usize,
    pub tasks: usize,
    pub seed: u64,
    pub shape: Shape,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            hosts: 1000,
            tasks: 10_000,
            seed: 1,
            shape: Shape::Default,
        }
    }
}

impl std::str::FromStr for GenSpec {
    type Err = SchedError;

    fn from_str(s: &str) -> Result<Self, SchedError> {
        let mut spec = GenSpec::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| SchedError::Workload(format!("'{part}' is not KEY=VALUE")))?;
            if k.trim() == "shape" {
                spec.shape = v.parse()?;
                continue;
            }
            let n: u64 = v
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| SchedError::Workload(format!("'{v}' is not a number (in '{part}')")))?;
            match k.trim() {
                "hosts" => spec.hosts = n as usize,
                "tasks" => spec.tasks = n as usize,
                "seed" => spec.seed = n,
                other => {
                    return Err(SchedError::Workload(format!(
                        "unknown key '{other}'; expected hosts, tasks, seed or shape"
                    )));
                }
            }
        }
        Ok(spec)
    }
}

/// An EC2-like host type.
struct HostType {
    name: &'static str,
    cores: u64,
    gib: u64,
    mbps: u64,
    gpus: u64,
    enis: u32,
    ips_per_eni: u32,
    weight: u32,
}

const fn host(name: &'static str, cores: u64, gib: u64, mbps: u64, enis: u32, ips: u32, weight: u32) -> HostType {
    HostType {
        name,
        cores,
        gib,
        mbps,
        gpus: 0,
        enis,
        ips_per_eni: ips,
        weight,
    }
}

const fn gpu_host(name: &'static str, cores: u64, gib: u64, gpus: u64, weight: u32) -> HostType {
    HostType {
        name,
        cores,
        gib,
        mbps: 10_000,
        gpus,
        enis: 8,
        ips_per_eni: 30,
        weight,
    }
}

const HOST_TYPES: [HostType; 6] = [
    host("m5.2xlarge", 8, 32, 1000, 4, 15, 10),
    host("r5.2xlarge", 8, 64, 2500, 4, 15, 10),
    host("m4.4xlarge", 16, 64, 5000, 8, 30, 20),
    host("r4.4xlarge", 16, 122, 5000, 8, 30, 20),
    host("m5.8xlarge", 32, 128, 10000, 8, 30, 20),
    host("r4.8xlarge", 32, 244, 10000, 8, 30, 20),
];
/// The default types at 60 % of the fleet, GPU types at 40 %.
const GPU_HOST_TYPES: [HostType; 9] = [
    host("m5.2xlarge", 8, 32, 1000, 4, 15, 6),
    host("r5.2xlarge", 8, 64, 2500, 4, 15, 6),
    host("m4.4xlarge", 16, 64, 5000, 8, 30, 12),
    host("r4.4xlarge", 16, 122, 5000, 8, 30, 12),
    host("m5.8xlarge", 32, 128, 10000, 8, 30, 12),
    host("r4.8xlarge", 32, 244, 10000, 8, 30, 12),
    gpu_host("p3.2xlarge", 8, 61, 1, 13),
    gpu_host("p3.8xlarge", 32, 244, 4, 13),
    gpu_host("g4dn.12xlarge", 48, 192, 4, 14),
];
const MEMORY_HOST_TYPES: [HostType; 3] = [
    host("r5.2xlarge", 8, 64, 2500, 4, 15, 10),
    host("r4.4xlarge", 16, 122, 5000, 8, 30, 20),
    host("r4.8xlarge", 32, 244, 10000, 8, 30, 20),
];
const UNIFORM_HOST_TYPES: [HostType; 1] = [host("m4.4xlarge", 16, 64, 5000, 8, 30, 1)];

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
/// (cores, weight per 1000): most tasks need 1 or 2 cores.
const TASK_CORES: [(u64, u32); 6] = [(1, 800), (2, 120), (4, 50), (8, 20), (16, 7), (32, 3)];
const GIB_PER_CORE: [u64; 4] = [2, 4, 4, 6];
/// Bimodal: 1 core, or (rarely) 16 or 32.
const BIMODAL_CORES: [(u64, u32); 3] = [(1, 975), (16, 13), (32, 12)];
const MEMORY_CORES: [(u64, u32); 4] = [(1, 760), (2, 200), (4, 35), (8, 5)];
const MEMORY_GIB_PER_CORE: [u64; 4] = [6, 8, 10, 12];
/// GPU tasks: (GPUs, weight); each GPU comes with 4 cores and 16 GiB.
const TASK_GPUS: [(u64, u32); 3] = [(1, 70), (2, 20), (4, 10)];
/// (Mbit/s, weight per 1000)
const TASK_NET: [(u64, u32); 7] = [
    (10, 300),
    (50, 250),
    (100, 200),
    (200, 120),
    (500, 80),
    (1000, 40),
    (2000, 10),
];
const GROUPS: u32 = 50;

fn weighted<T: Copy>(rng: &mut SmallRng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in table {
        if x < *w {
            return *v;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

/// (cores, GiB, GPUs) of one task of `shape`.
fn task_size(shape: Shape, rng: &mut SmallRng) -> (u64, u64, u64) {
    match shape {
        Shape::Default => {
            let cores = weighted(rng, &TASK_CORES);
            (cores, cores * GIB_PER_CORE[rng.random_range(0..GIB_PER_CORE.len())], 0)
        }
        Shape::Bimodal => {
            let cores = weighted(rng, &BIMODAL_CORES);
            (cores, cores * [2, 4][rng.random_range(0..2)], 0)
        }
        Shape::Memory => {
            let cores = weighted(rng, &MEMORY_CORES);
            let per = MEMORY_GIB_PER_CORE[rng.random_range(0..MEMORY_GIB_PER_CORE.len())];
            (cores, cores * per, 0)
        }
        Shape::Gpu if rng.random_range(0..16) == 0 => {
            let gpus = weighted(rng, &TASK_GPUS);
            (gpus * 4, gpus * 16, gpus)
        }
        Shape::Gpu => {
            let cores = weighted(rng, &TASK_CORES);
            (cores, cores * GIB_PER_CORE[rng.random_range(0..GIB_PER_CORE.len())], 0)
        }
        Shape::Uniform => (1, 4, 0),
    }
}

impl Workload {
    /// A generated workload of `spec.shape` (see [`Shape`]); the default
    /// shape is named `hetero-HOSTS-TASKS-sSEED`, the others
    /// `SHAPE-HOSTS-TASKS-sSEED`. Tasks are in 50 applications `app-N`
    /// (the first 10 in tier 0, skewed toward the low numbers), one in ten
    /// with a security group.
    pub fn generate(spec: GenSpec) -> Self {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        let types: &[HostType] = match spec.shape {
            Shape::Gpu => &GPU_HOST_TYPES,
            Shape::Memory => &MEMORY_HOST_TYPES,
            Shape::Uniform => &UNIFORM_HOST_TYPES,
            _ => &HOST_TYPES,
        };
        let host_table: Vec<(usize, u32)> = types.iter().enumerate().map(|(i, t)| (i, t.weight)).collect();
        let hosts = (0..spec.hosts)
            .map(|i| {
                let ty = &types[weighted(&mut rng, &host_table)];
                let zone = ZONES[rng.random_range(0..ZONES.len())];
                HostSpec {
                    id: format!("h-{i:05}"),
                    cpu: ty.cores * 1024,
                    memory_mib: ty.gib * 1024,
                    network_mbps: Some(ty.mbps),
                    gpus: ty.gpus,
                    attributes: BTreeMap::from([
                        ("ecs.instance-type".to_string(), ty.name.to_string()),
                        ("ecs.availability-zone".to_string(), zone.to_string()),
                    ]),
                    enis: ty.enis,
                    ips_per_eni: ty.ips_per_eni,
                }
            })
            .collect();
        let tasks = (0..spec.tasks)
            .map(|i| {
                let (cores, gib, gpus) = task_size(spec.shape, &mut rng);
                let net = match spec.shape {
                    Shape::Uniform => 100,
                    _ => weighted(&mut rng, &TASK_NET),
                };
                let u: f64 = rng.random();
                let group = ((u * u) * f64::from(GROUPS)) as u32;
                let sg = rng.random_range(0..10) == 0;
                TaskSpec {
                    id: format!("t-{i:06}"),
                    cpu: cores * 1024,
                    memory_mib: gib * 1024,
                    network_mbps: net,
                    gpus,
                    group: format!("app-{group}"),
                    tier: u8::from(group >= 10),
                    security_groups: if sg {
                        vec![format!("sg-{}", group % 4)]
                    } else {
                        Vec::new()
                    },
                    host_ports: Vec::new(),
                    dynamic_ports: 0,
                    constraints: Vec::new(),
                    strategy: Vec::new(),
                }
            })
            .collect();
        let prefix = match spec.shape {
            Shape::Default => "hetero",
            other => other.name(),
        };
        Workload {
            name: format!("{prefix}-{}-{}-s{}", spec.hosts, spec.tasks, spec.seed),
            hosts,
            tasks,
            guarantees: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_spec_parses_and_names_bad_keys() {
        let s: GenSpec = "hosts=10_000,tasks=5,seed=9,shape=gpu".parse().unwrap();
        assert_eq!((s.hosts, s.tasks, s.seed, s.shape), (10_000, 5, 9, Shape::Gpu));
        let e = "hosts=1,cores=2".parse::<GenSpec>().unwrap_err();
        assert!(e.to_string().contains("unknown key 'cores'"), "{e}");
        let e = "shape=round".parse::<GenSpec>().unwrap_err();
        assert!(e.to_string().contains("unknown shape 'round'"), "{e}");
        assert!("hosts=x".parse::<GenSpec>().is_err());
        assert!("hosts".parse::<GenSpec>().is_err());
    }

    #[test]
    fn default_shape_is_deterministic_and_shaped_as_documented() {
        let spec = GenSpec {
            hosts: 500,
            tasks: 5000,
            seed: 4,
            shape: Shape::Default,
        };
        let a = Workload::generate(spec);
        assert_eq!(a, Workload::generate(spec));
        assert_ne!(a, Workload::generate(GenSpec { seed: 5, ..spec }));
        assert_eq!(a.name, "hetero-500-5000-s4");
        for h in &a.hosts {
            assert!([8, 16, 32].contains(&(h.cpu / 1024)), "{h:?}");
            assert!((32..=244).contains(&(h.memory_mib / 1024)), "{h:?}");
            assert!((1000..=10_000).contains(&h.network_mbps.unwrap_or(0)), "{h:?}");
        }
        let small = a.tasks.iter().filter(|t| t.cpu <= 2048).count();
        assert!(small * 10 > a.tasks.len() * 8, "most tasks need 1-2 cores: {small}");
        for t in &a.tasks {
            assert!((1..=32).contains(&(t.cpu / 1024)) && (2..=200).contains(&(t.memory_mib / 1024)));
            assert!((10..=2000).contains(&t.network_mbps));
        }
    }

    fn shape(shape: Shape) -> Workload {
        Workload::generate(GenSpec {
            hosts: 400,
            tasks: 4000,
            seed: 3,
            shape,
        })
    }

    #[test]
    fn other_shapes_are_what_they_say() {
        let b = shape(Shape::Bimodal);
        assert_eq!(b.name, "bimodal-400-4000-s3");
        assert!(b.tasks.iter().all(|t| [1, 16, 32].contains(&(t.cpu / 1024))));
        assert!(b.tasks.iter().any(|t| t.cpu == 32 * 1024));

        let m = shape(Shape::Memory);
        assert!(m.tasks.iter().all(|t| t.memory_mib >= 6 * t.cpu));
        assert!(m.hosts.iter().all(|h| h.memory_mib * 10 >= 76 * h.cpu));

        let g = shape(Shape::Gpu);
        let gpu_hosts = g.hosts.iter().filter(|h| h.gpus > 0).count();
        assert!((120..=200).contains(&gpu_hosts), "{gpu_hosts} of 400 hosts with GPUs");
        let gpu_tasks = g.tasks.iter().filter(|t| t.gpus > 0).count();
        assert!((150..=350).contains(&gpu_tasks), "{gpu_tasks} of 4000 tasks with GPUs");

        let u = shape(Shape::Uniform);
        assert!(
            u.hosts
                .iter()
                .all(|h| h.cpu == u.hosts[0].cpu && h.memory_mib == u.hosts[0].memory_mib)
        );
        assert!(u.tasks.iter().all(|t| t.cpu == 1024 && t.memory_mib == 4096));
    }

    #[test]
    fn every_shape_loads_its_tightest_resource_to_about_three_quarters() {
        for s in Shape::ALL {
            let w = shape(s);
            let sum = |f: fn(&TaskSpec) -> u64| w.tasks.iter().map(f).sum::<u64>() as f64;
            let cap = |f: fn(&HostSpec) -> u64| w.hosts.iter().map(f).sum::<u64>() as f64;
            let mut loads = vec![
                sum(|t| t.cpu) / cap(|h| h.cpu),
                sum(|t| t.memory_mib) / cap(|h| h.memory_mib),
            ];
            if s == Shape::Gpu {
                loads.push(sum(|t| t.gpus) / cap(|h| h.gpus));
            }
            let top = loads.iter().copied().fold(0.0, f64::max);
            assert!((0.6..=0.85).contains(&top), "{}: loads {loads:?}", s.name());
        }
    }
}
