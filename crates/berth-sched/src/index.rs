//! The free-capacity index behind `binpack`: instances already running tasks
//! sit in buckets by their free amount of the packed resource (each bucket
//! ordered by the other resource), empty instances in a list by size, largest
//! first. A search walks buckets upward from the task's demand, so it looks
//! only at instances that can hold the task and stops at the tightest.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::state::Host;
use crate::{BinpackField, Scalars};

/// How many buckets past the first fit the combined fitness still compares.
const LOOKAHEAD: usize = 4;
/// How many distinct empty-host shapes (that fit) an opening compares.
const OPEN_SHAPES: usize = 8;
/// Stranded capacity is lost for good, free capacity elsewhere is not: it
/// weighs this many times more in the fitness (in millionths).
const STRAND_WEIGHT: f64 = 10_000_000.0;
/// Stranding (share of a host) above which opening an empty host is preferred.
const STRAND_HARM: f64 = 0.02;

/// What the batch as a whole asks for, so that one placement does not strand
/// capacity the rest will need.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Balance {
    /// MiB asked per CPU unit over the batch.
    pub ratio: f64,
    /// How much stranded CPU / memory matters: the resource the batch loads
    /// most weighs 1, a less loaded one much less (its load ratio to the 8th).
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
            w_cpu: (load_cpu / top).powi(8),
            w_mem: (load_mem / top).powi(8),
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
    /// Fenzo fitness, inverted) plus twice what of it would be stranded.
    pub fn fitness(&self, host: &Host, d: &Scalars) -> u64 {
        leftover(host, d) + (self.stranded(host, d) * STRAND_WEIGHT) as u64
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

type EmptyKey = (Reverse<u64>, Reverse<u64>, u32);

#[derive(Debug, Clone)]
pub(crate) struct BinIndex {
    field: BinpackField,
    balance: Balance,
    levels: BTreeMap<u64, BTreeSet<(u64, u32)>>,
    empty: BTreeSet<EmptyKey>,
}

impl BinIndex {
    pub fn new(field: BinpackField, balance: Balance) -> Self {
        BinIndex {
            field,
            balance,
            levels: BTreeMap::new(),
            empty: BTreeSet::new(),
        }
    }

    fn key(&self, host: &Host) -> (u64, u64) {
        match self.field {
            BinpackField::Memory => (host.free.memory_mib, host.free.cpu),
            BinpackField::Cpu | BinpackField::Combined => (host.free.cpu, host.free.memory_mib),
        }
    }

    fn empty_key(h: u32, host: &Host) -> EmptyKey {
        (Reverse(host.total.cpu), Reverse(host.total.memory_mib), h)
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
                if self.field != BinpackField::Combined || after_first > LOOKAHEAD {
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
                if harm > STRAND_HARM
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
    fn open(&self, hosts: &[Host], d: &Scalars, mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        let mut scored = 0;
        let mut from: Option<EmptyKey> = None;
        loop {
            let rest = match from {
                None => self.empty.range(..),
                Some(k) => self
                    .empty
                    .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            };
            let mut shape = None;
            let mut found = None;
            for &(Reverse(cpu), Reverse(mem), h) in rest {
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
                if scored >= OPEN_SHAPES {
                    return best.map(|(_, h)| h);
                }
            }
            from = Some((Reverse(cpu), Reverse(mem), u32::MAX));
        }
    }
}
