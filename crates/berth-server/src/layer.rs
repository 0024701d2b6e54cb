//! The one authentication-and-error layer every HTTP route of the server
//! sits behind: the ECS API, the load balancer API, the event stream, and
//! the extensions other crates serve (service plan, discovery). It names
//! the request's operation, reads the body within the size limit, verifies
//! the SigV4 signature (and the key's allowed operations) and hands the
//! route the [`Caller`]; a refusal, and any error a route answers, gets
//! the same status, `x-amzn-errortype` header and `{__type, message}` body.
//!
//! Routes outside this crate signal an error with its status, an
//! `x-amzn-errortype` header naming the ECS error type and the message as
//! plain text ([`error_parts`]); the layer renders the body, so those
//! crates know neither SigV4 nor the error shape.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};

use crate::auth::Caller;
use crate::auth::sigv4::SignedRequest;
use crate::error::ApiError;
use crate::server::{ServerConfig, TARGET_PREFIX};

/// Oversized bodies up to this size are read and dropped before the 400,
/// so the client sees the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Inner error bodies larger than this are not read back for rendering.
const INNER_ERROR_LIMIT: usize = 64 * 1024;

/// A route served beside the API by another crate, behind the layer.
pub struct Extension {
    /// The path it serves, or the prefix of its paths (ending in `/`).
    pub path: &'static str,
    /// The operation name `berth_allowed_operations` lists it under.
    pub operation: &'static str,
    pub router: Router,
}

/// The operation name a request is authorized as, besides being verified.
#[derive(Debug, Clone)]
pub(crate) struct Operation(pub String);

pub(crate) struct Guard {
    pub config: ServerConfig,
    /// `(path or prefix, operation)` of the extensions.
    pub extensions: Vec<(&'static str, &'static str)>,
}

/// `GET /healthz` answers without credentials (load balancers probe it).
pub(crate) fn is_health(method: &Method, path: &str) -> bool {
    method == Method::GET && path == "/healthz"
}

impl Guard {
    /// What the request calls: an ECS operation from `X-Amz-Target`, a
    /// load balancer operation from its path, an extension's name, or
    /// (for any other route) the path itself.
    fn operation(&self, req: &Request) -> Result<String, ApiError> {
        let path = req.uri().path();
        if path == "/" {
            if req.method() != Method::POST {
                return Err(ApiError::UnknownOperation(format!(
                    "{} is not supported; the ECS API is POST / with X-Amz-Target",
                    req.method()
                )));
            }
            let target = req
                .headers()
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::UnknownOperation("missing X-Amz-Target header".into()))?;
            return target
                .strip_prefix(TARGET_PREFIX)
                .map(str::to_string)
                .ok_or_else(|| ApiError::UnknownOperation(format!("unknown target '{target}'")));
        }
        if let Some(op) = path.strip_prefix(crate::elb::ELB_PATH) {
            return Ok(op.to_string());
        }
        if path.starts_with("/v1/clusters/") && path.ends_with("/events") {
            return Ok("StreamEvents".into());
        }
        let extension = self
            .extensions
            .iter()
            .find(|(p, _)| path == *p || (p.ends_with('/') && path.starts_with(p)));
        Ok(extension.map_or_else(|| path.to_string(), |(_, op)| op.to_string()))
    }

    /// The body, read within the configured limit.
    async fn body(&self, headers: &http::HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        let too_big = |n: String| ApiError::Client(format!("request body is {n} bytes; at most {limit} are accepted"));
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > limit
        {
            if len <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(body, DRAIN_LIMIT).await;
            }
            return Err(too_big(len.to_string()));
        }
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_big("more than that".into()))
    }

    /// Names, reads and verifies one request; the request to hand on.
    async fn admit(&self, req: Request) -> Result<Request, ApiError> {
        let operation = self.operation(&req)?;
        let (mut parts, body) = req.into_parts();
        let body = self.body(&parts.headers, body).await?;
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: &body,
        };
        let caller: Caller = self
            .config
            .auth
            .check(&signed, &operation, &self.config.default_region)?;
        parts.extensions.insert(caller);
        parts.extensions.insert(Operation(operation));
        Ok(Request::from_parts(parts, Body::from(body)))
    }
}

/// The layer's function: refuse, or pass on and render the route's error.
pub(crate) async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let request_id = g.config.env.new_id();
    if is_health(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let mut resp = match g.admit(req).await {
        Ok(req) => render_inner_error(next.run(req).await, &request_id).await,
        Err(e) => {
            tracing::debug!(error = %e, kind = e.error_type(), "request refused");
            error_response(&e, &request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().entry("x-amzn-requestid").or_insert(v);
    }
    resp
}

/// A route's plain-text error (status, `x-amzn-errortype`, message) as the
/// API's JSON error; anything else passes unchanged.
async fn render_inner_error(resp: Response, request_id: &str) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, kind) = match kind {
        Some(kind) if !json && (resp.status().is_client_error() || resp.status().is_server_error()) => {
            (resp.status(), kind)
        }
        _ => return resp,
    };
    let message = match axum::body::to_bytes(resp.into_body(), INNER_ERROR_LIMIT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => "the error message was too long to return".to_string(),
    };
    error_body(status, &kind, &message, request_id)
}

/// An error from a route outside this crate, for the layer to render.
pub fn error_parts(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    let mut r = (status, message.into()).into_response();
    r.headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(kind));
    r
}

fn error_body(status: StatusCode, kind: &str, message: &str, request_id: &str) -> Response {
    let body = serde_json::json!({"__type": kind, "message": message});
    let mut resp = crate::server::json_response(status, body.to_string().into_bytes(), request_id);
    if let Ok(v) = HeaderValue::from_str(kind) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// The JSON error every route answers.
pub(crate) fn error_response(e: &ApiError, request_id: &str) -> Response {
    error_body(e.status(), e.error_type(), &e.to_string(), request_id)
}

/// The server's routes and `extensions` behind the layer, plus routes that
/// authenticate themselves (the agent stream: its join token) beside it.
pub fn app(
    store: berth_store::DynStore,
    config: ServerConfig,
    extensions: Vec<Extension>,
    self_authenticating: Router,
) -> Router {
    let guard = Arc::new(Guard {
        config: config.clone(),
        extensions: extensions.iter().map(|e| (e.path, e.operation)).collect(),
    });
    let mut routes = crate::server::routes(store, config);
    for e in extensions {
        routes = routes.merge(e.router);
    }
    routes
        .layer(axum::middleware::from_fn_with_state(guard, self::guard))
        .merge(self_authenticating)
}
