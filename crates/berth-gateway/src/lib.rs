//! The server's end of the agent protocol (`berth-proto`): agents connect to
//! `GET /v1/agent/stream` with the join token, register their host as a
//! container instance, receive the full set of tasks placed on it and then
//! every change as it is committed (the store's watch, so no polling), and
//! report task state changes, which are recorded with compare-and-swap —
//! a STOPPED task gives its resources back to the instance in the same
//! transaction, which wakes the launcher.
//!
//! Liveness: a session whose agent sends nothing for the heartbeat timeout
//! ends; the instance is marked disconnected, and if no agent reconnects for
//! it within the timeout its tasks are marked STOPPED ("Host EC2 (instance
//! ...) stopped/terminated") so that services replace them.
//!
//! This crate serves only the agent stream; it must not decide placement
//! (`berth-control`) or serve the ECS API (`berth-server`), and it never
//! talks to a driver.

mod records;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_model::ArnContext;
use berth_store::DynStore;

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error(transparent)]
    Records(#[from] berth_records::RecordsError),
    #[error("cannot decode a stored record: {0}")]
    Decode(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("too many conflicting writers while {0}")]
    Conflict(&'static str),
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The join token agents must present; `None` refuses every agent.
    pub agent_token: Option<String>,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is considered gone (and, as long again
    /// without a reconnect, its tasks are stopped).
    pub disconnect_timeout: Duration,
    pub arns: ArnContext,
    /// The clock and ids records are stamped with.
    pub env: berth_records::Env,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            agent_token: None,
            heartbeat_interval: Duration::from_secs(2),
            disconnect_timeout: Duration::from_secs(10),
            arns: ArnContext::default(),
            env: berth_records::Env::system(),
        }
    }
}

pub(crate) struct Shared {
    pub store: DynStore,
    pub config: GatewayConfig,
    /// Per instance, a counter bumped by every connect, so a lost-agent timer
    /// knows whether its agent came back meanwhile.
    pub generations: Mutex<HashMap<String, u64>>,
}

impl Shared {
    pub(crate) fn bump(&self, instance: &str) -> u64 {
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry(instance.to_string()).or_insert(0);
        *e += 1;
        *e
    }

    pub(crate) fn generation(&self, instance: &str) -> u64 {
        let g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        g.get(instance).copied().unwrap_or(0)
    }
}

/// The agent stream route, to merge into the server's router. Also starts
/// the lost-agent timers for instances whose agents were connected to a
/// previous run of this server.
pub fn router(store: DynStore, config: GatewayConfig) -> Router {
    let shared = Arc::new(Shared {
        store,
        config,
        generations: Mutex::new(HashMap::new()),
    });
    tokio::spawn(session::sweep_on_start(shared.clone()));
    Router::new()
        .route(berth_proto::STREAM_PATH, get(upgrade))
        .with_state(shared)
}

async fn upgrade(State(shared): State<Arc<Shared>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&shared.config.agent_token, presented) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    };
    if !ok {
        tracing::warn!(
            presented = presented.is_some(),
            "agent refused: missing or wrong join token"
        );
        return (StatusCode::UNAUTHORIZED, "agent join token missing or wrong\n").into_response();
    }
    ws.on_upgrade(move |socket| session::run(shared, socket))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
