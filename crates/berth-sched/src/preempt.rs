//! Preemption and move hints: which running tasks to stop so that a task
//! fits, and, for a task left pending, where it would fit if flex tasks
//! moved.
//!
//! Only a critical (tier 0) task whose group stays within its tier-0
//! capacity guarantee after the placement preempts, and only tasks of a
//! higher tier number (flex) without scale-in protection are victims.
//! Victims are chosen by a cost, compared in this order:
//!
//! 1. fewest tasks stopped (one victim that frees enough beats several);
//! 2. lowest tier first (the highest tier number);
//! 3. the group furthest over its fair share first (dominant share of the
//!    cluster, as DRF measures it);
//! 4. youngest first (least work lost).
//!
//! On a host, the single most preferred victim that frees enough wins;
//! otherwise victims are taken in preference order until the task fits, and
//! any that turn out unneeded are given back ("never more than needed").
//! Across hosts the cheapest set wins. Victims whose group would go below
//! its `min_running` (a flex service's `minimumHealthyPercent`) are spared
//! unless no host can make room without them; then they are taken and the
//! eviction says so.

use std::cmp::Reverse;

use crate::hash::FastMap;
use crate::state::{Host, NONE, Need, Resident, Snapshot};
use crate::{Guarantee, MoveHint, PlaceOptions, Scalars};

/// Tier of the tasks that may preempt (critical).
pub(crate) const CRITICAL: u8 = 0;
/// Tier from which tasks count as movable in hints (flex).
const FLEX: u8 = 1;

/// Victims' preference: lower is taken first.
type VictimKey = (Reverse<u8>, Reverse<u64>, Reverse<u64>);

/// The room a preempting task gets on one host.
pub(crate) struct Victims {
    pub host: usize,
    /// Indices into the host's `running`, highest first (so that removing
    /// them in this order keeps the others valid).
    pub picks: Vec<usize>,
    /// Per pick: its group goes below its `min_running`.
    pub below_floor: Vec<bool>,
}

/// Whether a task of `group` in `tier`, placed with `demand` on top of
/// `usage`, stays within its capacity guarantee. Dimensions the guarantee
/// leaves at zero are not guaranteed and so do not count.
pub(crate) fn within_guarantee(
    guarantees: &[Guarantee],
    group: &str,
    tier: u8,
    usage: &Scalars,
    demand: &Scalars,
) -> bool {
    if tier != CRITICAL {
        return false;
    }
    let Some(g) = guarantees.iter().find(|g| g.group == group && g.tier == tier) else {
        return false;
    };
    let after = usage.saturating_add(demand);
    let dims = [
        (after.cpu, g.capacity.cpu),
        (after.memory_mib, g.capacity.memory_mib),
        (after.network_mbps, g.capacity.network_mbps),
        (after.gpus, g.capacity.gpus),
    ];
    dims.iter().any(|(_, cap)| *cap > 0) && dims.iter().all(|(u, cap)| *cap == 0 || u <= cap)
}

/// Whether `need` fits on `host` once `picks` (indices into its running
/// tasks) are gone.
fn fits_without(host: &Host, need: &Need<'_>, picks: &[usize]) -> bool {
    let freed = picks
        .iter()
        .fold(host.free, |a, p| a.saturating_add(&host.running[*p].demand));
    if freed.covers(&need.demand).is_err() {
        return false;
    }
    if !need.has_ports && need.sg == NONE {
        return true;
    }
    let mut h = host.clone();
    for p in picks {
        let r = &host.running[*p];
        h.give_back(&r.demand, &Host::resident_ports(r), r.eni, r.group);
    }
    h.fits(need).is_ok()
}

/// The fewest victims on `host` that make room for `need`, among the
/// candidates (already sorted by preference); unneeded ones are given back.
fn room_on(host: &Host, need: &Need<'_>, candidates: &[usize]) -> Option<Vec<usize>> {
    if let Some(c) = candidates.iter().find(|c| fits_without(host, need, &[**c])) {
        return Some(vec![*c]);
    }
    let mut chosen = Vec::new();
    for c in candidates {
        chosen.push(*c);
        if fits_without(host, need, &chosen) {
            // Least preferred first: drop whatever is not needed.
            let mut i = chosen.len();
            while i > 0 {
                i -= 1;
                let without: Vec<usize> = chosen
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, c)| *c)
                    .collect();
                if fits_without(host, need, &without) {
                    chosen = without;
                }
            }
            return Some(chosen);
        }
    }
    None
}

impl Snapshot {
    /// Running tasks per group, for the groups with a floor.
    fn live_counts(&self, floors: &FastMap<u32, u32>) -> FastMap<u32, u32> {
        let mut out: FastMap<u32, u32> = FastMap::default();
        for h in &self.hosts {
            for (g, n) in &h.groups {
                if floors.contains_key(g) {
                    *out.entry(*g).or_insert(0) += n;
                }
            }
        }
        out
    }

    /// The cheapest set of victims on one of `hosts` (those the task's
    /// non-resource checks admit) for a task of `tier`; `share` gives each
    /// group's dominant share of the cluster.
    pub(crate) fn choose_victims(
        &self,
        hosts: impl Iterator<Item = usize> + Clone,
        need: &Need<'_>,
        tier: u8,
        opts: &PlaceOptions,
        share: impl Fn(u32) -> f64,
    ) -> Option<Victims> {
        let floors: FastMap<u32, u32> = opts
            .min_running
            .iter()
            .filter_map(|(g, n)| self.groups.get(g).map(|g| (g, *n)))
            .collect();
        let live = self.live_counts(&floors);
        let headroom = |g: u32| -> u32 {
            match floors.get(&g) {
                Some(f) => live.get(&g).copied().unwrap_or(0).saturating_sub(*f),
                None => u32::MAX,
            }
        };
        let key =
            |r: &Resident| -> VictimKey { (Reverse(r.tier), Reverse(scaled(share(r.group))), Reverse(r.started)) };
        for spare_floors in [true, false] {
            let mut best: Option<((usize, VictimKey, usize), Vec<usize>)> = None;
            for h in hosts.clone() {
                let host = &self.hosts[h];
                let mut cands: Vec<usize> = (0..host.running.len())
                    .filter(|i| {
                        let r = &host.running[*i];
                        r.tier > tier && !r.protected && (!spare_floors || headroom(r.group) > 0)
                    })
                    .collect();
                if cands.is_empty() {
                    continue;
                }
                cands.sort_by_key(|i| key(&host.running[*i]));
                let Some(picks) = room_on(host, need, &cands) else {
                    continue;
                };
                if spare_floors {
                    let mut taken: FastMap<u32, u32> = FastMap::default();
                    for p in &picks {
                        *taken.entry(host.running[*p].group).or_insert(0) += 1;
                    }
                    if taken.iter().any(|(g, n)| *n > headroom(*g)) {
                        continue;
                    }
                }
                let worst =
                    picks
                        .iter()
                        .map(|p| key(&host.running[*p]))
                        .max()
                        .unwrap_or((Reverse(0), Reverse(0), Reverse(0)));
                let cost = (picks.len(), worst, h);
                if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                    best = Some((cost, picks));
                }
            }
            if let Some(((_, _, h), mut picks)) = best {
                let host = &self.hosts[h];
                let mut left: FastMap<u32, u32> = FastMap::default();
                let below_floor_of = |p: &usize, left: &mut FastMap<u32, u32>| {
                    let g = host.running[*p].group;
                    let room = left.entry(g).or_insert_with(|| headroom(g));
                    let below = floors.contains_key(&g) && *room == 0;
                    *room = room.saturating_sub(1);
                    below
                };
                picks.sort_unstable_by(|a, b| b.cmp(a));
                let below_floor = picks.iter().map(|p| below_floor_of(p, &mut left)).collect();
                return Some(Victims {
                    host: h,
                    picks,
                    below_floor,
                });
            }
        }
        None
    }

    /// For a pending task: the host among `hosts` where it would fit with
    /// the fewest movable (flex, unprotected) tasks moved away.
    pub(crate) fn move_hint(&self, hosts: impl Iterator<Item = usize>, need: &Need<'_>) -> Option<MoveHint> {
        let mut best: Option<(usize, usize)> = None;
        for h in hosts {
            let host = &self.hosts[h];
            let mut cands: Vec<usize> = (0..host.running.len())
                .filter(|i| host.running[*i].tier >= FLEX && !host.running[*i].protected)
                .collect();
            if cands.is_empty() {
                continue;
            }
            // Largest first: the fewest moves.
            cands.sort_by_key(|i| Reverse(host.running[*i].demand.cpu + host.running[*i].demand.memory_mib / 4));
            if let Some(picks) = room_on(host, need, &cands)
                && best.is_none_or(|(n, _)| picks.len() < n)
            {
                best = Some((picks.len(), h));
            }
        }
        best.map(|(n, h)| MoveHint {
            instance_id: self.hosts[h].id.clone(),
            tasks: n as u32,
        })
    }
}

fn scaled(share: f64) -> u64 {
    if share.is_finite() {
        (share * 1e9).clamp(0.0, u64::MAX as f64 / 2.0) as u64
    } else {
        u64::MAX
    }
}
