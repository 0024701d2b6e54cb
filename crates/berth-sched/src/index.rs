//! The free-capacity index behind `binpack`: instances already running tasks
//! sit in buckets by their free amount of the packed resource (each bucket
//! ordered by the other resource), empty instances in a list by size, largest
//! first. A search walks buckets upward from the task's demand, so it looks
//! only at instances that can hold the task and stops at the tightest.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::state::Host;
use crate::{BinpackField, Scalars};

/// How many free-CPU levels past the first one that fits the combined
/// fitness still compares. The tightest level usually wins; a few more let
/// a host whose memory matches the task better win over a tighter one that
/// would strand. Each level costs three ordered-set lookups per placement,
/// and past four the shapes in the tests (`tests/shapes.rs`) pack no better.
const LEVELS_PAST_FIRST_FIT: usize = 4;
/// How many distinct empty-host shapes (of the largest CPU size that fits)
/// an opening compares for stranding. Fleets have a handful of instance
/// types; eight covers them without scanning every empty host.
const EMPTY_SHAPES_COMPARED: usize = 8;
/// Weight of stranded capacity against free capacity in the fitness, in
/// millionths of a host: free capacity on one host can still be used by
/// the next task, stranded capacity (CPU with no memory left, or the
/// reverse) never can. At ten host-widths per host-width stranded, any
/// stranding outweighs the whole of the free-capacity term (at most three
/// host-widths), so the fitness only trades tightness between placements
/// that strand equally.
const STRANDED_WEIGHT: f64 = 10_000_000.0;
/// Stranding (share of a host) above which the best busy host loses to an
/// empty host that would strand less. Below 2 % the stranded capacity is
/// smaller than most tasks and so lost anyway; above it, opening a host is
/// cheaper than losing a task's worth of capacity for good.
const STRAND_TOLERANCE: f64 = 0.02;
/// How steeply the weight of stranding falls for the resource the batch
/// loads less: its load relative to the other's, to this power. At 8, a
/// resource loaded at 90 % of the other weighs 0.43, at 70 % 0.06, at 50 %
/// 0.004: capacity of a resource with slack to spare is barely worth
/// protecting, that of the binding resource is.
const MINOR_RESOURCE_EXPONENT: i32 = 8;

/// What the batch as a whole asks for, so that one placement does not strand
/// capacity the rest will need.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Balance {
    /// MiB asked per CPU unit over the batch.
    pub ratio: f64,
    /// How much stranded CPU / memory matters: the resource the batch loads
    /// most weighs 1, a less loaded one much less (see
    /// [`MINOR_RESOURCE_EXPONENT`]).
    pub w_cpu: f64,
    pub w_mem: f64,
}

impl Balance {
    pub fn new(demand: (u128, u128), capacity: &Scalars) -> Balance {
        let (cpu, mem) = demand;
        if cpu == 0 || mem == 0 || capacity.cpu == 0 || capacity.memory_mib == 0 {
            return Balance::default();
        }
        let load_cpu = cpu as f64 / capacity.cpu as f64;
        let load_mem = mem as f64 / capacity.memory_mib as f64;
        let top = load_cpu.max(load_mem);
        Balance {
            ratio: mem as f64 / cpu as f64,
            w_cpu: (load_cpu / top).powi(MINOR_RESOURCE_EXPONENT),
            w_mem: (load_mem / top).powi(MINOR_RESOURCE_EXPONENT),
        }
    }

    /// Share of the host that would be left but unusable by tasks shaped
    /// like the batch's average: CPU without memory, or memory without CPU.
    fn stranded(&self, host: &Host, d: &Scalars) -> f64 {
        if self.ratio <= 0.0 || host.total.cpu == 0 || host.total.memory_mib == 0 {
            return 0.0;
        }
        let cpu_left = host.free.cpu.saturating_sub(d.cpu) as f64;
        let mem_left = host.free.memory_mib.saturating_sub(d.memory_mib) as f64;
        self.w_cpu * (cpu_left - mem_left / self.ratio).max(0.0) / host.total.cpu as f64
            + self.w_mem * (mem_left - cpu_left * self.ratio).max(0.0) / host.total.memory_mib as f64
    }

    /// Lower is better: the normalized capacity left after placing `d` (the
    /// Fenzo fitness, inverted) plus what of it would be stranded, weighed
    /// by [`STRANDED_WEIGHT`].
    pub fn fitness(&self, host: &Host, d: &Scalars) -> u64 {
        leftover(host, d) + (self.stranded(host, d) * STRANDED_WEIGHT) as u64
    }
}

/// The normalized capacity left after placing `d` (CPU, memory, network),
/// in millionths per resource.
fn leftover(host: &Host, d: &Scalars) -> u64 {
    let part = |free: u64, want: u64, total: u64| -> u64 {
        if total == 0 {
            0
        } else {
            ((free.saturating_sub(want)) as u128 * 1_000_000 / total as u128) as u64
        }
    };
    part(host.free.cpu, d.cpu, host.total.cpu)
        + part(host.free.memory_mib, d.memory_mib, host.total.memory_mib)
        + part(host.free.network_mbps, d.network_mbps, host.total.network_mbps)
}

/// Empty hosts: hosts with GPUs after those without, then largest first.
type EmptyKey = (bool, Reverse<u64>, Reverse<u64>, u32);

#[derive(Debug, Clone)]
pub(crate) struct BinIndex {
    field: BinpackField,
    balance: Balance,
    levels: BTreeMap<u64, BTreeSet<(u64, u32)>>,
    empty: BTreeSet<EmptyKey>,
    /// Tasks that need GPUs are still to come in the batch: tasks that need
    /// none open hosts with GPUs only when no other fits.
    pub spare_gpus: bool,
}

impl BinIndex {
    pub fn new(field: BinpackField, balance: Balance) -> Self {
        BinIndex {
            field,
            balance,
            levels: BTreeMap::new(),
            empty: BTreeSet::new(),
            spare_gpus: false,
        }
    }

    fn key(&self, host: &Host) -> (u64, u64) {
        match self.field {
            BinpackField::Memory => (host.free.memory_mib, host.free.cpu),
            BinpackField::Cpu | BinpackField::Combined => (host.free.cpu, host.free.memory_mib),
        }
    }

    fn empty_key(h: u32, host: &Host) -> EmptyKey {
        (
            host.total.gpus > 0,
            Reverse(host.total.cpu),
            Reverse(host.total.memory_mib),
            h,
        )
    }

    pub fn insert(&mut self, h: u32, host: &Host) {
        if host.is_empty() {
            self.empty.insert(Self::empty_key(h, host));
        } else {
            let (p, s) = self.key(host);
            self.levels.entry(p).or_default().insert((s, h));
        }
    }

    /// Must be called before `host` changes.
    pub fn remove(&mut self, h: u32, host: &Host) {
        if host.is_empty() {
            self.empty.remove(&Self::empty_key(h, host));
        } else {
            let (p, s) = self.key(host);
            if let Some(level) = self.levels.get_mut(&p) {
                level.remove(&(s, h));
                if level.is_empty() {
                    self.levels.remove(&p);
                }
            }
        }
    }

    /// The best instance for demand `d` among those `ok` accepts: the
    /// tightest busy one, else an empty one (see [`BinIndex::open`]).
    pub fn search(&self, hosts: &[Host], d: &Scalars, mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        let (want_p, want_s) = match self.field {
            BinpackField::Memory => (d.memory_mib, d.cpu),
            BinpackField::Cpu | BinpackField::Combined => (d.cpu, d.memory_mib),
        };
        let mut best: Option<(u64, u32)> = None;
        let mut after_first = 0;
        for (&level_key, level) in self.levels.range(want_p..) {
            if best.is_some() {
                after_first += 1;
                if self.field != BinpackField::Combined || after_first > LEVELS_PAST_FIRST_FIT {
                    break;
                }
            }
            if self.field != BinpackField::Combined {
                if let Some(h) = level.range((want_s, 0)..).map(|(_, h)| *h).find(|h| ok(*h)) {
                    best = Some((0, h));
                }
                continue;
            }
            // The tightest host of the level, and the ones around the memory
            // that would leave it balanced.
            let cpu_left = level_key.saturating_sub(want_p) as f64;
            let balanced = want_s.saturating_add((cpu_left * self.balance.ratio) as u64);
            let tight = level.range((want_s, 0)..).map(|(_, h)| *h).find(|h| ok(*h));
            let above = level.range((balanced, 0)..).map(|(_, h)| *h).find(|h| ok(*h));
            let below = level
                .range((want_s, 0)..(balanced, 0))
                .rev()
                .map(|(_, h)| *h)
                .find(|h| ok(*h));
            for h in [tight, above, below].into_iter().flatten() {
                let score = self.balance.fitness(&hosts[h as usize], d);
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, h));
                }
            }
        }
        match best {
            // A placement that strands part of a busy host is worse than
            // opening a host it fits cleanly; tasks of the other shape will
            // fill the first one later.
            Some((_, h)) if self.field == BinpackField::Combined => {
                let host = &hosts[h as usize];
                let harm = self.balance.stranded(host, d) - self.balance.stranded(host, &Scalars::default());
                if harm > STRAND_TOLERANCE
                    && let Some(e) = self.open(hosts, d, &mut ok)
                    && self.balance.stranded(&hosts[e as usize], d) < harm
                {
                    return Some(e);
                }
                Some(h)
            }
            Some((_, h)) => Some(h),
            None => self.open(hosts, d, ok),
        }
    }

    /// Picks an empty host: the largest CPU size that fits (so that whole
    /// hosts stay empty) and, among its shapes, the one the placement would
    /// strand least (more memory first on ties), so opened hosts can be filled.
    /// While tasks that need GPUs are still to come ([`BinIndex::spare_gpus`]),
    /// a task that needs none opens a host with GPUs only when no other
    /// fits: a host opened for CPU work would keep its GPUs from them. Once
    /// they are placed, hosts with GPUs are hosts like any other, so that
    /// packing does not leave large hosts empty for demand that is not there.
    fn open(&self, hosts: &[Host], d: &Scalars, mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        if d.gpus == 0 && !self.spare_gpus {
            return self.open_any(hosts, d, ok);
        }
        if d.gpus == 0
            && let Some(h) = self.open_in(false, hosts, d, &mut ok)
        {
            return Some(h);
        }
        self.open_in(true, hosts, d, ok)
    }

    /// The better of the best host without GPUs and the best with: the
    /// larger, then the one that strands less.
    fn open_any(&self, hosts: &[Host], d: &Scalars, mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        let plain = self.open_in(false, hosts, d, &mut ok);
        let gpu = self.open_in(true, hosts, d, &mut ok);
        match (plain, gpu) {
            (Some(a), Some(b)) => {
                let rank = |h: u32| {
                    let host = &hosts[h as usize];
                    (
                        Reverse(host.total.cpu),
                        (self.balance.stranded(host, d) * 1_000_000.0) as u64,
                        Reverse(host.total.memory_mib),
                    )
                };
                Some(if rank(b) < rank(a) { b } else { a })
            }
            (a, b) => a.or(b),
        }
    }

    fn open_in(&self, gpus: bool, hosts: &[Host], d: &Scalars, mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let end = (gpus, Reverse(0), Reverse(0), u32::MAX);
        let mut best: Option<(u64, u32)> = None;
        let mut scored = 0;
        let mut from: Option<EmptyKey> = None;
        loop {
            let start = match from {
                None => Included((gpus, Reverse(u64::MAX), Reverse(u64::MAX), 0)),
                Some(k) => Excluded(k),
            };
            let rest = self.empty.range((start, if gpus { Unbounded } else { Included(end) }));
            let mut shape = None;
            let mut found = None;
            for &(_, Reverse(cpu), Reverse(mem), h) in rest {
                if cpu < d.cpu || best.is_some_and(|(_, b)| hosts[b as usize].total.cpu != cpu) {
                    // Smaller hosts cannot take the task, or are not compared.
                    return best.map(|(_, h)| h);
                }
                if shape.is_some_and(|s| s != (cpu, mem)) {
                    break;
                }
                shape = Some((cpu, mem));
                if ok(h) {
                    found = Some(h);
                    break;
                }
            }
            let Some((cpu, mem)) = shape else {
                return best.map(|(_, h)| h);
            };
            if let Some(h) = found {
                if self.field != BinpackField::Combined {
                    return Some(h);
                }
                let score = (self.balance.stranded(&hosts[h as usize], d) * 1_000_000.0) as u64;
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, h));
                }
                scored += 1;
                if scored >= EMPTY_SHAPES_COMPARED {
                    return best.map(|(_, h)| h);
                }
            }
            from = Some((gpus, Reverse(cpu), Reverse(mem), u32::MAX));
        }
    }
}
