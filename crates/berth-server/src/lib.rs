//! Berth's control plane: the Amazon ECS JSON API (AWS JSON 1.1 on `POST /`,
//! SigV4-authenticated) served over the [`berth_store::Store`], so aws-cli,
//! boto3 and Terraform drive Berth unchanged. Later the controllers (task
//! launcher, service reconciler, agent liveness) live here too.
//!
//! This crate records desired state and answers questions about it; it must
//! not start containers (that is the agent's job) or decide placement (that
//! is `berth-sched`'s).
//!
//! # Layout
//! - `server`: the HTTP shell — routing; [`run`] serves a listener until
//!   shutdown.
//! - `layer`: the one authentication-and-error layer every route sits
//!   behind, extensions from other crates included ([`app`]).
//! - `auth`: SigV4 verification against a shared-credentials file.
//! - `ops`: one file per operation group (clusters, instances, task
//!   definitions, tasks, services, attributes, tags).
//! - records (keys, codec, compare-and-swap, clock and ids) come from
//!   `berth-records`.
//! - `events`: the server-sent-events stream of a cluster's changes.
//! - [`bench`]: the HTTP load generator behind `berth server bench`.

mod api;
// The key space lives in the records layer; `crate::keys` names it here.
use berth_records::keys;
pub mod auth;
pub mod bench;
pub mod elb;
mod error;
mod events;
mod layer;
mod ops;
mod server;

pub use auth::{AccessKey, Auth, Credentials};
pub use error::{ApiError, ServerError};
pub use layer::{Extension, app, error_parts};
pub use ops::OPERATIONS;
pub use server::{ServerConfig, TARGET_PREFIX, no_delay, router, run};
