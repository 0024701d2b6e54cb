//! Small, readable scenarios whose outcome is drawn as a picture: one column
//! per host, `#` a used slot, `.` a free one.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap fixtures

use berth_model::{InstanceStatus, Protocol, ResourceKind};
use berth_sched::{
    Constraint, EniSlot, Guarantee, Instance, PlaceOptions, Plan, Reason, Scalars, SchedError, Snapshot, Strategy,
    TaskRequest,
};

const SLOT: u64 = 1024;

fn hosts(n: usize, slots: u64) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            Instance::new(format!("i-{i:02}"), Scalars::new(slots * SLOT, slots * SLOT))
                .with_attribute("ecs.availability-zone", ["a", "b", "c"][i % 3])
        })
        .collect()
}

fn tasks(n: usize, slots: u64, strategy: &str) -> Vec<TaskRequest> {
    (0..n)
        .map(|i| {
            let mut t = TaskRequest::new(format!("t-{i:02}"), Scalars::new(slots * SLOT, slots * SLOT));
            t.strategy = strategy.split(';').map(|s| Strategy::parse(s).unwrap()).collect();
            t.group = "web".into();
            t
        })
        .collect()
}

/// Used slots per host, e.g. `4 4 4 0 0 ...`, and the picture.
fn picture(s: &Snapshot) -> (Vec<u64>, String) {
    let used: Vec<u64> = (0..s.len())
        .map(|i| {
            let h = s.instance(i).unwrap();
            (h.total.cpu - h.remaining.cpu) / SLOT
        })
        .collect();
    let pic = used
        .iter()
        .map(|u| "#".repeat(*u as usize) + &".".repeat(4 - *u as usize))
        .collect::<Vec<_>>()
        .join("|");
    (used, pic)
}

fn run(n_hosts: usize, ts: &[TaskRequest], seed: u64) -> (Snapshot, Plan) {
    let mut s = Snapshot::new(hosts(n_hosts, 4));
    let plan = s.place(
        ts,
        &PlaceOptions {
            seed,
            ..Default::default()
        },
    );
    (s, plan)
}

#[test]
fn binpack_fills_three_hosts_and_leaves_nine_empty() {
    let (s, plan) = run(12, &tasks(12, 1, "binpack(cpu)"), 1);
    assert_eq!(plan.placements.len(), 12);
    let (used, pic) = picture(&s);
    assert_eq!(pic, "####|####|####|....|....|....|....|....|....|....|....|....");
    assert_eq!(used.iter().filter(|u| **u == 0).count(), 9);
}

#[test]
fn combined_binpack_pairs_large_and_small_tasks() {
    // Four 3-slot tasks and four 1-slot tasks fit exactly on four hosts.
    let mut ts = tasks(4, 3, "binpack");
    ts.extend(tasks(4, 1, "binpack"));
    let (s, plan) = run(12, &ts, 1);
    assert!(plan.unplaced.is_empty());
    let (used, _) = picture(&s);
    assert_eq!(used.iter().filter(|u| **u == 4).count(), 4);
    assert_eq!(used.iter().filter(|u| **u == 0).count(), 8);
}

#[test]
fn spread_by_instance_uses_every_host_once() {
    let (s, _) = run(12, &tasks(12, 1, "spread(instanceId)"), 1);
    assert_eq!(picture(&s).1, ["#..."; 12].join("|"));
}

#[test]
fn random_scatters_and_is_reproducible() {
    let (a, _) = run(12, &tasks(12, 1, "random"), 42);
    let (b, _) = run(12, &tasks(12, 1, "random"), 42);
    let (c, _) = run(12, &tasks(12, 1, "random"), 43);
    let (used, pic) = picture(&a);
    assert_eq!(pic, picture(&b).1, "same seed, same plan");
    assert_ne!(pic, picture(&c).1, "another seed, another plan");
    let empty = used.iter().filter(|u| **u == 0).count();
    assert!(empty < 9, "random left {empty} hosts empty: {pic}");
    assert_eq!(used.iter().sum::<u64>(), 12);
}

#[test]
fn spread_over_zones_then_binpack() {
    // Zones a, b, c repeat over the hosts; 6 tasks: two per zone, packed.
    let (s, plan) = run(
        12,
        &tasks(6, 1, "spread(attribute:ecs.availability-zone);binpack(cpu)"),
        1,
    );
    let mut per_zone = [0; 3];
    for p in &plan.placements {
        per_zone[p.instance_index % 3] += 1;
    }
    assert_eq!(per_zone, [2, 2, 2]);
    let (used, _) = picture(&s);
    assert_eq!(used.iter().filter(|u| **u > 0).count(), 3, "one host per zone");
}

#[test]
fn every_instance_is_accounted_for_in_reasons() {
    let mut hs = hosts(10, 4);
    for h in &mut hs[0..3] {
        h.status = InstanceStatus::Draining;
    }
    hs[3].agent_connected = false;
    for h in &mut hs[4..6] {
        h.attributes.insert("ecs.instance-type".into(), "m5.large".into());
    }
    for h in &mut hs[6..10] {
        h.attributes.insert("ecs.instance-type".into(), "t2.micro".into());
        h.remaining.memory_mib = 512;
    }
    let mut s = Snapshot::new(hs);
    let mut t = TaskRequest::new("t", Scalars::new(1024, 1024));
    t.constraints = vec![Constraint::MemberOf("attribute:ecs.instance-type =~ t2.*".into())];
    let plan = s.place(&[t], &PlaceOptions::default());
    assert!(plan.placements.is_empty());
    let u = &plan.unplaced[0];
    assert_eq!(
        u.reasons,
        vec![
            (Reason::Resource(ResourceKind::Memory), 4),
            (Reason::Draining, 3),
            (Reason::Attribute, 2),
            (Reason::Agent, 1)
        ]
    );
    assert_eq!(
        u.summary(),
        "RESOURCE:MEMORY on 4 instances, DRAINING on 3 instances, ATTRIBUTE on 2 instances, AGENT on 1 instance"
    );
}

#[test]
fn malformed_expressions_are_reported_not_placed() {
    let mut s = Snapshot::new(hosts(2, 4));
    let mut t = TaskRequest::new("t", Scalars::new(1024, 1024));
    t.constraints = vec![Constraint::MemberOf("attribute:zone in [a, b".into())];
    let plan = s.place(
        &[t, TaskRequest::new("ok", Scalars::new(1024, 1024))],
        &PlaceOptions::default(),
    );
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.placements[0].task_id, "ok");
    assert!(matches!(
        plan.unplaced[0].error,
        Some(SchedError::Parse { position: 23, .. })
    ));
}

#[test]
fn member_of_and_distinct_instance_hold() {
    let mut hs = hosts(6, 4);
    hs[5].attributes.insert("ecs.instance-type".into(), "t2.small".into());
    let mut s = Snapshot::new(hs);
    let mut ts = tasks(5, 1, "binpack(cpu)");
    for t in &mut ts {
        t.constraints = vec![
            Constraint::DistinctInstance,
            Constraint::MemberOf(
                "attribute:ecs.availability-zone in [a, b] and not(attribute:ecs.instance-type == t2.small)".into(),
            ),
        ];
    }
    let plan = s.place(&ts, &PlaceOptions::default());
    // Zones a, b among hosts 0..5 are 0, 1, 3, 4 (host 5 excluded by type... and zone c).
    let mut on: Vec<usize> = plan.placements.iter().map(|p| p.instance_index).collect();
    on.sort();
    assert_eq!(on, vec![0, 1, 3, 4]);
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(
        plan.unplaced[0].reasons,
        vec![(Reason::DistinctInstance, 4), (Reason::Attribute, 2)]
    );
}

#[test]
fn task_group_expressions_follow_placements() {
    // A database placed by an earlier batch; then an app that must sit next
    // to a database, and one that must avoid them.
    let mut s = Snapshot::new(hosts(4, 4));
    let mut db = TaskRequest::new("db", Scalars::new(SLOT, SLOT));
    db.group = "databases".into();
    let mut near = TaskRequest::new("near", Scalars::new(SLOT, SLOT));
    near.group = "app".into();
    near.strategy = vec![Strategy::SpreadInstance];
    near.constraints = vec![Constraint::MemberOf("task:group == databases".into())];
    let mut far = near.clone();
    far.id = "far".into();
    far.group = "other".into();
    far.constraints = vec![Constraint::MemberOf("not(task:group == databases)".into())];
    let first = s.place(&[db], &PlaceOptions::default());
    let db_at = first.placements[0].instance_index;
    let plan = s.place(&[near.clone(), far], &PlaceOptions::default());
    assert_eq!(plan.placements.len(), 2);
    let at = |id: &str| plan.placements.iter().find(|p| p.task_id == id).unwrap().instance_index;
    assert_eq!(at("near"), db_at);
    assert_ne!(at("far"), db_at);
    // With no database anywhere, `near` has nowhere to go.
    let mut empty = Snapshot::new(hosts(4, 4));
    let plan = empty.place(&[near], &PlaceOptions::default());
    assert_eq!(plan.unplaced[0].reasons, vec![(Reason::Attribute, 4)]);
}

#[test]
fn dynamic_ports_come_from_the_range_and_are_released() {
    let mut h = Instance::new("i-0", Scalars::new(8 * SLOT, 8 * SLOT));
    h.port_range = (40000, 40002);
    h.used_ports.insert(Protocol::Tcp, 40001);
    let mut s = Snapshot::new(vec![h]);
    let mut t = TaskRequest::new("a", Scalars::new(SLOT, SLOT));
    t.dynamic_ports = vec![Protocol::Tcp, Protocol::Tcp];
    t.static_ports.insert(Protocol::Tcp, 80);
    let plan = s.place(std::slice::from_ref(&t), &PlaceOptions::default());
    let mut got = plan.placements[0].dynamic_ports.clone();
    got.sort_unstable();
    assert_eq!(got, vec![(Protocol::Tcp, 40000), (Protocol::Tcp, 40002)]);
    // Range exhausted and port 80 taken.
    let mut u = t.clone();
    u.id = "b".into();
    let plan2 = s.place(std::slice::from_ref(&u), &PlaceOptions::default());
    assert_eq!(
        plan2.unplaced[0].reasons,
        vec![(Reason::Resource(ResourceKind::Ports), 1)]
    );
    s.release(&t, &plan.placements[0]).unwrap();
    let inst = s.instance(0).unwrap();
    assert_eq!(inst.used_ports.tcp.iter().copied().collect::<Vec<_>>(), vec![40001]);
    assert_eq!(inst.remaining, Scalars::new(8 * SLOT, 8 * SLOT));
    let plan3 = s.place(&[u], &PlaceOptions::default());
    assert_eq!(plan3.placements.len(), 1);
}

#[test]
fn enis_bind_to_one_security_group_set() {
    let mut h = Instance::new("i-0", Scalars::new(8 * SLOT, 8 * SLOT));
    h.enis = vec![
        EniSlot {
            free_ips: 2,
            capacity: 2,
            ..Default::default()
        };
        2
    ];
    let mut s = Snapshot::new(vec![h]);
    let with = |id: &str, sgs: &[&str]| {
        let mut t = TaskRequest::new(id, Scalars::new(SLOT, SLOT));
        t.security_groups = Some(sgs.iter().map(|s| s.to_string()).collect());
        t
    };
    let ts = [
        with("ab1", &["A", "B"]),
        with("ab2", &["B", "A"]),
        with("ab3", &["A", "B"]),
        with("c", &["C"]),
    ];
    let plan = s.place(&ts, &PlaceOptions::default());
    let eni = |id: &str| plan.placements.iter().find(|p| p.task_id == id).and_then(|p| p.eni);
    assert_eq!((eni("ab1"), eni("ab2"), eni("ab3")), (Some(0), Some(0), Some(1)));
    assert_eq!(plan.unplaced[0].task_id, "c");
    assert_eq!(plan.unplaced[0].reasons, vec![(Reason::Resource(ResourceKind::Eni), 1)]);
    // Releasing the lone {A,B} IP on ENI 1 unbinds it; C can take it.
    let p3 = plan.placements.iter().find(|p| p.task_id == "ab3").unwrap().clone();
    s.release(&ts[2], &p3).unwrap();
    assert!(s.instance(0).unwrap().enis[1].security_groups.is_empty());
    let plan = s.place(&ts[3..], &PlaceOptions::default());
    assert_eq!(plan.placements[0].eni, Some(1));
}

#[test]
fn tier_zero_goes_first_when_capacity_is_short() {
    let mut ts = tasks(4, 1, "binpack");
    for t in &mut ts {
        t.tier = 1;
        t.group = "batch".into();
    }
    let mut critical = tasks(4, 1, "binpack");
    for (i, t) in critical.iter_mut().enumerate() {
        t.id = format!("c-{i}");
    }
    ts.extend(critical);
    let (_, plan) = run(1, &ts, 1);
    assert!(plan.placements.iter().all(|p| p.task_id.starts_with("c-")));
    assert_eq!(plan.tiers[0].placed_tasks, 4);
    assert_eq!(plan.tiers[1].unplaced_tasks, 4);
}

#[test]
fn groups_under_their_guarantee_go_first_then_share_fairly() {
    // One host of 6 slots. `alpha` (listed first, 6 tasks) has no guarantee;
    // `beta` (6 tasks) is guaranteed 2 slots: it gets those first, then the
    // two compete by dominant share: 3 each.
    let mut s = Snapshot::new(vec![Instance::new("i-0", Scalars::new(6 * SLOT, 6 * SLOT))]);
    let mut ts = Vec::new();
    for g in ["alpha", "beta"] {
        for i in 0..6 {
            let mut t = TaskRequest::new(format!("{g}-{i}"), Scalars::new(SLOT, SLOT));
            t.group = g.into();
            ts.push(t);
        }
    }
    let opts = PlaceOptions {
        guarantees: vec![Guarantee {
            group: "beta".into(),
            tier: 0,
            capacity: Scalars::new(2 * SLOT, 2 * SLOT),
        }],
        ..Default::default()
    };
    let plan = s.place(&ts, &opts);
    let order: Vec<&str> = plan.placements.iter().map(|p| &p.task_id[..4]).collect();
    assert_eq!(&order[..2], ["beta", "beta"]);
    assert_eq!(order.iter().filter(|g| **g == "alph").count(), 3);
    assert_eq!(order.iter().filter(|g| **g == "beta").count(), 3);
    assert_eq!(plan.tiers[0].guaranteed, Scalars::new(2 * SLOT, 2 * SLOT));
}

#[test]
fn daemon_tasks_go_before_replicas_whatever_their_tier() {
    // A new 1-slot host: the flex daemon pinned to it gets it, not the
    // critical replica listed first.
    let mut s = Snapshot::new(vec![Instance::new("i-new", Scalars::new(SLOT, SLOT))]);
    let mut replica = TaskRequest::new("replica", Scalars::new(SLOT, SLOT));
    replica.group = "service:web".into();
    let mut daemon = TaskRequest::new("daemon", Scalars::new(SLOT, SLOT));
    daemon.group = "service:logs".into();
    daemon.tier = 1;
    daemon.daemon = true;
    daemon.constraints = vec![Constraint::MemberOf("instanceId == i-new".into())];
    let plan = s.place(&[replica, daemon], &PlaceOptions::default());
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.placements[0].task_id, "daemon");
    assert_eq!(plan.unplaced[0].task_id, "replica");
}
