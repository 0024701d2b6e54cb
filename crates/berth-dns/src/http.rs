//! `GET /v1/discovery/{cluster}/{service}`: the DNS data as JSON, for
//! clients that prefer HTTP (and for ports, which `A` records lack).
//! The server puts it behind its authentication-and-error layer (operation
//! name `DiscoverService`): this crate knows neither SigV4 nor the error
//! body, it answers an error's status, `x-amzn-errortype` and message.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::follow::Discovery;

/// The route prefix.
pub const DISCOVERY_PATH: &str = "/v1/discovery/";

struct HttpState {
    discovery: Discovery,
}

fn error(status: StatusCode, kind: &'static str, message: String) -> Response {
    (status, [("x-amzn-errortype", kind)], message).into_response()
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
