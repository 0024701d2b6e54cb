//! `GET /v1/clusters/{cluster}/events`: a server-sent-events stream of every
//! state change in a cluster (tasks, services, container instances, the
//! cluster record), for the CLI (`berth events -f`) and dashboards.
//!
//! Each event's `id` is the store revision that made the change; a client
//! resumes with `Last-Event-ID` (or `?from=REV` to start at a revision), and
//! gets every later change exactly once, in order. The server's layer
//! authenticates requests like API calls (operation name `StreamEvents`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::server::Shared;

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<i64>,
}

/// What a key is, for the event name: `task`, `service`, `instance`, `cluster`.
fn kind_of(key: &str, cluster: &str) -> Option<&'static str> {
    let under = |p: &str| {
        key.strip_prefix(p)
            .and_then(|r| r.strip_prefix(cluster))
            .is_some_and(|r| r.starts_with('/'))
    };
    if under("/tasks/") {
        Some("task")
    } else if under("/services/") {
        Some("service")
    } else if under("/instances/") {
        Some("instance")
    } else if key == format!("/clusters/{cluster}") {
        Some("cluster")
    } else {
        None
    }
}

pub(crate) async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(cluster): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map(|r| r + 1);
    let from = resume.or(q.from).unwrap_or(0);
    let watch = match shared.store.watch(b"/", from).await {
        Ok(w) => w,
        Err(e) => return crate::layer::error_response(&ApiError::from(e), &shared.config.env.new_id()),
    };
    let events = watch.flat_map(move |batch| {
        let out: Vec<Result<Event, Infallible>> = match batch {
            Ok(b) => b
                .events
                .iter()
                .filter_map(|e| {
                    let key = std::str::from_utf8(&e.kv.key).ok()?;
                    let kind = kind_of(key, &cluster)?;
                    let op = match e.kind {
                        berth_store::EventKind::Put => "put",
                        berth_store::EventKind::Delete => "delete",
                    };
                    let record: Value = serde_json::from_slice(&e.kv.value).unwrap_or(Value::Null);
                    let data = json!({"type": kind, "op": op, "revision": b.revision, "key": key, "record": record});
                    Some(Ok(Event::default()
                        .id(b.revision.to_string())
                        .event(kind)
                        .data(data.to_string())))
                })
                .collect(),
            Err(e) => vec![Ok(Event::default().event("error").data(e.to_string()))],
        };
        futures::stream::iter(out)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
