//! Golden scenarios for capacity guarantees that hold: a critical task under
//! its group's guarantee preempts flex tasks, one scenario per rule of the
//! victim cost (fewest tasks, lowest tier, furthest over fair share,
//! youngest), never more than needed, never a protected task, a flex
//! service's floor, and the move hint of a task that may not preempt. Plus
//! the large task that must not be stranded behind small ones.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap fixtures

use std::collections::BTreeMap;

use berth_sched::{Guarantee, Instance, PlaceOptions, Plan, Running, Scalars, Snapshot, TaskRequest};

const SLOT: u64 = 1024;

fn slots(n: u64) -> Scalars {
    Scalars::new(n * SLOT, n * SLOT)
}

/// A flex task of `size` slots in `group`, started at `started`.
fn flex(id: &str, group: &str, size: u64, started: u64) -> Running {
    Running {
        id: id.into(),
        demand: slots(size),
        group: group.into(),
        tier: 1,
        started,
        ..Default::default()
    }
}

/// A host of `size` slots running `tasks` (their resources taken out).
fn host(id: &str, size: u64, tasks: Vec<Running>) -> Instance {
    let mut i = Instance::new(id, slots(size));
    for t in &tasks {
        i.remaining = i.remaining.saturating_sub(&t.demand);
        *i.groups.entry(t.group.clone()).or_insert(0) += 1;
    }
    i.running = tasks;
    i
}

fn critical(id: &str, size: u64) -> TaskRequest {
    let mut t = TaskRequest::new(id, slots(size));
    t.group = "service:db".into();
    t.tier = 0;
    t
}

/// `service:db` is guaranteed `slots` slots in tier 0.
fn guaranteed(n: u64) -> PlaceOptions {
    PlaceOptions {
        guarantees: vec![Guarantee {
            group: "service:db".into(),
            tier: 0,
            capacity: slots(n),
        }],
        ..Default::default()
    }
}

fn evicted(plan: &Plan) -> Vec<&str> {
    plan.evictions.iter().map(|e| e.task_id.as_str()).collect()
}

#[test]
fn one_victim_that_frees_enough_beats_two_small_ones() {
    let mut s = Snapshot::new(vec![
        host(
            "i-0",
            4,
            vec![flex("small-1", "batch", 2, 1), flex("small-2", "batch", 2, 2)],
        ),
        host("i-1", 4, vec![flex("big", "batch", 3, 1), flex("tiny", "batch", 1, 2)]),
    ]);
    let plan = s.place(&[critical("db-1", 3)], &guaranteed(4));
    assert_eq!(evicted(&plan), ["big"]);
    assert_eq!(plan.placements[0].instance_id, "i-1");
    assert_eq!(plan.evictions[0].for_task, "db-1");
    assert!(!plan.evictions[0].below_min_healthy);
}

#[test]
fn the_lowest_tier_goes_first() {
    let mut t2 = flex("tier-2", "batch", 2, 1);
    t2.tier = 2;
    let mut s = Snapshot::new(vec![
        host("i-0", 2, vec![flex("tier-1", "batch", 2, 9)]),
        host("i-1", 2, vec![t2]),
    ]);
    let plan = s.place(&[critical("db-1", 2)], &guaranteed(2));
    assert_eq!(evicted(&plan), ["tier-2"]);
}

#[test]
fn the_group_furthest_over_its_share_goes_first() {
    let mut s = Snapshot::new(vec![
        host("i-0", 2, vec![flex("modest-1", "modest", 2, 9)]),
        host("i-1", 2, vec![flex("greedy-1", "greedy", 2, 1)]),
    ]);
    let mut opts = guaranteed(2);
    opts.usage = BTreeMap::from([("modest".to_string(), slots(2)), ("greedy".to_string(), slots(40))]);
    let plan = s.place(&[critical("db-1", 2)], &opts);
    assert_eq!(evicted(&plan), ["greedy-1"]);
}

#[test]
fn the_youngest_goes_first() {
    let mut s = Snapshot::new(vec![host(
        "i-0",
        4,
        vec![
            flex("old", "batch", 1, 100),
            flex("young", "batch", 1, 300),
            flex("middle", "batch", 1, 200),
            flex("older", "batch", 1, 50),
        ],
    )]);
    let plan = s.place(&[critical("db-1", 2)], &guaranteed(4));
    let mut v = evicted(&plan);
    v.sort_unstable();
    assert_eq!(v, ["middle", "young"], "two youngest, no more than needed");
    assert_eq!(s.instance(0).unwrap().running.len(), 3, "two stopped, db-1 added");
}

#[test]
fn never_more_than_needed() {
    // 1 slot free already: a 3-slot task needs two of the four 1-slot tasks.
    let mut s = Snapshot::new(vec![host(
        "i-0",
        5,
        (0..4).map(|i| flex(&format!("b-{i}"), "batch", 1, i)).collect(),
    )]);
    let plan = s.place(&[critical("db-1", 3)], &guaranteed(3));
    assert_eq!(plan.evictions.len(), 2);
    assert_eq!(s.instance(0).unwrap().remaining, Scalars::default());
}

#[test]
fn never_a_protected_task() {
    let mut keep = flex("keep", "batch", 2, 1);
    keep.protected = true;
    let mut s = Snapshot::new(vec![
        host("i-0", 2, vec![keep]),
        host("i-1", 2, vec![flex("b-1", "batch", 1, 1), flex("b-2", "batch", 1, 2)]),
    ]);
    let plan = s.place(&[critical("db-1", 2)], &guaranteed(2));
    let mut v = evicted(&plan);
    v.sort_unstable();
    assert_eq!(v, ["b-1", "b-2"], "two unprotected tasks rather than the protected one");

    // With only protected tasks left, the task waits.
    let plan = s.place(&[critical("db-2", 2)], &guaranteed(4));
    assert!(plan.evictions.is_empty());
    assert_eq!(plan.unplaced[0].summary(), "RESOURCE:CPU on 2 instances");
}

#[test]
fn a_flex_service_keeps_its_floor_unless_the_guarantee_needs_it() {
    let web = |id: &str| flex(id, "service:web", 2, 5);
    let mut opts = guaranteed(4);
    opts.min_running = BTreeMap::from([("service:web".to_string(), 2)]);
    // A web task alone would do (one victim), but web is at its floor of 2:
    // the two batch tasks go instead.
    let mut s = Snapshot::new(vec![
        host("i-0", 4, vec![web("web-1"), web("web-2")]),
        host("i-1", 2, vec![flex("b-1", "batch", 1, 1), flex("b-2", "batch", 1, 2)]),
    ]);
    let plan = s.place(&[critical("db-1", 2)], &opts);
    let mut v = evicted(&plan);
    v.sort_unstable();
    assert_eq!(v, ["b-1", "b-2"]);
    assert!(plan.evictions.iter().all(|e| !e.below_min_healthy));

    // Nothing else left: the guarantee wins, and the eviction says so.
    let plan = s.place(&[critical("db-2", 2)], &opts);
    assert_eq!(plan.evictions.len(), 1);
    assert!(plan.evictions[0].task_id.starts_with("web-"));
    assert!(plan.evictions[0].below_min_healthy);
}

#[test]
fn no_preemption_above_the_guarantee_or_for_flex_tasks_only_a_hint() {
    let mut s = Snapshot::new(vec![host(
        "i-0",
        4,
        vec![flex("b-1", "batch", 2, 1), flex("b-2", "batch", 2, 2)],
    )]);
    // db already uses 4 slots of its 4-slot guarantee.
    let mut opts = guaranteed(4);
    opts.usage = BTreeMap::from([("service:db".to_string(), slots(4))]);
    let mut flex_task = critical("flex-1", 2);
    flex_task.tier = 1;
    flex_task.group = "other".into();
    let plan = s.place(&[critical("db-1", 2), flex_task], &opts);
    assert!(plan.evictions.is_empty());
    assert_eq!(plan.unplaced.len(), 2);
    for u in &plan.unplaced {
        assert_eq!(
            u.summary(),
            "RESOURCE:CPU on 1 instance, would fit on i-0 if 1 flex task moved"
        );
        assert!(u.fits_empty);
    }
}

#[test]
fn a_large_task_is_not_stranded_behind_small_ones() {
    // One 8-slot host and three 4-slot hosts. Binpack opens the largest host
    // first; were the small tasks (listed first) placed first, the 8-slot
    // task would find it part-used and stay pending on an empty cluster.
    let mut hosts = vec![Instance::new("big", slots(8))];
    hosts.extend((0..3).map(|i| Instance::new(format!("small-{i}"), slots(4))));
    let mut s = Snapshot::new(hosts);
    let mut ts: Vec<TaskRequest> = (0..4).map(|i| TaskRequest::new(format!("t-{i}"), slots(1))).collect();
    ts.push(TaskRequest::new("large", slots(8)));
    let plan = s.place(&ts, &PlaceOptions::default());
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let large = plan.placements.iter().find(|p| p.task_id == "large").unwrap();
    assert_eq!(large.instance_id, "big");
    let used: Vec<&str> = plan.placements.iter().map(|p| p.instance_id.as_str()).collect();
    assert_eq!(used.iter().filter(|h| h.starts_with("small")).count(), 4, "{used:?}");
}
