//! Berth's placement engine: given a consistent snapshot of container
//! instances and a batch of pending tasks, decide where each task runs —
//! ECS placement strategies (`binpack`, `spread`, `random`, chained in order),
//! Fenzo-style combined bin packing, `distinctInstance` and `memberOf`
//! constraints in the ECS cluster query language, static and dynamic host
//! ports, network bandwidth, ENIs as a two-level resource (IPs on interfaces
//! bound to one security-group set), GPUs, and Titus-style capacity tiers with
//! fair share inside a tier — and, for every task it cannot place, why, with a
//! count of instances per ECS reason (`RESOURCE:MEMORY` on 912 instances, ...).
//!
//! This crate is a pure library: it does no I/O, reads no clock and draws
//! randomness only from the seed it is given, so a plan is a deterministic
//! function of (snapshot, batch, seed) that the server, the simulator and the
//! benchmarks all run unchanged. It must not depend on the server, store or
//! agent crates; it depends only on `berth-model` for the shared vocabulary.
//!
//! # Using it from a task launcher
//!
//! Build a [`Snapshot`] from instances read at one store revision, place a
//! batch, then commit each [`Placement`] with a compare-and-swap on that
//! instance's revision. If a commit loses a race, drop the snapshot and plan
//! again from a fresh one; the engine never sees the store.
//!
//! ```
//! use berth_sched::{Constraint, Instance, PlaceOptions, Scalars, Snapshot, Strategy, TaskRequest};
//!
//! let hosts = vec![
//!     Instance::new("i-1", Scalars::new(4096, 8192)).with_attribute("ecs.availability-zone", "us-east-1a"),
//!     Instance::new("i-2", Scalars::new(4096, 8192)).with_attribute("ecs.availability-zone", "us-east-1b"),
//! ];
//! let mut snapshot = Snapshot::new(hosts);
//! let mut task = TaskRequest::new("t-1", Scalars::new(1024, 2048));
//! task.strategy = vec![Strategy::parse("spread(attribute:ecs.availability-zone)").unwrap()];
//! task.constraints = vec![Constraint::MemberOf("attribute:ecs.availability-zone == us-east-1b".into())];
//! let mut too_big = TaskRequest::new("t-2", Scalars::new(8192, 1024));
//! too_big.group = "batch".into();
//!
//! let plan = snapshot.place(&[task, too_big], &PlaceOptions { seed: 7, ..Default::default() });
//! assert_eq!(plan.placements[0].instance_id, "i-2");
//! assert_eq!(plan.unplaced[0].summary(), "RESOURCE:CPU on 2 instances");
//! ```
//!
//! When a task stops, [`Snapshot::release`] gives its resources, ports and IP
//! back; [`Snapshot::from_model`] rebuilds the state from registered
//! instances and their running tasks.
//!
//! # Layout
//!
//! - `types`: inputs and outputs ([`Instance`], [`TaskRequest`], [`Plan`], ...).
//! - `state`: the [`Snapshot`] and per-instance bookkeeping (ports, ENIs).
//! - `expr`, `constraint`: the query language, parsed then compiled to ids.
//! - `index`: the free-capacity index that keeps `binpack` off a full scan.
//! - `spread`: the per-group index that does the same for `spread` chains.
//! - `hash`: a fast hasher for internal maps on the per-task path.
//! - `fairshare`: tier and capacity-guarantee ordering.
//! - `engine`: the placement loop.
//! - `explain`: the reasons for unplaced tasks and the per-tier account.
//! - `preempt`: victim selection for critical tasks under their guarantee,
//!   and move hints for pending tasks.
//! - `model`: conversions from `berth-model` types.
//! - `workload`: benchmark workloads (file format, lower bound, report).
//! - `generate`: the benchmark generator and its workload shapes.

mod constraint;
mod engine;
mod error;
mod explain;
mod expr;
mod fairshare;
mod generate;
mod hash;
mod index;
mod model;
mod preempt;
mod spread;
mod state;
mod types;
mod workload;

pub use error::SchedError;
pub use expr::{Ast, Op, Subject, parse as parse_expression};
pub use generate::{GenSpec, Shape};
pub use model::instance_subject;
pub use state::Snapshot;
pub use types::{
    BinpackField, Constraint, EniSlot, Eviction, Guarantee, Instance, MoveHint, PlaceOptions, Placement, Plan, Reason,
    Running, Scalars, Strategy, TaskRequest, TierReport, Unplaced,
};
pub use workload::{BenchReport, HostSpec, TaskSpec, Workload, lower_bound_hosts};
