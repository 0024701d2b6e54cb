//! Berth's controllers: loops that watch the store and drive it toward what
//! users asked for: the task launcher, which places queued tasks with the
//! pure scheduler and commits placements with optimistic concurrency, and
//! the service reconciler, which keeps each service's desired count healthy
//! through failures, draining and rolling deployments.
//!
//! Controllers talk only to the store (through `berth-records`: its key
//! space, codec, compare-and-swap helper, clock and ids, and the watch-fed
//! cache and loop they all run on) and to `berth-sched`; they must not
//! serve the API, start containers or talk to agents, and must not depend
//! on `berth-server`. Several servers may each run them: every commit
//! compares what it read, so racing controllers never over-commit, they
//! only retry.
//!
//! # Layout
//! - `launcher`: planning rounds and their commits.
//! - `reconcile`: the pure service planner; `services`: its shell.
//! - `plan`: the `POST /v1/services/plan` dry run (`berth service plan`).
//! - `targets`: registers service tasks in load balancer target groups and
//!   drains them before they stop.
//! - `lbfollow`: the load balancer data plane following the `/lb/` records.
//! - `compactor`: bounds the journal's history to a retention window.
//! - `leader`: lease-based leader election, so only one server runs the
//!   reconciler, the target controller and the compactor at a time.

pub mod compactor;
pub mod daemon;
mod launcher;
pub mod lbfollow;
pub mod leader;
mod plan;
pub mod preemption;
pub mod reconcile;
mod services;
pub mod targets;

pub use berth_records::{Cache, ClusterView, Touched};
pub use compactor::{Compactor, CompactorConfig};
pub use launcher::{Launcher, LauncherConfig, RoundReport, pending_count};
pub use lbfollow::LbFollower;
pub use leader::{Elector, Leadership, run_as_leader};
pub use plan::{PLAN_PATH, plan_router};
pub use services::{DAEMON_INSTANCE, DAEMON_MEMBER, Reconciler};
pub use targets::TargetController;

/// Errors from the controllers.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error(transparent)]
    Records(#[from] berth_records::RecordsError),
    #[error("cannot decode a stored record: {0}")]
    Decode(String),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// A request to an extension route (the service plan) that names
    /// something missing or malformed; `kind` is its ECS error type.
    #[error("{message}")]
    Request { kind: &'static str, message: String },
}

impl ControlError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ControlError::Request {
            kind: "InvalidParameterException",
            message: message.into(),
        }
    }

    /// The ECS error type of an answer to a request.
    pub fn error_type(&self) -> &'static str {
        match self {
            ControlError::Request { kind, .. } => kind,
            _ => "ServerException",
        }
    }
}
