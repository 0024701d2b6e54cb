//! The HTTP shell: AWS JSON 1.1 on `POST /`, authentication, body limits,
//! error rendering. Operations themselves live in `ops`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_model::{ArnContext, DEFAULT_ACCOUNT, DEFAULT_REGION};
use berth_store::DynStore;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::api::Api;
use crate::auth::Auth;
use crate::auth::sigv4::SignedRequest;
use crate::error::{ApiError, ServerError};
use crate::ops::{self, Reply};

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// Oversized bodies up to this size are read and dropped before the 400.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// How the server answers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub auth: Auth,
    /// Region for unsigned requests (signed ones use their credential scope).
    pub default_region: String,
    pub account_id: String,
    /// Larger request bodies are refused with a 400.
    pub max_body_bytes: usize,
    /// Shared secret agents will present (the agent protocol is a later step).
    pub agent_token: Option<String>,
    /// The clock and ids records are stamped with.
    pub env: berth_records::Env,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth: Auth::Disabled,
            default_region: DEFAULT_REGION.to_string(),
            account_id: DEFAULT_ACCOUNT.to_string(),
            max_body_bytes: 1024 * 1024,
            agent_token: None,
            env: berth_records::Env::system(),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: DynStore,
    pub(crate) config: ServerConfig,
}

/// The API as an axum router over `store` (for embedding next to other routes).
pub fn router(store: DynStore, config: ServerConfig) -> Router {
    Router::new()
        .route(
            "/v1/clusters/{cluster}/events",
            axum::routing::get(crate::events::stream),
        )
        .route("/v1/elb/{op}", axum::routing::post(crate::elb::handle))
        .fallback(handle)
        .with_state(Arc::new(Shared { store, config }))
}

/// Turns off Nagle's algorithm on an accepted connection: small writes (API
/// answers, server-sent events, agent frames) go out at once instead of
/// waiting up to 40 ms for the peer's delayed ACK.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    store: DynStore,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, no_delay),
        router(store, config),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

fn json_response(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

pub(crate) fn error_response(e: &ApiError, request_id: &str) -> Response {
    let body = serde_json::json!({"__type": e.error_type(), "message": e.to_string()});
    let mut resp = json_response(e.status(), body.to_string().into_bytes(), request_id);
    resp.headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(e.error_type()));
    resp
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let request_id = shared.config.env.new_id();
    match serve(&shared, req).await {
        Ok(body) => json_response(StatusCode::OK, body, &request_id),
        Err(e) => {
            if matches!(e, ApiError::Server(_)) {
                tracing::error!(error = %e, "request failed");
            } else {
                tracing::debug!(error = %e, kind = e.error_type(), "request refused");
            }
            error_response(&e, &request_id)
        }
    }
}

async fn serve(shared: &Shared, req: Request) -> Result<Vec<u8>, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::GET && parts.uri.path() == "/healthz" {
        return Ok(b"{\"status\":\"ok\"}".to_vec());
    }
    if parts.method != Method::POST {
        return Err(ApiError::UnknownOperation(format!(
            "{} is not supported; the ECS API is POST / with X-Amz-Target",
            parts.method
        )));
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::UnknownOperation("missing X-Amz-Target header".into()))?;
    let operation = target
        .strip_prefix(TARGET_PREFIX)
        .ok_or_else(|| ApiError::UnknownOperation(format!("unknown target '{target}'")))?
        .to_string();
    let limit = shared.config.max_body_bytes;
    let too_big = |n: String| ApiError::Client(format!("request body is {n} bytes; at most {limit} are accepted"));
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        // Read (and drop) moderately sized bodies so the client sees the
        // answer instead of a reset connection.
        if len <= DRAIN_LIMIT {
            let _ = axum::body::to_bytes(Body::new(body), DRAIN_LIMIT).await;
        }
        return Err(too_big(len.to_string()));
    }
    let body = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| too_big("more than that".into()))?;
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
    };
    let caller = shared
        .config
        .auth
        .check(&signed, &operation, &shared.config.default_region)?;
    let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Serialization(format!("request body is not valid JSON: {e}")))?
    };
    if !input.is_object() {
        return Err(ApiError::Serialization("request body must be a JSON object".into()));
    }
    let api = Api {
        store: shared.store.clone(),
        ctx: ArnContext {
            region: caller.region,
            account: shared.config.account_id.clone(),
        },
        env: shared.config.env.clone(),
    };
    match ops::dispatch(&api, &operation, &input).await? {
        Reply::Bytes(b) => Ok(b),
        Reply::Json(mut out) => {
            if let Value::Object(m) = &mut out {
                m.retain(|_, v| !v.is_null());
            }
            serde_json::to_vec(&out).map_err(|e| ApiError::Server(format!("encoding the response: {e}")))
        }
    }
}
