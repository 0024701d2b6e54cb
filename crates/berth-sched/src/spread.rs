//! The index behind `spread` chains (`spread(attribute:NAME)`, optionally
//! followed by `spread(instanceId)`, or `spread(instanceId)` alone): for one
//! group, the eligible instances split by attribute value, each part ordered
//! by how many of the group's tasks the instance runs. A search visits the
//! values least used by the group first and, inside one, instances in that
//! order, so it stops at the first instance that takes the task instead of
//! scoring every instance.

use std::collections::BTreeSet;

use crate::state::{Host, NONE};

#[derive(Debug, Clone)]
pub(crate) struct SpreadIndex {
    /// Attribute spread over, or [`NONE`] for instances only.
    attr: u32,
    group: u32,
    seed: u64,
    /// Per value id (the last slot: attribute absent): (group tasks on the
    /// instance, shuffle key, instance).
    slots: Vec<BTreeSet<(u32, u64, u32)>>,
}

/// SplitMix64: a per-(seed, group, instance) shuffle, so that ties between
/// equally used instances do not all fall to the same low indexes.
fn shuffle(seed: u64, group: u32, h: u32) -> u64 {
    let mut z = seed ^ ((u64::from(group) << 32) | u64::from(h));
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SpreadIndex {
    /// `values`: how many distinct values `attr` has (ignored for [`NONE`]).
    pub fn new(attr: u32, values: usize, group: u32, seed: u64, eligible: &[u32], hosts: &[Host]) -> Self {
        let n = if attr == NONE { 1 } else { values + 1 };
        let mut index = SpreadIndex {
            attr,
            group,
            seed,
            slots: vec![BTreeSet::new(); n],
        };
        for &h in eligible {
            index.insert(h, &hosts[h as usize]);
        }
        index
    }

    pub fn slot(&self, host: &Host) -> usize {
        if self.attr == NONE {
            return 0;
        }
        match host.attrs.get(self.attr as usize).copied().unwrap_or(NONE) {
            NONE => self.slots.len() - 1,
            v => v as usize,
        }
    }

    fn entry(&self, h: u32, host: &Host) -> (u32, u64, u32) {
        (host.group_count(self.group), shuffle(self.seed, self.group, h), h)
    }

    pub fn insert(&mut self, h: u32, host: &Host) {
        let (s, e) = (self.slot(host), self.entry(h, host));
        self.slots[s].insert(e);
    }

    /// Must be called before `host` changes.
    pub fn remove(&mut self, h: u32, host: &Host) {
        let (s, e) = (self.slot(host), self.entry(h, host));
        self.slots[s].remove(&e);
    }

    /// The first instance `ok` accepts, visiting value slots in `order`.
    pub fn search(&self, order: &[usize], mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        order
            .iter()
            .filter_map(|s| self.slots.get(*s))
            .find_map(|slot| slot.iter().map(|(_, _, h)| *h).find(|h| ok(*h)))
    }
}
