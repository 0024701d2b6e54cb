//! Why tasks are left pending: the reasons per instance (ECS's
//! `RESOURCE:MEMORY on 912 instances`), the move hint, and the per-tier
//! account of a batch.

use berth_model::InstanceStatus;

use crate::engine::{Batch, Job, Why};
use crate::hash::FastMap;
use crate::state::Snapshot;
use crate::{PlaceOptions, Reason, Scalars, TaskRequest, TierReport, Unplaced};

impl Snapshot {
    /// Reasons for every unplaced task, against the state after the batch;
    /// tasks with the same needs share one pass over the instances.
    pub(crate) fn explain(&self, batch: &Batch<'_>, placed: &[bool]) -> Vec<Unplaced> {
        // Tasks of one failure class with the same demand fail the same way.
        let mut cache: FastMap<(usize, Scalars), Why> = FastMap::default();
        type DynamicKey = (usize, Scalars, u32, u32, Vec<usize>);
        type PortsKey = (berth_model::PortSet, [u32; 2], bool);
        type Entry = (DynamicKey, PortsKey, Why);
        let mut dynamic_cache: Vec<Entry> = Vec::new();
        let mut out = Vec::new();
        for (j, job) in batch.jobs.iter().enumerate() {
            if placed[j] {
                continue;
            }
            if let Some(e) = &job.error {
                out.push(Unplaced {
                    task_id: job.req.id.clone(),
                    task_index: j,
                    reasons: Vec::new(),
                    error: Some(e.clone()),
                    fits_empty: false,
                    movable: None,
                });
                continue;
            }
            let (reasons, movable) = match job.fail {
                Some(k) => cache
                    .entry((k, job.need.demand))
                    .or_insert_with(|| self.reasons(batch, job))
                    .clone(),
                // Tasks with `task:group` expressions have no failure class;
                // the state is final here, so the same needs still share.
                None => {
                    let key = (
                        job.class,
                        job.need.demand,
                        job.need.sg,
                        job.need.group,
                        job.dynamic.clone(),
                    );
                    let ports = (job.req.static_ports.clone(), job.need.dynamic, job.distinct);
                    match dynamic_cache.iter().find(|(k, p, _)| *k == key && *p == ports) {
                        Some((_, _, r)) => r.clone(),
                        None => {
                            let r = self.reasons(batch, job);
                            if dynamic_cache.len() < 64 {
                                dynamic_cache.push((key, ports, r.clone()));
                            }
                            r
                        }
                    }
                }
            };
            out.push(Unplaced {
                task_id: job.req.id.clone(),
                task_index: j,
                reasons,
                error: None,
                fits_empty: job.fits > 0,
                movable,
            });
        }
        out
    }

    /// The reasons per instance, and where the task would fit if flex
    /// tasks moved.
    fn reasons(&self, batch: &Batch<'_>, job: &Job<'_>) -> Why {
        let hosts = batch.classes[job.class]
            .eligible
            .iter()
            .map(|h| *h as usize)
            .filter(|h| self.admits_but_resources(batch, job, *h));
        (self.instance_reasons(batch, job), self.move_hint(hosts, &job.need))
    }

    fn instance_reasons(&self, batch: &Batch<'_>, job: &Job<'_>) -> Vec<(Reason, u32)> {
        let class = &batch.classes[job.class];
        let mut counts: FastMap<Reason, u32> = FastMap::default();
        for (h, host) in self.hosts.iter().enumerate() {
            let reason = match host.status {
                InstanceStatus::Inactive => continue,
                InstanceStatus::Draining => Reason::Draining,
                InstanceStatus::Active if !host.agent => Reason::Agent,
                InstanceStatus::Active if !class.mask[h] => Reason::Attribute,
                InstanceStatus::Active if job.distinct && host.group_count(job.need.group) > 0 => {
                    Reason::DistinctInstance
                }
                InstanceStatus::Active if !job.dynamic.iter().all(|e| batch.exprs[*e].eval(h, host)) => {
                    Reason::Attribute
                }
                InstanceStatus::Active => match self.resource_reason(h, &job.need) {
                    Some(r) => r,
                    None => continue,
                },
            };
            *counts.entry(reason).or_insert(0) += 1;
        }
        let mut v: Vec<(Reason, u32)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

pub(crate) fn tier_reports(tasks: &[TaskRequest], placed: &[bool], opts: &PlaceOptions) -> Vec<TierReport> {
    let mut tiers: std::collections::BTreeMap<u8, TierReport> = std::collections::BTreeMap::new();
    let blank = |tier| TierReport {
        tier,
        guaranteed: Scalars::default(),
        requested: Scalars::default(),
        placed: Scalars::default(),
        placed_tasks: 0,
        unplaced_tasks: 0,
    };
    for g in &opts.guarantees {
        let t = tiers.entry(g.tier).or_insert_with(|| blank(g.tier));
        t.guaranteed = t.guaranteed.saturating_add(&g.capacity);
    }
    for (t, p) in tasks.iter().zip(placed) {
        let r = tiers.entry(t.tier).or_insert_with(|| blank(t.tier));
        r.requested = r.requested.saturating_add(&t.demand);
        if *p {
            r.placed = r.placed.saturating_add(&t.demand);
            r.placed_tasks += 1;
        } else {
            r.unplaced_tasks += 1;
        }
    }
    tiers.into_values().collect()
}
