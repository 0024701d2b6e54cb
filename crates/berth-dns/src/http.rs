//! `GET /v1/discovery/{cluster}/{service}`: the DNS data as JSON, for
//! clients that prefer HTTP (and for ports, which `A` records lack).
//! The server puts it behind its authentication (operation name
//! `DiscoverService`); this crate does not know about SigV4.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::follow::Discovery;

/// The route prefix.
pub const DISCOVERY_PATH: &str = "/v1/discovery";

struct HttpState {
    discovery: Discovery,
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"__type": kind, "message": message}).to_string();
    let mut r = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// The route, to merge beside the API.
pub fn router(discovery: Discovery) -> Router {
    Router::new()
        .route("/v1/discovery/{cluster}/{service}", axum::routing::get(handle))
        .with_state(Arc::new(HttpState { discovery }))
}

async fn handle(State(st): State<Arc<HttpState>>, Path((cluster, service)): Path<(String, String)>) -> Response {
    let table = st.discovery.table();
    match table.get(&cluster, &service) {
        Some(s) => {
            let body = json!({
                "cluster": s.cluster,
                "service": s.service,
                "revision": table.revision,
                "tasks": s.tasks,
            });
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "ServiceNotFoundException",
            format!("service {service} not found in cluster {cluster}"),
        ),
    }
}
