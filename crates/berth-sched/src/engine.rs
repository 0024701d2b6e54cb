//! One call places a batch: compile the batch's constraints once, order it
//! by tier and fair share, then place task by task into the snapshot.

use berth_model::InstanceStatus;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::constraint::Expr;
use crate::expr;
use crate::fairshare::{FairQueue, JobKey};
use crate::hash::FastMap;
use crate::index::{Balance, BinIndex};
use crate::preempt::within_guarantee;
use crate::spread::SpreadIndex;
use crate::state::{NONE, Need, Resident, Snapshot};
use crate::{
    BinpackField, Constraint, Eviction, MoveHint, PlaceOptions, Placement, Plan, Reason, Scalars, SchedError, Strategy,
    TaskRequest,
};

/// Random probes before `random` falls back to a full scan.
const RANDOM_PROBES: usize = 16;
/// Minimal failed demands remembered per failure class.
const FAIL_MEMORY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Binpack(BinpackField),
    SpreadAttr(u32),
    SpreadInstance,
    Random,
}

/// The spread chains [`SpreadIndex`] serves: the attribute spread over
/// ([`NONE`] for instances only).
fn spread_attr(chain: &[Rule]) -> Option<u32> {
    match chain {
        [Rule::SpreadAttr(a)] | [Rule::SpreadAttr(a), Rule::SpreadInstance] => Some(*a),
        [Rule::SpreadInstance] => Some(NONE),
        _ => None,
    }
}

type SpreadKey = (usize, u32, u32);

/// Instances a set of static (attribute-only) expressions admits, among the
/// ACTIVE ones with a connected agent.
pub(crate) struct Class {
    pub(crate) mask: Vec<bool>,
    pub(crate) eligible: Vec<u32>,
}

pub(crate) struct Job<'a> {
    pub(crate) req: &'a TaskRequest,
    pub(crate) need: Need<'a>,
    pub(crate) class: usize,
    pub(crate) dynamic: Vec<usize>,
    pub(crate) distinct: bool,
    /// Index into [`Batch::chains`].
    pub(crate) chain: usize,
    /// Failure class (see [`FailKey`]); `None` when failures do not carry over.
    pub(crate) fail: Option<usize>,
    pub(crate) error: Option<SchedError>,
    /// Instances of its class whose registered capacity covers its demand.
    pub(crate) fits: u32,
}

/// A task's constraints, resolved against the batch.
#[derive(Clone)]
struct Resolved {
    class: usize,
    dynamic: Vec<usize>,
    distinct: bool,
    error: Option<SchedError>,
}

const DEFAULT_CHAIN: [Strategy; 1] = [Strategy::Binpack(BinpackField::Combined)];

/// What makes two tasks' feasibility comparable: a task whose demand is at
/// least that of a task that already failed in the same class fails too,
/// because within a batch instances only fill up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FailKey {
    class: usize,
    sg: u32,
    ports: Vec<(u8, u16)>,
    dynamic: [u32; 2],
    group: Option<u32>,
}

fn dominates(a: &Scalars, b: &Scalars) -> bool {
    a.cpu >= b.cpu && a.memory_mib >= b.memory_mib && a.network_mbps >= b.network_mbps && a.gpus >= b.gpus
}

pub(crate) struct Batch<'a> {
    pub(crate) jobs: Vec<Job<'a>>,
    pub(crate) classes: Vec<Class>,
    pub(crate) exprs: Vec<Expr>,
    chains: Vec<Vec<Rule>>,
    pub(crate) failure_classes: usize,
    pub(crate) balance: Balance,
    /// ACTIVE instances with a connected agent.
    pub(crate) usable: usize,
}

/// Why a task is unplaced: reasons per instance, and a move hint.
pub(crate) type Why = (Vec<(Reason, u32)>, Option<MoveHint>);

/// The per-batch indexes that must follow every change to a host.
struct Indexes {
    bin: Vec<(usize, BinpackField, BinIndex)>,
    spreads: FastMap<SpreadKey, SpreadIndex>,
    spreads_of_group: FastMap<u32, Vec<SpreadKey>>,
}

impl Indexes {
    /// Runs `change` on host `h` (whose counts of `groups` may change) with
    /// the host taken out of every index it is in, then puts it back.
    fn around<R>(
        &mut self,
        s: &mut Snapshot,
        batch: &Batch<'_>,
        h: usize,
        groups: &[u32],
        change: impl FnOnce(&mut Snapshot) -> R,
    ) -> R {
        let mut touched: Vec<SpreadKey> = Vec::new();
        for g in groups {
            for key in self.spreads_of_group.get(g).map_or(&[][..], Vec::as_slice) {
                if !touched.contains(key) && batch.classes[key.0].mask[h] {
                    touched.push(*key);
                }
            }
        }
        for (c, _, index) in self.bin.iter_mut() {
            if batch.classes[*c].mask[h] {
                index.remove(h as u32, &s.hosts[h]);
            }
        }
        for key in &touched {
            if let Some(index) = self.spreads.get_mut(key) {
                index.remove(h as u32, &s.hosts[h]);
            }
        }
        let out = change(s);
        for (c, _, index) in self.bin.iter_mut() {
            if batch.classes[*c].mask[h] {
                index.insert(h as u32, &s.hosts[h]);
            }
        }
        for key in &touched {
            if let Some(index) = self.spreads.get_mut(key) {
                index.insert(h as u32, &s.hosts[h]);
            }
        }
        out
    }
}

/// The host ports a placed task holds: its static ones and those picked.
fn placed_ports(req: &TaskRequest, picked: &[(berth_model::Protocol, u16)]) -> berth_model::PortSet {
    let mut ports = req.static_ports.clone();
    for (p, port) in picked {
        ports.insert(*p, *port);
    }
    ports
}

impl Snapshot {
    fn compile<'a>(&mut self, tasks: &'a [TaskRequest]) -> Batch<'a> {
        for t in tasks {
            self.groups.intern(&t.group);
        }
        let mut parsed: FastMap<&str, Result<usize, SchedError>> = FastMap::default();
        let mut asts = Vec::new();
        let mut exprs = Vec::new();
        let mut class_ids: FastMap<Vec<usize>, usize> = FastMap::default();
        let mut class_sets: Vec<Vec<usize>> = Vec::new();
        let mut chains: Vec<(&'a [Strategy], Vec<Rule>)> = Vec::new();
        let mut fail_ids: FastMap<FailKey, usize> = FastMap::default();
        let mut jobs = Vec::with_capacity(tasks.len());
        // Consecutive tasks usually share constraints and strategy (one
        // service, one task definition): reuse the last resolution.
        let mut last: Option<(&'a [Constraint], Resolved)> = None;
        for t in tasks {
            let need = self.need(t);
            let resolved = match &last {
                Some((c, r)) if *c == t.constraints.as_slice() => r.clone(),
                _ => {
                    let r = self.resolve(
                        &t.constraints,
                        &mut parsed,
                        &mut asts,
                        &mut exprs,
                        &mut class_ids,
                        &mut class_sets,
                    );
                    last = Some((&t.constraints, r.clone()));
                    r
                }
            };
            let strategies: &'a [Strategy] = if t.strategy.is_empty() {
                &DEFAULT_CHAIN
            } else {
                &t.strategy
            };
            let chain = match chains.iter().rposition(|(src, _)| *src == strategies) {
                Some(c) => c,
                None => {
                    chains.push((strategies, strategies.iter().map(|s| self.rule(s)).collect()));
                    chains.len() - 1
                }
            };
            let fail = if resolved.dynamic.is_empty() {
                let key = FailKey {
                    class: resolved.class,
                    sg: need.sg,
                    ports: t
                        .static_ports
                        .tcp
                        .iter()
                        .map(|p| (0, *p))
                        .chain(t.static_ports.udp.iter().map(|p| (1, *p)))
                        .collect(),
                    dynamic: need.dynamic,
                    group: resolved.distinct.then_some(need.group),
                };
                let next = fail_ids.len();
                Some(*fail_ids.entry(key).or_insert(next))
            } else {
                // `task:group` expressions can start to hold as tasks are placed.
                None
            };
            jobs.push(Job {
                req: t,
                need,
                class: resolved.class,
                dynamic: resolved.dynamic,
                distinct: resolved.distinct,
                chain,
                fail,
                error: resolved.error,
                fits: 0,
            });
        }
        let classes: Vec<Class> = class_sets
            .iter()
            .map(|set| {
                let mask: Vec<bool> = self
                    .hosts
                    .iter()
                    .enumerate()
                    .map(|(h, host)| {
                        host.status == InstanceStatus::Active
                            && host.agent
                            && set.iter().all(|e| exprs[*e].eval(h, host))
                    })
                    .collect();
                let eligible = (0..mask.len() as u32).filter(|h| mask[*h as usize]).collect();
                Class { mask, eligible }
            })
            .collect();
        count_fits(&mut jobs, &classes, &self.hosts);
        let (cpu, mem) = tasks.iter().fold((0u128, 0u128), |(c, m), t| {
            (c + u128::from(t.demand.cpu), m + u128::from(t.demand.memory_mib))
        });
        let capacity = self
            .hosts
            .iter()
            .filter(|h| h.status == InstanceStatus::Active)
            .fold(Scalars::default(), |acc, h| acc.saturating_add(&h.free));
        Batch {
            jobs,
            classes,
            exprs,
            chains: chains.into_iter().map(|(_, c)| c).collect(),
            failure_classes: fail_ids.len(),
            balance: Balance::new((cpu, mem), &capacity),
            usable: self
                .hosts
                .iter()
                .filter(|h| h.status == InstanceStatus::Active && h.agent)
                .count(),
        }
    }

    fn rule(&self, s: &Strategy) -> Rule {
        match s {
            Strategy::Binpack(f) => Rule::Binpack(*f),
            Strategy::SpreadAttribute(a) => Rule::SpreadAttr(self.attr_names.get(a).unwrap_or(NONE)),
            Strategy::SpreadInstance => Rule::SpreadInstance,
            Strategy::Random => Rule::Random,
        }
    }

    /// Parses (once per distinct expression) and classifies a task's constraints.
    fn resolve<'a>(
        &self,
        constraints: &'a [Constraint],
        parsed: &mut FastMap<&'a str, Result<usize, SchedError>>,
        asts: &mut Vec<expr::Ast>,
        exprs: &mut Vec<Expr>,
        class_ids: &mut FastMap<Vec<usize>, usize>,
        class_sets: &mut Vec<Vec<usize>>,
    ) -> Resolved {
        let mut statics = Vec::new();
        let mut r = Resolved {
            class: 0,
            dynamic: Vec::new(),
            distinct: false,
            error: None,
        };
        for c in constraints {
            match c {
                Constraint::DistinctInstance => r.distinct = true,
                Constraint::MemberOf(src) => {
                    let e = parsed.entry(src.as_str()).or_insert_with(|| {
                        let ast = expr::parse(src)?;
                        exprs.push(Expr::compile(&ast, self));
                        asts.push(ast);
                        Ok(exprs.len() - 1)
                    });
                    match e {
                        Ok(e) if asts[*e].is_static() => statics.push(*e),
                        Ok(e) => r.dynamic.push(*e),
                        Err(e) => r.error = Some(e.clone()),
                    }
                }
            }
        }
        statics.sort_unstable();
        statics.dedup();
        r.class = match class_ids.get(&statics) {
            Some(c) => *c,
            None => {
                class_ids.insert(statics.clone(), class_sets.len());
                class_sets.push(statics);
                class_sets.len() - 1
            }
        };
        r
    }

    /// Whether host `h`, already admitted by the job's class, takes the job.
    fn admits(&self, batch: &Batch<'_>, job: &Job<'_>, h: usize) -> bool {
        let host = &self.hosts[h];
        (!job.distinct || host.group_count(job.need.group) == 0)
            && job.dynamic.iter().all(|e| batch.exprs[*e].eval(h, host))
            && host.fits(&job.need).is_ok()
    }

    /// Places a batch. Deterministic for a given snapshot, batch and
    /// `opts.seed`. The snapshot keeps the placements (so the next batch sees
    /// them); tasks that do not fit are reported with a reason per instance.
    pub fn place(&mut self, tasks: &[TaskRequest], opts: &PlaceOptions) -> Plan {
        let mut rng = SmallRng::seed_from_u64(opts.seed);
        let batch = self.compile(tasks);
        let mut indexes: Vec<(usize, BinpackField, BinIndex)> = Vec::new();
        for job in &batch.jobs {
            let chain = &batch.chains[job.chain];
            match chain.first() {
                Some(Rule::Binpack(f)) if !indexes.iter().any(|(c, g, _)| *c == job.class && g == f) => {
                    let mut index = BinIndex::new(*f, batch.balance);
                    for h in &batch.classes[job.class].eligible {
                        index.insert(*h, &self.hosts[*h as usize]);
                    }
                    indexes.push((job.class, *f, index));
                }
                Some(Rule::SpreadAttr(a)) => self.ensure_spread(*a),
                _ => {}
            }
            for r in chain.iter().skip(1) {
                if let Rule::SpreadAttr(a) = r {
                    self.ensure_spread(*a);
                }
            }
        }
        let capacity = self
            .hosts
            .iter()
            .filter(|h| h.status == InstanceStatus::Active)
            .fold(Scalars::default(), |acc, h| acc.saturating_add(&h.total));
        let keys: Vec<JobKey<'_>> = batch
            .jobs
            .iter()
            .map(|j| JobKey {
                tier: j.req.tier,
                group: &j.req.group,
                large: f64::from(j.fits) <= LARGE_TASK_HOST_SHARE * batch.usable as f64,
                daemon: j.req.daemon,
                // GPUs first (the scarcest), then the dominant share.
                size: (j.need.demand.gpus.min(1 << 20) << 40)
                    + (j.need.demand.dominant_share(&capacity) * f64::from(1u32 << 30)) as u64,
            })
            .collect();
        let mut queue = FairQueue::new(&keys, opts, capacity);
        let mut failed: Vec<Vec<Scalars>> = vec![Vec::new(); batch.failure_classes];
        let mut ix = Indexes {
            bin: indexes,
            spreads: FastMap::default(),
            spreads_of_group: FastMap::default(),
        };
        let mut placed = vec![false; tasks.len()];
        let mut plan = Plan::default();
        let mut gpu_jobs_left = batch.jobs.iter().filter(|j| j.need.demand.gpus > 0).count();
        let mut spare_gpus = None;
        while let Some(j) = queue.next() {
            let job = &batch.jobs[j];
            if job.need.demand.gpus > 0 {
                gpu_jobs_left -= 1;
            }
            if spare_gpus != Some(gpu_jobs_left > 0) {
                spare_gpus = Some(gpu_jobs_left > 0);
                for (_, _, index) in ix.bin.iter_mut() {
                    index.spare_gpus = gpu_jobs_left > 0;
                }
            }
            if job.error.is_some() {
                queue.done(None);
                continue;
            }
            let known_to_fail = job
                .fail
                .is_some_and(|k| failed[k].iter().any(|f| dominates(&job.need.demand, f)));
            let spread_key = spread_attr(&batch.chains[job.chain]).map(|a| (job.class, a, job.need.group));
            if let Some(key) = spread_key
                && !ix.spreads.contains_key(&key)
            {
                let values = self.attr_values.get(key.1 as usize).map_or(0, |v| v.names.len());
                let eligible = &batch.classes[job.class].eligible;
                ix.spreads.insert(
                    key,
                    SpreadIndex::new(key.1, values, key.2, opts.seed, eligible, &self.hosts),
                );
                ix.spreads_of_group.entry(key.2).or_default().push(key);
            }
            let spread = spread_key.and_then(|k| ix.spreads.get(&k));
            let chosen = if known_to_fail {
                None
            } else {
                self.select(&batch, job, &ix.bin, spread, &mut rng)
            };
            let h = match chosen {
                Some(h) => h,
                None => {
                    if !known_to_fail && let Some(k) = job.fail {
                        let fs = &mut failed[k];
                        fs.retain(|f| !dominates(f, &job.need.demand));
                        if fs.len() < FAIL_MEMORY {
                            fs.push(job.need.demand);
                        }
                    }
                    match self.preempt_for(&batch, j, &mut ix, &mut queue, opts, &mut plan) {
                        Some(h) => {
                            // Room was made: what failed before may fit now.
                            failed.iter_mut().for_each(Vec::clear);
                            h
                        }
                        None => {
                            queue.done(None);
                            continue;
                        }
                    }
                }
            };
            let (dynamic_ports, eni) = ix.around(self, &batch, h, &[job.need.group], |s| {
                let salt = port_salt(&job.req.id);
                let taken = s.take(h, &job.need, &job.req.dynamic_ports, salt);
                s.hosts[h].running.push(Resident {
                    id: job.req.id.clone(),
                    demand: job.need.demand,
                    group: job.need.group,
                    tier: job.req.tier,
                    protected: false,
                    // Placed now: younger than anything already running.
                    started: u64::MAX,
                    ports: placed_ports(job.req, &taken.0),
                    eni: taken.1,
                });
                taken
            });
            placed[j] = true;
            plan.placements.push(Placement {
                task_id: job.req.id.clone(),
                task_index: j,
                instance_id: self.hosts[h].id.clone(),
                instance_index: h,
                dynamic_ports,
                eni,
            });
            queue.done(Some(job.need.demand));
        }
        plan.unplaced = self.explain(&batch, &placed);
        plan.tiers = crate::explain::tier_reports(tasks, &placed, opts);
        plan
    }

    /// When job `j` may preempt (critical, within its group's guarantee),
    /// evicts the cheapest victims that make room for it and returns the
    /// host; records the evictions in `plan`.
    fn preempt_for(
        &mut self,
        batch: &Batch<'_>,
        j: usize,
        ix: &mut Indexes,
        queue: &mut FairQueue<'_>,
        opts: &PlaceOptions,
        plan: &mut Plan,
    ) -> Option<usize> {
        let job = &batch.jobs[j];
        let usage = queue
            .usage(&job.req.group)
            .or_else(|| opts.usage.get(&job.req.group).copied())
            .unwrap_or_default();
        if !within_guarantee(&opts.guarantees, &job.req.group, job.req.tier, &usage, &job.need.demand) {
            return None;
        }
        let capacity = self
            .hosts
            .iter()
            .filter(|h| h.status == InstanceStatus::Active)
            .fold(Scalars::default(), |acc, h| acc.saturating_add(&h.total));
        let share = |g: u32| {
            let name = self.groups.names.get(g as usize).map_or("", String::as_str);
            queue
                .usage(name)
                .or_else(|| opts.usage.get(name).copied())
                .unwrap_or_default()
                .dominant_share(&capacity)
        };
        let hosts = batch.classes[job.class]
            .eligible
            .iter()
            .map(|h| *h as usize)
            .filter(|h| self.admits_but_resources(batch, job, *h));
        let victims = self.choose_victims(hosts, &job.need, job.req.tier, opts, share)?;
        let h = victims.host;
        let groups: Vec<u32> = victims.picks.iter().map(|p| self.hosts[h].running[*p].group).collect();
        let evicted = ix.around(self, batch, h, &groups, |s| {
            victims.picks.iter().map(|p| s.evict(h, *p)).collect::<Vec<_>>()
        });
        for (r, below) in evicted.into_iter().zip(victims.below_floor) {
            let name = self.groups.names.get(r.group as usize).map_or("", String::as_str);
            queue.evicted(name, &r.demand);
            plan.evictions.push(Eviction {
                task_id: r.id,
                instance_id: self.hosts[h].id.clone(),
                instance_index: h,
                for_task: job.req.id.clone(),
                for_task_index: j,
                below_min_healthy: below,
            });
        }
        Some(h)
    }

    /// [`Snapshot::admits`] without the resource check: the host is one
    /// the task could use once room is made.
    pub(crate) fn admits_but_resources(&self, batch: &Batch<'_>, job: &Job<'_>, h: usize) -> bool {
        let host = &self.hosts[h];
        (!job.distinct || host.group_count(job.need.group) == 0)
            && job.dynamic.iter().all(|e| batch.exprs[*e].eval(h, host))
    }

    fn select(
        &self,
        batch: &Batch<'_>,
        job: &Job<'_>,
        indexes: &[(usize, BinpackField, BinIndex)],
        spread: Option<&SpreadIndex>,
        rng: &mut SmallRng,
    ) -> Option<usize> {
        let class = &batch.classes[job.class];
        if let Some(index) = spread {
            // Values the group uses least first (absent attribute last on ties).
            let counts = self.value_counts(batch, job);
            let order: Vec<usize> = match counts.first() {
                Some(c) if !c.is_empty() => {
                    let mut order: Vec<usize> = (0..c.len()).collect();
                    order.sort_by_key(|s| (c[*s], *s));
                    order
                }
                _ => vec![0],
            };
            return index
                .search(&order, |h| self.admits(batch, job, h as usize))
                .map(|h| h as usize);
        }
        match batch.chains[job.chain].first() {
            Some(Rule::Binpack(f)) => {
                let (_, _, index) = indexes.iter().find(|(c, g, _)| *c == job.class && g == f)?;
                index
                    .search(&self.hosts, &job.need.demand, |h| self.admits(batch, job, h as usize))
                    .map(|h| h as usize)
            }
            Some(Rule::Random) => {
                if class.eligible.is_empty() {
                    return None;
                }
                for _ in 0..RANDOM_PROBES {
                    let h = class.eligible[rng.random_range(0..class.eligible.len())] as usize;
                    if self.admits(batch, job, h) {
                        return Some(h);
                    }
                }
                let mut seen = 0u64;
                let mut pick = None;
                for h in &class.eligible {
                    if self.admits(batch, job, *h as usize) {
                        seen += 1;
                        if rng.random_range(0..seen) == 0 {
                            pick = Some(*h as usize);
                        }
                    }
                }
                pick
            }
            _ => self.scan(batch, job, rng),
        }
    }

    /// Per rule of the job's chain: for a spread over an attribute, the
    /// group's tasks per value id (last: attribute absent); else empty.
    fn value_counts(&self, batch: &Batch<'_>, job: &Job<'_>) -> Vec<Vec<u32>> {
        batch.chains[job.chain]
            .iter()
            .map(|r| match r {
                Rule::SpreadAttr(a) => {
                    let values = self.attr_values.get(*a as usize).map_or(0, |v| v.names.len());
                    let counts = self.spread.get(a);
                    let count = |v: u32| counts.and_then(|c| c.get(&(job.need.group, v))).copied().unwrap_or(0);
                    let mut out: Vec<u32> = (0..values as u32).map(count).collect();
                    out.push(count(NONE));
                    out
                }
                _ => Vec::new(),
            })
            .collect()
    }

    /// Scores every admitted instance by the strategy chain (lower is better,
    /// compared in chain order — ECS allows five — then a seeded random tie-break).
    fn scan(&self, batch: &Batch<'_>, job: &Job<'_>, rng: &mut SmallRng) -> Option<usize> {
        let chain = &batch.chains[job.chain];
        let per_value = self.value_counts(batch, job);
        let d = &job.need.demand;
        let mut best: Option<([u64; 6], usize)> = None;
        for &h in &batch.classes[job.class].eligible {
            let h = h as usize;
            if !self.admits(batch, job, h) {
                continue;
            }
            let host = &self.hosts[h];
            // The chain's keys, then a seeded random one: ties between equal
            // instances must not always fall to the lowest index, or spread
            // piles every group onto the same first hosts.
            let mut key = [0u64; 6];
            key[5] = rng.random::<u64>();
            for (i, rule) in chain.iter().take(5).enumerate() {
                key[i] = match rule {
                    Rule::SpreadAttr(a) => {
                        let v = host.attrs.get(*a as usize).copied().unwrap_or(NONE);
                        let slot = if v == NONE { per_value[i].len() - 1 } else { v as usize };
                        u64::from(per_value[i][slot])
                    }
                    Rule::SpreadInstance => u64::from(host.group_count(job.need.group)),
                    Rule::Random => rng.random::<u64>(),
                    Rule::Binpack(f) if host.is_empty() => {
                        let size = match f {
                            BinpackField::Memory => host.total.memory_mib,
                            _ => host.total.cpu,
                        };
                        (1 << 62) + (1u64 << 40).saturating_sub(size)
                    }
                    Rule::Binpack(BinpackField::Cpu) => host.free.cpu - d.cpu,
                    Rule::Binpack(BinpackField::Memory) => host.free.memory_mib - d.memory_mib,
                    Rule::Binpack(BinpackField::Combined) => batch.balance.fitness(host, d),
                };
            }
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, h));
            }
        }
        best.map(|(_, h)| h)
    }
}

/// A task is large when at most this share of the cluster's usable
/// instances (ACTIVE, agent connected) could hold it even empty, because of
/// its size or its constraints. Such tasks are placed first
/// within their tier (see `fairshare`): binpack opens the largest hosts first,
/// so the hosts a large task needs are exactly the ones small tasks would
/// otherwise take. A half is where that competition starts: below it the
/// task fits on a minority of hosts, which small tasks can fill up entirely
/// before the cluster is half full.
const LARGE_TASK_HOST_SHARE: f64 = 0.5;

/// Sets each job's [`Job::fits`]: instances of its class whose registered
/// capacity covers its demand, counted over the class's distinct host shapes
/// and shared by jobs with the same demand.
fn count_fits(jobs: &mut [Job<'_>], classes: &[Class], hosts: &[crate::state::Host]) {
    let mut shapes: Vec<Option<Vec<(Scalars, u32)>>> = vec![None; classes.len()];
    let mut memo: FastMap<(usize, Scalars), u32> = FastMap::default();
    for job in jobs.iter_mut() {
        let key = (job.class, job.need.demand);
        if let Some(n) = memo.get(&key) {
            job.fits = *n;
            continue;
        }
        let shape = shapes[job.class].get_or_insert_with(|| {
            let mut counts: FastMap<Scalars, u32> = FastMap::default();
            for h in &classes[job.class].eligible {
                *counts.entry(hosts[*h as usize].total).or_insert(0) += 1;
            }
            counts.into_iter().collect()
        });
        let n = shape
            .iter()
            .filter(|(total, _)| total.covers(&job.need.demand).is_ok())
            .map(|(_, n)| n)
            .sum();
        memo.insert(key, n);
        job.fits = n;
    }
}

/// Where a task's dynamic ports start looking in the instance's range: a
/// hash of its id, so that clusters sharing a host (several agents of one
/// machine in tests and `berth dev`, or programs binding ports of their own)
/// rarely pick the same first ports. Deterministic: same id, same start.
fn port_salt(id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = crate::hash::WordHasher::default();
    h.write(id.as_bytes());
    h.finish()
}
