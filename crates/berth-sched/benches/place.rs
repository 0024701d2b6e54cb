//! The per-task hot path: placing a batch into a busy cluster, reported per
//! task (criterion `Throughput::Elements`). Index building is part of each
//! `place` call, so batches are large enough for the per-task cost to show.

use std::hint::black_box;

use berth_sched::{GenSpec, PlaceOptions, Snapshot, Strategy, Workload};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn setup(
    hosts: usize,
    tasks: usize,
    chain: Option<Vec<Strategy>>,
    constraint: Option<&str>,
) -> (Snapshot, Vec<berth_sched::TaskRequest>) {
    let w = Workload::generate(GenSpec {
        hosts,
        tasks: tasks * 2,
        seed: 7,
        ..Default::default()
    });
    let all = w
        .requests(chain.as_deref(), constraint)
        .expect("generated workload is valid");
    let mut snapshot = Snapshot::new(w.instances());
    // Half the tasks run already, so the batch lands on a busy cluster.
    snapshot.place(
        &all[..tasks],
        &PlaceOptions {
            seed: 1,
            ..Default::default()
        },
    );
    (snapshot, all[tasks..].to_vec())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("place");
    g.sample_size(20);
    type Case<'a> = (&'a str, usize, usize, Option<Vec<Strategy>>, Option<&'a str>);
    let cases: [Case<'_>; 3] = [
        ("binpack/10k-hosts", 10_000, 20_000, None, None),
        (
            "spread-memberOf/1k-hosts",
            1_000,
            5_000,
            Some(Strategy::ecs_service_default()),
            Some("attribute:ecs.availability-zone in [us-east-1a, us-east-1b]"),
        ),
        ("random/10k-hosts", 10_000, 20_000, Some(vec![Strategy::Random]), None),
    ];
    for (name, hosts, tasks, chain, constraint) in cases {
        let (snapshot, batch) = setup(hosts, tasks, chain, constraint);
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || snapshot.clone(),
                |mut s| {
                    black_box(s.place(
                        &batch,
                        &PlaceOptions {
                            seed: 3,
                            ..Default::default()
                        },
                    ))
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    // The parser and compiler sit outside the hot path but on every batch.
    c.bench_function("parse/memberOf", |b| {
        b.iter(|| {
            berth_sched::parse_expression(black_box(
                "attribute:ecs.instance-type =~ t2.* and not(task:group == db)",
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
