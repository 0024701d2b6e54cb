//! The HTTP shell: AWS JSON 1.1 on `POST /`, the routes of the load
//! balancer API and the event stream, and serving them. Authentication,
//! body limits and error rendering are the layer's (`layer`); operations
//! live in `ops`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use berth_model::{ArnContext, DEFAULT_ACCOUNT, DEFAULT_REGION};
use berth_store::DynStore;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::api::Api;
use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ServerError};
use crate::layer::{Operation, error_response, is_health};
use crate::ops::{self, Reply};

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

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

/// The API as an axum router over `store`, behind the authentication and
/// error layer (to serve other routes too, see [`crate::app`]).
pub fn router(store: DynStore, config: ServerConfig) -> Router {
    crate::layer::app(store, config, Vec::new(), Router::new())
}

/// The server's own routes, without the layer.
pub(crate) fn routes(store: DynStore, config: ServerConfig) -> Router {
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

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
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

/// `POST /` (and anything no other route takes): one ECS operation. The
/// layer has named, read and verified it.
async fn handle(
    State(shared): State<Arc<Shared>>,
    caller: Option<Extension<Caller>>,
    operation: Option<Extension<Operation>>,
    req: Request,
) -> Response {
    let request_id = shared.config.env.new_id();
    if is_health(req.method(), req.uri().path()) {
        return json_response(StatusCode::OK, b"{\"status\":\"ok\"}".to_vec(), &request_id);
    }
    let (Some(Extension(caller)), Some(Extension(Operation(operation)))) = (caller, operation) else {
        // Only reachable without the layer: refuse rather than serve unauthenticated.
        let e = ApiError::Server("the API is served without its authentication layer".into());
        return error_response(&e, &request_id);
    };
    match serve(&shared, caller, &operation, req).await {
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

async fn serve(shared: &Shared, caller: Caller, operation: &str, req: Request) -> Result<Vec<u8>, ApiError> {
    if req.uri().path() != "/" {
        return Err(ApiError::UnknownOperation(format!(
            "no route {}; the ECS API is POST / with X-Amz-Target",
            req.uri().path()
        )));
    }
    // The layer read the body within the limit already.
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Client(format!("reading the request body: {e}")))?;
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
    match ops::dispatch(&api, operation, &input).await? {
        Reply::Bytes(b) => Ok(b),
        Reply::Json(mut out) => {
            if let Value::Object(m) = &mut out {
                m.retain(|_, v| !v.is_null());
            }
            serde_json::to_vec(&out).map_err(|e| ApiError::Server(format!("encoding the response: {e}")))
        }
    }
}
