//! The `berth` binary: one executable for the server, the agent, the dev
//! cluster, the demo, the CLI and every benchmark. It parses arguments and
//! wires crates together; logic belongs in the library crates, not here.

mod cmd;

/// mimalloc: the proxy and the API allocate many small, short-lived buffers
/// per request, which it serves from thread-local pages (measured with
/// `berth lb bench`, see docs/lb.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "A container orchestrator with the Amazon ECS API",
    after_help = cmd::cli::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The state store: benchmark and maintenance.
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
    /// The load balancer: manage load balancers, run the data plane
    /// (`berth lb --server URL` follows a server), or benchmark it against nginx.
    Lb(cmd::lb::LbArgs),
    /// The scheduler: placement benchmark.
    #[command(subcommand)]
    Sched(cmd::sched::SchedCommand),
    /// HTTP load generator (wrk / oha style).
    Bench(cmd::bench::BenchArgs),
    /// The control plane: serve the Amazon ECS API (or `bench` it).
    Server(cmd::server::ServerArgs),
    /// The host agent: run tasks placed on this host (or `bench` its drivers).
    Agent(cmd::agent::AgentArgs),
    /// Everything on one machine: server, controllers and a local agent.
    ///
    /// Example: berth dev   (then: aws ecs --endpoint-url http://127.0.0.1:8080 --profile berth list-clusters)
    Dev(cmd::dev::DevArgs),
    /// The scaling demo: three agents, a service behind the load balancer, load, scale, load again.
    ///
    /// Example: berth demo --quick
    Demo(cmd::demo::DemoArgs),
    #[command(flatten)]
    Cli(cmd::cli::Verb),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Store(c) => cmd::store::run(c).await,
            Command::Lb(a) => cmd::lb::run_args(a).await,
            Command::Sched(c) => cmd::sched::run(c).await,
            Command::Bench(a) => cmd::bench::run(a).await,
            Command::Server(a) => cmd::server::run(a).await,
            Command::Agent(a) => cmd::agent::run(a).await,
            Command::Dev(a) => cmd::dev::run(a).await,
            Command::Demo(a) => cmd::demo::run(a).await,
            Command::Cli(v) => cmd::cli::run(v).await,
        }
    })
}
