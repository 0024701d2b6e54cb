//! `berth-agent`: the host side of Berth, the role the ECS container agent
//! plays. It registers the host with the server over one authenticated
//! stream, runs the tasks the server placed on it through a [`driver`]
//! (Docker via bollard, or plain processes under cgroup v2), supervises them
//! (essential containers, `dependsOn` ordering, health checks), reports every
//! state change, and serves the ECS introspection and task metadata
//! endpoints.
//!
//! It does not decide placement: host ports and the set of tasks come from
//! the server. It must not depend on `berth-server` or `berth-store`; the
//! wire messages live in `berth-proto`.
//!
//! # The server stream and TLS
//!
//! One WebSocket to `/v1/agent/stream` (why a server-push WebSocket and not
//! gRPC: see `berth_proto`). `--server http://...` uses `ws://`;
//! `--server https://...` uses `wss://` with rustls (ring provider),
//! trusting the host's root certificates plus `--tls-ca PEM` (for a
//! self-signed `berth server --tls-cert`). An untrusted certificate, a
//! certificate for another name, or TLS on one side only ends the agent with
//! an [`AgentError::Tls`] that says which flag to change.
//!
//! # Layout
//!
//! - [`driver`]: the `Driver` trait, its conformance suite, and the
//!   `docker`, `process` and `fake` drivers.
//! - [`reconcile`]: the pure diff from desired to actual tasks.
//! - [`Agent`] (`core`): the task table, re-adoption on start, one
//!   supervisor per task (`supervisor`), [`health`] checks.
//! - [`state`]: the local state dir that survives restarts.
//! - [`stream`]: the WebSocket client of `/v1/agent/stream`; [`tls`]: its
//!   `wss://` trust (system roots plus `--tls-ca`).
//! - [`metadata`]: `/v1/metadata`, `/v1/tasks`, task metadata v4.
//! - [`daemon`]: `berth agent` wired together; [`bench`]: driver floors.

pub mod bench;
mod core;
pub mod daemon;
pub mod driver;
mod error;
pub mod health;
pub mod metadata;
pub mod reconcile;
pub mod state;
pub mod stream;
mod supervisor;
pub mod tls;

pub use core::Agent;
pub use error::{AgentError, Result};

#[cfg(test)]
mod tests;
