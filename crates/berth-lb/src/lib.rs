//! `berth-lb`: Berth's HTTP load balancer data plane, and the load generator
//! that measures it.
//!
//! It owns listeners, routing rules (host header, path prefix), target
//! groups, target selection (round robin, least outstanding with two random
//! choices), active health checks, passive outlier ejection, retries within a
//! budget, circuit breaking, deregistration with draining, and Prometheus
//! metrics. It is configured only with a plain [`Config`] pushed through
//! [`Lb::apply`], or a watch channel given to [`Lb::follow`] / [`Lb::run`];
//! it must not talk to agents or the state store directly: the caller
//! translates store records into a `Config`.
//!
//! # Entry points
//! - [`Lb::new`] then [`Lb::apply`] (or [`Lb::follow`]) for the config;
//! - [`Lb::run`]: follow a config channel and bind the listeners that have a
//!   `bind` address, one single-threaded runtime per thread (SO_REUSEPORT);
//! - or serve sockets yourself: [`Lb::serve`] (any runtime) or
//!   [`Lb::serve_threads`];
//! - [`Lb::serve_metrics`] / [`Lb::metrics_text`] (Prometheus), and
//!   [`Lb::status`] (per-target health, ejection, draining, in-flight).
//!
//! # Layout
//! - Pure policy, no I/O and no clock reads (callers pass `now`): `balance`
//!   (selection), `health` (check thresholds), `outlier` (ejection), `budget`
//!   (retry budget and retry decisions).
//! - The shell: `state` (runtime state behind a config), `proxy` (forwarding
//!   one request), `body` (request and response bodies), `h1` (the lean
//!   HTTP/1.1 path to targets for requests with in-memory bodies), `pool`
//!   (hyper's keep-alive connections, for streamed request bodies), `checker` (health probes), `lb` (the [`Lb`]
//!   handle and its listeners), `threads` (thread-per-core listeners),
//!   `metrics` (sharded counters, Prometheus text).
//! - [`loadgen`]: an HTTP/1.1 keep-alive load generator (`berth bench`).
//! - [`harness`]: child processes for benchmarks and tests (test backends,
//!   nginx, a standalone LB), killed on drop.

mod balance;
mod body;
mod budget;
mod checker;
mod config;
mod error;
mod h1;
pub mod harness;
mod health;
mod lb;
pub mod loadgen;
mod metrics;
mod outlier;
mod pool;
mod proxy;
mod state;
mod threads;

pub use balance::{Algorithm, Candidate, ERROR_WEIGHT, error_penalty, next_error_score, pick};
pub use budget::{Attempt, RetryBudget, RetryBudgetConfig, is_idempotent, retryable};
pub use config::{Config, ListenerConfig, ProxySettings, Rule, TargetGroupConfig};
pub use error::LbError;
pub use health::{HealthCheck, HealthState, HealthStatus};
pub use lb::Lb;
pub use outlier::{Outcome, OutlierConfig, OutlierState};
pub use state::TargetStatus;
pub use threads::ServerThreads;
