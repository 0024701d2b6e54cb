//! Titus-style ordering of a batch: DAEMON service tasks first (each is
//! pinned to one instance, and must be there before replica tasks fill
//! it); then tier 0 before tier 1; inside a tier,
//! large tasks (those few hosts can take) before the rest; inside each of
//! those, the application (group) furthest below its capacity guarantee goes
//! next, by dominant-resource share; once every group is at or above its
//! guarantee, the rest compete by dominant share of the cluster (DRF).
//! Inside a group, tasks keep batch order (first come, first served).
//!
//! Large tasks go first within their tier, largest first (first fit
//! decreasing), because the hosts only they fit
//! are also the hosts binpack opens first for small tasks (largest first):
//! placed afterwards, they would find every such host part-used and stay
//! pending on a half-empty cluster. Placed first, each takes the host it
//! needs and small tasks fill around it, which packs no worse.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::{PlaceOptions, Scalars};

#[derive(Debug)]
struct Bucket {
    jobs: Vec<usize>,
    next: usize,
    /// Index into [`FairQueue::usage`]: a group's usage is shared by its
    /// buckets in both passes of a tier.
    group: usize,
    guarantee: Option<Scalars>,
}

/// Hands out job indices in placement order; told after each whether it was
/// placed, so usage (and so the order) follows what really happened.
#[derive(Debug)]
pub(crate) struct FairQueue<'a> {
    /// Per (daemon or not, tier, large or not), in that order.
    passes: Vec<Vec<Bucket>>,
    /// Whether each pass is a large one (ordered by size, not share).
    by_size: Vec<bool>,
    sizes: Vec<u64>,
    pass: usize,
    heap: BinaryHeap<Reverse<(u8, u64, usize)>>,
    capacity: Scalars,
    current: Option<usize>,
    names: Vec<&'a str>,
    usage: Vec<Scalars>,
}

fn scaled(share: f64) -> u64 {
    if share.is_finite() {
        (share * 1e9).min(u64::MAX as f64 / 2.0) as u64
    } else {
        u64::MAX
    }
}

fn key(usage: &Scalars, guarantee: Option<&Scalars>, capacity: &Scalars) -> (u8, u64) {
    if let Some(g) = guarantee {
        let s = usage.dominant_share(g);
        if s < 1.0 {
            return (0, scaled(s));
        }
    }
    (1, scaled(usage.dominant_share(capacity)))
}

pub(crate) struct JobKey<'a> {
    pub tier: u8,
    pub group: &'a str,
    /// Few hosts can take it: placed in the tier's first pass.
    pub large: bool,
    pub daemon: bool,
    /// Larger is bigger; orders the large pass, largest first.
    pub size: u64,
}

impl<'a> FairQueue<'a> {
    pub fn new(jobs: &[JobKey<'a>], opts: &PlaceOptions, capacity: Scalars) -> Self {
        let mut by: BTreeMap<(bool, u8, bool), BTreeMap<&'a str, Vec<usize>>> = BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            by.entry((!j.daemon, j.tier, !j.large))
                .or_default()
                .entry(j.group)
                .or_default()
                .push(i);
        }
        let guarantees: HashMap<(&str, u8), Scalars> = opts
            .guarantees
            .iter()
            .map(|g| ((g.group.as_str(), g.tier), g.capacity))
            .collect();
        let mut names: Vec<&'a str> = Vec::new();
        let mut usage = Vec::new();
        let mut passes = Vec::new();
        let mut by_size = Vec::new();
        for ((_, tier, small), groups) in by {
            by_size.push(!small);
            let mut buckets = Vec::new();
            for (group, idx) in groups {
                let g = match names.iter().position(|n| *n == group) {
                    Some(g) => g,
                    None => {
                        names.push(group);
                        usage.push(opts.usage.get(group).copied().unwrap_or_default());
                        names.len() - 1
                    }
                };
                let mut idx = idx;
                if !small {
                    // First fit decreasing: the largest of the large first.
                    idx.sort_by_key(|j| std::cmp::Reverse(jobs[*j].size));
                }
                buckets.push(Bucket {
                    jobs: idx,
                    next: 0,
                    group: g,
                    guarantee: guarantees.get(&(group, tier)).copied(),
                });
            }
            passes.push(buckets);
        }
        let mut q = FairQueue {
            passes,
            by_size,
            sizes: jobs.iter().map(|j| j.size).collect(),
            pass: 0,
            heap: BinaryHeap::new(),
            capacity,
            current: None,
            names,
            usage,
        };
        q.fill_heap();
        q
    }

    fn fill_heap(&mut self) {
        self.heap.clear();
        let Some(buckets) = self.passes.get(self.pass) else {
            return;
        };
        for b in 0..buckets.len() {
            let k = self.bucket_key(b);
            self.heap.push(Reverse((k.0, k.1, b)));
        }
    }

    /// A bucket's place in the heap: by fair share, or in a large pass by
    /// the size of its next job (largest first, so that the tasks fewest
    /// hosts can take go before the others that also need those hosts).
    fn bucket_key(&self, b: usize) -> (u8, u64) {
        let bucket = &self.passes[self.pass][b];
        if self.by_size[self.pass] {
            let size = bucket.jobs.get(bucket.next).map_or(0, |j| self.sizes[*j]);
            return (0, u64::MAX - size);
        }
        key(&self.usage[bucket.group], bucket.guarantee.as_ref(), &self.capacity)
    }

    /// The next job to place; call [`FairQueue::done`] before asking again.
    pub fn next(&mut self) -> Option<usize> {
        loop {
            let Some(Reverse((_, _, b))) = self.heap.pop() else {
                self.pass += 1;
                if self.pass >= self.passes.len() {
                    return None;
                }
                self.fill_heap();
                continue;
            };
            let bucket = &mut self.passes[self.pass][b];
            if bucket.next < bucket.jobs.len() {
                self.current = Some(b);
                let j = bucket.jobs[bucket.next];
                bucket.next += 1;
                return Some(j);
            }
        }
    }

    /// What `group` uses now: its usage at the start plus what was placed
    /// (and minus what was evicted) in this batch.
    pub fn usage(&self, group: &str) -> Option<Scalars> {
        self.names.iter().position(|n| *n == group).map(|g| self.usage[g])
    }

    /// Takes a preempted task's demand off its group's usage.
    pub fn evicted(&mut self, group: &str, demand: &Scalars) {
        if let Some(g) = self.names.iter().position(|n| *n == group) {
            self.usage[g] = self.usage[g].saturating_sub(demand);
        }
    }

    /// Records whether the job last handed out was placed (with `demand`).
    pub fn done(&mut self, placed: Option<Scalars>) {
        let Some(b) = self.current.take() else { return };
        let bucket = &self.passes[self.pass][b];
        let g = bucket.group;
        let more = bucket.next < bucket.jobs.len();
        if let Some(d) = placed {
            self.usage[g] = self.usage[g].saturating_add(&d);
        }
        if more {
            let (phase, share) = self.bucket_key(b);
            self.heap.push(Reverse((phase, share, b)));
        }
    }
}
