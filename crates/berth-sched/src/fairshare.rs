//! Titus-style ordering of a batch: tier 0 before tier 1; inside a tier, the
//! application (group) furthest below its capacity guarantee goes next, by
//! dominant-resource share; once every group is at or above its guarantee,
//! the rest compete by dominant share of the cluster (DRF). Inside a group,
//! tasks keep batch order (first come, first served).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::{PlaceOptions, Scalars};

#[derive(Debug)]
struct Bucket {
    jobs: Vec<usize>,
    next: usize,
    usage: Scalars,
    guarantee: Option<Scalars>,
}

/// Hands out job indices in placement order; told after each whether it was
/// placed, so usage (and so the order) follows what really happened.
#[derive(Debug)]
pub(crate) struct FairQueue {
    tiers: Vec<(u8, Vec<Bucket>)>,
    tier: usize,
    heap: BinaryHeap<Reverse<(u8, u64, usize)>>,
    capacity: Scalars,
    current: Option<usize>,
}

fn scaled(share: f64) -> u64 {
    if share.is_finite() {
        (share * 1e9).min(u64::MAX as f64 / 2.0) as u64
    } else {
        u64::MAX
    }
}

impl Bucket {
    fn key(&self, capacity: &Scalars) -> (u8, u64) {
        if let Some(g) = &self.guarantee {
            let s = self.usage.dominant_share(g);
            if s < 1.0 {
                return (0, scaled(s));
            }
        }
        (1, scaled(self.usage.dominant_share(capacity)))
    }
}

pub(crate) struct JobKey<'a> {
    pub tier: u8,
    pub group: &'a str,
}

impl FairQueue {
    pub fn new(jobs: &[JobKey<'_>], opts: &PlaceOptions, capacity: Scalars) -> Self {
        let mut by: BTreeMap<u8, BTreeMap<&str, Vec<usize>>> = BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            by.entry(j.tier).or_default().entry(j.group).or_default().push(i);
        }
        let guarantees: HashMap<(&str, u8), Scalars> = opts
            .guarantees
            .iter()
            .map(|g| ((g.group.as_str(), g.tier), g.capacity))
            .collect();
        let mut tiers = Vec::new();
        for (tier, groups) in by {
            let mut buckets = Vec::new();
            for (group, idx) in groups {
                buckets.push(Bucket {
                    jobs: idx,
                    next: 0,
                    usage: opts.usage.get(group).copied().unwrap_or_default(),
                    guarantee: guarantees.get(&(group, tier)).copied(),
                });
            }
            tiers.push((tier, buckets));
        }
        let mut q = FairQueue {
            tiers,
            tier: 0,
            heap: BinaryHeap::new(),
            capacity,
            current: None,
        };
        q.fill_heap();
        q
    }

    fn fill_heap(&mut self) {
        self.heap.clear();
        if let Some((_, buckets)) = self.tiers.get(self.tier) {
            for (b, bucket) in buckets.iter().enumerate() {
                let (phase, share) = bucket.key(&self.capacity);
                self.heap.push(Reverse((phase, share, b)));
            }
        }
    }

    /// The next job to place; call [`FairQueue::done`] before asking again.
    pub fn next(&mut self) -> Option<usize> {
        loop {
            let Some(Reverse((_, _, b))) = self.heap.pop() else {
                self.tier += 1;
                if self.tier >= self.tiers.len() {
                    return None;
                }
                self.fill_heap();
                continue;
            };
            let bucket = &mut self.tiers[self.tier].1[b];
            if bucket.next < bucket.jobs.len() {
                self.current = Some(b);
                let j = bucket.jobs[bucket.next];
                bucket.next += 1;
                return Some(j);
            }
        }
    }

    /// Records whether the job last handed out was placed (with `demand`).
    pub fn done(&mut self, placed: Option<Scalars>) {
        let Some(b) = self.current.take() else { return };
        let bucket = &mut self.tiers[self.tier].1[b];
        if let Some(d) = placed {
            bucket.usage = bucket.usage.saturating_add(&d);
        }
        if bucket.next < bucket.jobs.len() {
            let (phase, share) = bucket.key(&self.capacity);
            self.heap.push(Reverse((phase, share, b)));
        }
    }
}
