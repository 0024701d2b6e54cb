//! Invariants over random clusters and batches: nothing is ever
//! over-committed (resources, ports, ENI IPs), constraints hold, spread is
//! balanced, plans are deterministic per seed, releasing gives back
//! exactly what placing took, and preemption happens only for a critical
//! task within its group's guarantee, never to a protected task.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap fixtures

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{InstanceStatus, Protocol};
use berth_sched::{
    Constraint, EniSlot, Guarantee, Instance, PlaceOptions, Plan, Running, Scalars, Snapshot, TaskRequest,
};
use proptest::prelude::*;

const ZONES: [&str; 3] = ["a", "b", "c"];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

fn instance() -> impl Strategy<Value = Instance> {
    (
        (0u64..8, 0u64..8, 0u64..1000),
        (0usize..3, 0u8..10, any::<bool>()),
        (0u16..4, proptest::option::of(Just(80u16)), 0usize..3, 1u32..3),
        proptest::collection::btree_map(0usize..3, 1u32..3, 0..2),
    )
        .prop_map(
            |((cpu, mem, net), (zone, status, agent), (ports, used80, enis, ips), groups)| {
                let mut i = Instance::new("", Scalars::new(cpu * 1024, mem * 1024));
                i.total.network_mbps = 1000;
                i.remaining.network_mbps = net;
                i.attributes.insert("zone".into(), ZONES[zone].into());
                i.status = if status == 0 {
                    InstanceStatus::Draining
                } else {
                    InstanceStatus::Active
                };
                i.agent_connected = agent || status > 1;
                i.port_range = (40000, 40000 + ports);
                if used80.is_some() {
                    i.used_ports.insert(Protocol::Tcp, 80);
                }
                if ports > 1 {
                    i.used_ports.insert(Protocol::Tcp, 40001);
                }
                i.enis = (0..enis)
                    .map(|e| {
                        if e == 0 && ips > 1 {
                            // Already bound, one IP in use.
                            EniSlot {
                                security_groups: BTreeSet::from(["A".to_string()]),
                                free_ips: ips - 1,
                                capacity: ips,
                            }
                        } else {
                            EniSlot {
                                security_groups: BTreeSet::new(),
                                free_ips: ips,
                                capacity: ips,
                            }
                        }
                    })
                    .collect();
                i.groups = groups.into_iter().map(|(g, n)| (GROUPS[g].to_string(), n)).collect();
                i
            },
        )
}

fn chain(k: usize) -> Vec<berth_sched::Strategy> {
    let s = [
        "binpack",
        "binpack(cpu)",
        "binpack(memory)",
        "random",
        "spread(instanceId)",
        "spread(attribute:zone);binpack(memory)",
        "spread(attribute:zone);spread(instanceId)",
    ][k];
    s.split(';').map(|x| berth_sched::Strategy::parse(x).unwrap()).collect()
}

fn task() -> impl Strategy<Value = TaskRequest> {
    (
        (0u64..3000, 0u64..3000, 0u64..400),
        (0u8..8, 0usize..3, 0usize..4),
        (0usize..3, 0u8..2, 0usize..4, 0usize..7),
    )
        .prop_map(|((cpu, mem, net), (ports, dynamic, sg), (group, tier, cons, strat))| {
            let mut t = TaskRequest::new("", Scalars::new(cpu, mem));
            t.demand.network_mbps = net;
            for (bit, port) in [(1, 80u16), (2, 443), (4, 40001)] {
                if ports & bit != 0 {
                    t.static_ports.insert(Protocol::Tcp, port);
                }
            }
            t.dynamic_ports = vec![Protocol::Tcp; dynamic];
            t.security_groups = match sg {
                0 => None,
                1 => Some(BTreeSet::from(["A".to_string()])),
                2 => Some(BTreeSet::from(["A".to_string(), "B".to_string()])),
                _ => Some(BTreeSet::from(["C".to_string()])),
            };
            t.group = GROUPS[group].into();
            t.tier = tier;
            t.constraints = match cons {
                0 => vec![],
                1 => vec![Constraint::DistinctInstance],
                2 => vec![Constraint::MemberOf("attribute:zone in [a, b]".into())],
                _ => vec![Constraint::MemberOf("not(task:group == g1)".into())],
            };
            t.strategy = chain(strat);
            t
        })
}

fn cluster() -> impl Strategy<Value = (Vec<Instance>, Vec<TaskRequest>, u64)> {
    (
        proptest::collection::vec(instance(), 0..10),
        proptest::collection::vec(task(), 0..40),
        any::<u64>(),
    )
        .prop_map(|(mut hs, mut ts, seed)| {
            for (i, h) in hs.iter_mut().enumerate() {
                h.id = format!("i-{i}");
            }
            for (i, t) in ts.iter_mut().enumerate() {
                t.id = format!("t-{i}");
            }
            (hs, ts, seed)
        })
}

/// Checks a plan against the instances it started from.
fn check(hs: &[Instance], ts: &[TaskRequest], plan: &Plan) -> Result<(), TestCaseError> {
    let mut seen = vec![0; ts.len()];
    for p in &plan.placements {
        seen[p.task_index] += 1;
    }
    for u in &plan.unplaced {
        seen[u.task_index] += 1;
        let counted: u32 = u.reasons.iter().map(|(_, n)| n).sum();
        prop_assert!(counted as usize <= hs.len());
    }
    prop_assert!(
        seen.iter().all(|n| *n == 1),
        "every task placed or unplaced once: {seen:?}"
    );

    let mut used: Vec<Scalars> = vec![Scalars::default(); hs.len()];
    let mut ports: Vec<BTreeSet<(Protocol, u16)>> = hs
        .iter()
        .map(|h| h.used_ports.tcp.iter().map(|p| (Protocol::Tcp, *p)).collect())
        .collect();
    let mut eni_use: BTreeMap<(usize, usize), (u32, BTreeSet<String>)> = BTreeMap::new();
    let mut groups: Vec<BTreeMap<String, u32>> = hs.iter().map(|h| h.groups.clone()).collect();
    for p in &plan.placements {
        let (h, t) = (&hs[p.instance_index], &ts[p.task_index]);
        let i = p.instance_index;
        prop_assert_eq!(&h.id, &p.instance_id);
        prop_assert!(h.status == InstanceStatus::Active && h.agent_connected);
        used[i] = used[i].saturating_add(&t.demand);
        prop_assert!(h.remaining.covers(&used[i]).is_ok(), "over-commit on {}", h.id);
        for port in &t.static_ports.tcp {
            prop_assert!(
                ports[i].insert((Protocol::Tcp, *port)),
                "static port {} twice on {}",
                port,
                h.id
            );
        }
        prop_assert_eq!(p.dynamic_ports.len(), t.dynamic_ports.len());
        for (proto, port) in &p.dynamic_ports {
            prop_assert!(*port >= h.port_range.0 && *port <= h.port_range.1);
            prop_assert!(
                ports[i].insert((*proto, *port)),
                "dynamic port {} twice on {}",
                port,
                h.id
            );
        }
        match (&t.security_groups, p.eni) {
            (None, None) => {}
            (Some(sg), Some(e)) => {
                let slot = &h.enis[e];
                let entry = eni_use.entry((i, e)).or_insert((0, slot.security_groups.clone()));
                entry.0 += 1;
                prop_assert!(entry.0 <= slot.free_ips, "ENI {} of {} over its IPs", e, h.id);
                if entry.1.is_empty() {
                    entry.1 = sg.clone();
                }
                prop_assert_eq!(&entry.1, sg, "ENI bound to another security-group set");
            }
            (sg, e) => prop_assert!(false, "ENI {:?} for security groups {:?}", e, sg),
        }
        for c in &t.constraints {
            match c {
                Constraint::DistinctInstance => {
                    prop_assert_eq!(groups[i].get(&t.group).copied().unwrap_or(0), 0)
                }
                Constraint::MemberOf(e) if e.contains("zone") => {
                    prop_assert!(["a", "b"].contains(&h.attributes["zone"].as_str()))
                }
                Constraint::MemberOf(_) => prop_assert_eq!(groups[i].get("g1").copied().unwrap_or(0), 0),
            }
        }
        *groups[i].entry(t.group.clone()).or_insert(0) += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_over_commits_and_constraints_hold((hs, ts, seed) in cluster()) {
        let mut s = Snapshot::new(hs.clone());
        let plan = s.place(&ts, &PlaceOptions { seed, ..Default::default() });
        check(&hs, &ts, &plan)?;
    }

    #[test]
    fn unplaced_tasks_really_fit_nowhere((hs, ts, seed) in cluster()) {
        // Instances only fill up during a batch (and the generator's
        // expressions only shrink eligibility), so a task left pending must
        // fail on every instance at the end: its reasons account for all.
        let mut s = Snapshot::new(hs.clone());
        let plan = s.place(&ts, &PlaceOptions { seed, ..Default::default() });
        for u in &plan.unplaced {
            let counted: u32 = u.reasons.iter().map(|(_, n)| n).sum();
            prop_assert_eq!(counted as usize, hs.len(), "{} has an instance that fits: {:?}", u.task_id, u.reasons);
        }
    }

    #[test]
    fn same_seed_same_plan((hs, ts, seed) in cluster()) {
        let opts = PlaceOptions { seed, ..Default::default() };
        let a = Snapshot::new(hs.clone()).place(&ts, &opts);
        let b = Snapshot::new(hs).place(&ts, &opts);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn release_gives_back_exactly_what_place_took((hs, ts, seed) in cluster()) {
        let mut s = Snapshot::new(hs.clone());
        let plan = s.place(&ts, &PlaceOptions { seed, ..Default::default() });
        for p in plan.placements.iter().rev() {
            s.release(&ts[p.task_index], p).unwrap();
        }
        for (i, h) in hs.iter().enumerate() {
            let now = s.instance(i).unwrap();
            prop_assert_eq!(now.remaining, h.remaining);
            prop_assert_eq!(&now.used_ports, &h.used_ports);
            prop_assert_eq!(&now.enis, &h.enis);
            prop_assert_eq!(&now.groups, &h.groups);
        }
    }

    #[test]
    fn two_batches_never_collide((hs, ts, seed) in cluster()) {
        // Placing in two batches must respect what the first one took.
        let mut s = Snapshot::new(hs.clone());
        let half = ts.len() / 2;
        let a = s.place(&ts[..half], &PlaceOptions { seed, ..Default::default() });
        let b = s.place(&ts[half..], &PlaceOptions { seed, ..Default::default() });
        let mut joined = a.clone();
        joined.placements.extend(b.placements.iter().cloned().map(|mut p| { p.task_index += half; p }));
        joined.unplaced.extend(b.unplaced.iter().cloned().map(|mut u| { u.task_index += half; u }));
        check(&hs, &ts, &joined)?;
    }

    #[test]
    fn spread_is_balanced_within_one(zones in 1usize..4, hosts in 1usize..12, tasks in 0usize..40, seed in any::<u64>(), by_instance in any::<bool>()) {
        let hs: Vec<Instance> = (0..hosts.max(zones))
            .map(|i| Instance::new(format!("i-{i}"), Scalars::new(64 * 1024, 64 * 1024))
                .with_attribute("zone", ZONES[i % zones]))
            .collect();
        let strategy = if by_instance {
            vec![berth_sched::Strategy::SpreadInstance]
        } else {
            vec![berth_sched::Strategy::SpreadAttribute("zone".into())]
        };
        let ts: Vec<TaskRequest> = (0..tasks)
            .map(|i| {
                let mut t = TaskRequest::new(format!("t-{i}"), Scalars::new(1024, 1024));
                t.group = "svc".into();
                t.strategy = strategy.clone();
                t
            })
            .collect();
        let mut s = Snapshot::new(hs.clone());
        let plan = s.place(&ts, &PlaceOptions { seed, ..Default::default() });
        prop_assert_eq!(plan.placements.len(), tasks);
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for h in &hs {
            let key = if by_instance { h.id.clone() } else { h.attributes["zone"].clone() };
            counts.entry(key).or_insert(0);
        }
        for p in &plan.placements {
            let h = &hs[p.instance_index];
            let key = if by_instance { h.id.clone() } else { h.attributes["zone"].clone() };
            *counts.get_mut(&key).unwrap() += 1;
        }
        let max = counts.values().max().copied().unwrap_or(0);
        let min = counts.values().min().copied().unwrap_or(0);
        prop_assert!(max - min <= 1, "{counts:?}");
    }
}

/// A full-ish cluster: hosts of 4 slots running tasks of tiers 0–2, some
/// protected; a batch of `crit` (guaranteed) and other tasks of both tiers.
fn busy_cluster() -> impl Strategy<Value = (Vec<Instance>, Vec<TaskRequest>, PlaceOptions)> {
    let running = (1u64..3, 0u8..3, any::<bool>(), 0usize..3, 0u64..100);
    let host = proptest::collection::vec(running, 0..4);
    let task = (1u64..4, any::<bool>(), 0u8..2);
    (
        proptest::collection::vec(host, 1..6),
        proptest::collection::vec(task, 0..12),
        (
            0u64..12,
            0u64..6,
            proptest::collection::btree_map(0usize..3, 0u32..4, 0..3),
        ),
    )
        .prop_map(|(hosts, tasks, (guarantee, used, floors))| {
            let slot = |n: u64| Scalars::new(n * 1024, n * 1024);
            let hs = hosts
                .into_iter()
                .enumerate()
                .map(|(h, running)| {
                    let mut i = Instance::new(format!("i-{h}"), slot(4));
                    for (k, (size, tier, protected, group, started)) in running.into_iter().enumerate() {
                        if i.remaining.covers(&slot(size)).is_err() {
                            continue;
                        }
                        i.remaining = i.remaining.saturating_sub(&slot(size));
                        let group = GROUPS[group].to_string();
                        *i.groups.entry(group.clone()).or_insert(0) += 1;
                        i.running.push(Running {
                            id: format!("r-{h}-{k}"),
                            demand: slot(size),
                            group,
                            tier,
                            protected,
                            started,
                            ..Default::default()
                        });
                    }
                    i
                })
                .collect();
            let ts = tasks
                .into_iter()
                .enumerate()
                .map(|(k, (size, crit, tier))| {
                    let mut t = TaskRequest::new(format!("t-{k}"), slot(size));
                    t.group = if crit { "crit".into() } else { GROUPS[k % 3].into() };
                    t.tier = tier;
                    t
                })
                .collect();
            let opts = PlaceOptions {
                guarantees: vec![Guarantee {
                    group: "crit".into(),
                    tier: 0,
                    capacity: slot(guarantee),
                }],
                usage: BTreeMap::from([("crit".to_string(), slot(used))]),
                min_running: floors.into_iter().map(|(g, n)| (GROUPS[g].to_string(), n)).collect(),
                ..Default::default()
            };
            (hs, ts, opts)
        })
}

#[test]
fn strategy_parse_round_trips() {
    for s in [
        "binpack",
        "binpack(cpu)",
        "binpack(memory)",
        "random",
        "spread(instanceId)",
        "spread(attribute:zone)",
    ] {
        assert_eq!(berth_sched::Strategy::parse(s).unwrap().to_string(), s);
    }
    assert!(berth_sched::Strategy::parse("binpack(disk)").is_err());
    assert!(berth_sched::Strategy::parse("spread(attribute:)").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn preemption_only_for_critical_tasks_within_their_guarantee((hs, ts, opts) in busy_cluster()) {
        let mut s = Snapshot::new(hs.clone());
        let plan = s.place(&ts, &opts);
        let running: BTreeMap<&str, (usize, &Running)> = hs
            .iter()
            .enumerate()
            .flat_map(|(h, i)| i.running.iter().map(move |r| (r.id.as_str(), (h, r))))
            .collect();
        let guarantee = opts.guarantees[0].capacity;
        let mut usage = opts.usage["crit"];
        let mut freed: Vec<Scalars> = vec![Scalars::default(); hs.len()];
        let mut seen = BTreeSet::new();
        for p in &plan.placements {
            let t = &ts[p.task_index];
            for e in plan.evictions.iter().filter(|e| e.for_task == t.id) {
                prop_assert_eq!(t.tier, 0, "a flex task preempted");
                prop_assert_eq!(&t.group, "crit", "a task without a guarantee preempted");
                let after = usage.saturating_add(&t.demand);
                prop_assert!(guarantee.covers(&after).is_ok(), "preempted above the guarantee: {:?} > {:?}", after, guarantee);
                let (h, victim) = running[e.task_id.as_str()];
                prop_assert!(seen.insert(e.task_id.clone()), "{} evicted twice", e.task_id);
                prop_assert_eq!(h, p.instance_index, "the victim is on the host the task goes to");
                prop_assert!(!victim.protected, "a protected task preempted");
                prop_assert!(victim.tier > t.tier, "a task of the same or a higher tier preempted");
                freed[h] = freed[h].saturating_add(&victim.demand);
            }
            if t.group == "crit" {
                usage = usage.saturating_add(&t.demand);
            }
        }
        prop_assert_eq!(seen.len(), plan.evictions.len(), "every eviction made room for a placed task");
        // Nothing over-committed once the victims are gone.
        let mut used: Vec<Scalars> = vec![Scalars::default(); hs.len()];
        for p in &plan.placements {
            used[p.instance_index] = used[p.instance_index].saturating_add(&ts[p.task_index].demand);
        }
        for (h, i) in hs.iter().enumerate() {
            prop_assert!(i.remaining.saturating_add(&freed[h]).covers(&used[h]).is_ok(), "over-commit on {}", i.id);
        }
    }
}
