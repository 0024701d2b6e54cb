//! `berth sched ...`: the placement benchmark. Workload generation, loading
//! and the report live in `berth-sched`; this file parses, times and prints.

use std::time::Instant;

use anyhow::Context;
use berth_sched::{BenchReport, GenSpec, PlaceOptions, Snapshot, Strategy, Workload};

#[derive(Debug, clap::Subcommand)]
pub enum SchedCommand {
    /// Place a whole workload in one batch and report packing and speed.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Generate a workload: hosts=N,tasks=M,seed=S,shape=default|bimodal|memory|gpu|uniform.
    #[arg(long, conflicts_with = "workload")]
    generate: Option<String>,
    /// Replay a workload file (JSON; the format is in docs/scheduler.md).
    #[arg(long)]
    workload: Option<std::path::PathBuf>,
    /// binpack | spread (zones then instances) | any ECS strategy such as
    /// binpack(memory), spread(attribute:NAME), random. Replaces the tasks' own.
    #[arg(long)]
    strategy: Option<String>,
    /// A memberOf expression applied to every task.
    #[arg(long)]
    constraint: Option<String>,
    /// Seed for the engine (defaults to the generator's seed, else 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write the workload (generated or read) to this file, to replay it.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
}

pub async fn run(cmd: SchedCommand) -> anyhow::Result<()> {
    match cmd {
        SchedCommand::Bench(args) => bench(args),
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let (workload, gen_seed) = match (&args.generate, &args.workload) {
        (Some(spec), _) => {
            let spec: GenSpec = spec.parse()?;
            (Workload::generate(spec), Some(spec.seed))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            (Workload::from_json(&text)?, None)
        }
        (None, None) => anyhow::bail!("give --generate hosts=N,tasks=M,seed=S or --workload FILE"),
    };
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_vec(&workload)?).with_context(|| format!("writing {}", path.display()))?;
    }
    let seed = args.seed.or(gen_seed).unwrap_or(1);
    let chain = match args.strategy.as_deref() {
        None => None,
        Some("spread") => Some(Strategy::ecs_service_default()),
        Some(s) => Some(s.split(';').map(Strategy::parse).collect::<Result<Vec<_>, _>>()?),
    };
    let label = match &chain {
        // Tasks keep their own chains; those without one get binpack.
        None => "per-task".to_string(),
        Some(c) => c.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
    };
    if let Some(expr) = &args.constraint {
        berth_sched::parse_expression(expr).with_context(|| format!("--constraint '{expr}'"))?;
    }
    let tasks = workload.requests(chain.as_deref(), args.constraint.as_deref())?;
    let mut snapshot = Snapshot::new(workload.instances());
    let opts = PlaceOptions {
        seed,
        guarantees: workload.guarantees.clone(),
        ..Default::default()
    };
    let start = Instant::now();
    let plan = snapshot.place(&tasks, &opts);
    let seconds = start.elapsed().as_secs_f64();
    let report = BenchReport::new(&workload, &snapshot, &plan, seconds, &label, seed);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} hosts, {} tasks, strategy {}: placed {} ({} unplaced, {} of them would fit an empty host) \
             in {:.3}s ({:.0}/s); {} hosts used (lower bound {}); cpu {:.1}%, memory {:.1}% of used hosts",
            report.workload,
            report.hosts,
            report.tasks,
            report.strategy,
            report.placed,
            report.unplaced,
            report.unplaced_fitting,
            report.seconds,
            report.placements_per_s,
            report.hosts_used,
            report.lower_bound_hosts,
            report.cpu_util * 100.0,
            report.mem_util * 100.0
        );
        for t in &plan.tiers {
            println!(
                "  tier {}: {} placed, {} unplaced, guaranteed cpu {} memory {} MiB",
                t.tier, t.placed_tasks, t.unplaced_tasks, t.guaranteed.cpu, t.guaranteed.memory_mib
            );
        }
        for u in plan.unplaced.iter().take(3) {
            println!("  {} pending: {}", u.task_id, u.summary());
        }
    }
    Ok(())
}
