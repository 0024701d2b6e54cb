//! The host endpoints, in the ECS container agent's JSON shapes:
//! introspection (`/v1/metadata`, `/v1/tasks?taskarn=|dockerid=`) and task
//! metadata v4 (`/v4/{task id}/{container}` with `/task`, `/stats`,
//! `/task/stats`), whose base URL every container gets as
//! `ECS_CONTAINER_METADATA_URI_V4`. A Berth extension,
//! `/v1/tasks/{task id}/containers/{name}/logs?tail=N`, returns a container's
//! captured `stdout` and `stderr` for the CLI.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_model::{ContainerDefinition, TaskStatus};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Agent;
use crate::driver::Stats;
use crate::state::TaskRecord;

/// The router, for tests and for embedding.
pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/v1/metadata", get(metadata))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tasks/{task}/containers/{container}/logs", get(logs))
        .route("/v4/{task}/{container}", get(v4_container))
        .route("/v4/{task}/{container}/task", get(v4_task))
        .route("/v4/{task}/{container}/stats", get(v4_stats))
        .route("/v4/{task}/{container}/task/stats", get(v4_task_stats))
        .with_state(agent)
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, agent: Agent, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("{what} not found") })),
    )
        .into_response()
}

fn desired_status(r: &TaskRecord) -> &'static str {
    if r.desired.desired_status == TaskStatus::Stopped || r.state.stopping_at.is_some() {
        "STOPPED"
    } else {
        "RUNNING"
    }
}

fn container_runtime<'a>(r: &'a TaskRecord, name: &str) -> Option<&'a String> {
    r.runtime_ids.get(name)
}

fn ports(r: &TaskRecord, name: &str) -> Vec<Value> {
    r.desired
        .host_ports
        .iter()
        .filter(|p| p.container_name == name)
        .map(|p| {
            json!({
                "ContainerPort": p.container_port,
                "Protocol": match p.protocol { berth_model::Protocol::Tcp => "tcp", berth_model::Protocol::Udp => "udp" },
                "HostPort": p.host_port,
                "HostIp": "0.0.0.0",
            })
        })
        .collect()
}

fn introspection_task(r: &TaskRecord) -> Value {
    let containers: Vec<Value> = r
        .desired
        .task_definition
        .container_definitions
        .iter()
        .map(|c| {
            let id = container_runtime(r, &c.name).cloned().unwrap_or_default();
            json!({ "DockerId": id, "DockerName": id, "Name": c.name, "Ports": ports(r, &c.name) })
        })
        .collect();
    json!({
        "Arn": r.desired.task_arn,
        "DesiredStatus": desired_status(r),
        "KnownStatus": r.state.last_status.as_str(),
        "Family": r.desired.task_definition.family,
        "Version": r.desired.task_definition.revision.to_string(),
        "Containers": containers,
    })
}

async fn metadata(State(agent): State<Agent>) -> Json<Value> {
    let id = agent.identity();
    Json(json!({
        "Cluster": agent.cluster(),
        "ContainerInstanceArn": id.container_instance_arn,
        "Version": format!("Berth Agent v{} ({} driver)", env!("CARGO_PKG_VERSION"), agent.driver().name()),
    }))
}

async fn tasks(State(agent): State<Agent>, Query(q): Query<HashMap<String, String>>) -> Response {
    let all = agent.tasks();
    if let Some(arn) = q.get("taskarn") {
        return match all.get(arn) {
            Some(r) => Json(introspection_task(r)).into_response(),
            None => not_found("task"),
        };
    }
    if let Some(docker_id) = q.get("dockerid") {
        let hit = all.values().find(|r| {
            r.runtime_ids
                .values()
                .any(|id| id == docker_id || id.starts_with(docker_id.as_str()))
        });
        return match hit {
            Some(r) => Json(introspection_task(r)).into_response(),
            None => not_found("container"),
        };
    }
    let list: Vec<Value> = all.values().map(introspection_task).collect();
    Json(json!({ "Tasks": list })).into_response()
}

fn find(agent: &Agent, task_id: &str) -> Option<TaskRecord> {
    agent.tasks().into_values().find(|r| r.desired.task_id() == task_id)
}

fn v4_container_json(r: &TaskRecord, c: &ContainerDefinition) -> Value {
    let st = r.state.containers.iter().find(|s| s.name == c.name);
    let id = container_runtime(r, &c.name).cloned().unwrap_or_default();
    let mut v = json!({
        "DockerId": id,
        "Name": c.name,
        "DockerName": id,
        "Image": c.image,
        "ImageID": "",
        "Labels": {
            "com.amazonaws.ecs.cluster": r.desired.cluster,
            "com.amazonaws.ecs.container-name": c.name,
            "com.amazonaws.ecs.task-arn": r.desired.task_arn,
            "com.amazonaws.ecs.task-definition-family": r.desired.task_definition.family,
            "com.amazonaws.ecs.task-definition-version": r.desired.task_definition.revision.to_string(),
        },
        "DesiredStatus": desired_status(r),
        "KnownStatus": st.map_or("PENDING", |s| s.last_status.as_str()),
        "Limits": { "CPU": c.cpu, "Memory": c.memory.or(c.memory_reservation).unwrap_or(0) },
        "Type": "NORMAL",
        "Networks": [{ "NetworkMode": "bridge", "IPv4Addresses": ["127.0.0.1"] }],
        "Ports": ports(r, &c.name),
    });
    if let Some(code) = st.and_then(|s| s.exit_code) {
        v["ExitCode"] = json!(code);
    }
    if c.health_check.is_some() {
        let h = st.map(|s| s.health_status).unwrap_or_default();
        v["Health"] = json!({ "status": h });
    }
    v
}

async fn v4_container(State(agent): State<Agent>, Path((task, container)): Path<(String, String)>) -> Response {
    let Some(r) = find(&agent, &task) else {
        return not_found("task");
    };
    match r
        .desired
        .task_definition
        .container_definitions
        .iter()
        .find(|c| c.name == container)
    {
        Some(c) => Json(v4_container_json(&r, c)).into_response(),
        None => not_found("container"),
    }
}

async fn v4_task(State(agent): State<Agent>, Path((task, _container)): Path<(String, String)>) -> Response {
    let Some(r) = find(&agent, &task) else {
        return not_found("task");
    };
    let td = &r.desired.task_definition;
    let containers: Vec<Value> = td
        .container_definitions
        .iter()
        .map(|c| v4_container_json(&r, c))
        .collect();
    let demand = td.demand();
    let mut v = json!({
        "Cluster": r.desired.cluster,
        "TaskARN": r.desired.task_arn,
        "Family": td.family,
        "Revision": td.revision.to_string(),
        "DesiredStatus": desired_status(&r),
        "KnownStatus": r.state.last_status.as_str(),
        "Limits": { "CPU": demand.cpu as f64 / 1024.0, "Memory": demand.memory_mib },
        "LaunchType": "EC2",
        "AvailabilityZone": "",
        "Containers": containers,
    });
    if let Some(t) = r.state.started_at {
        v["PullStartedAt"] = json!(t);
        v["PullStoppedAt"] = json!(t);
    }
    if let Some(t) = r.state.stopped_at {
        v["ExecutionStoppedAt"] = json!(t);
    }
    Json(v).into_response()
}

fn docker_stats(s: &Stats) -> Value {
    json!({
        "read": s.read_at,
        "cpu_stats": { "cpu_usage": { "total_usage": s.cpu_total_ns } },
        "memory_stats": { "usage": s.memory_bytes, "limit": s.memory_limit_bytes },
        "pids_stats": { "current": s.pids },
    })
}

async fn v4_stats(State(agent): State<Agent>, Path((task, container)): Path<(String, String)>) -> Response {
    let Some(r) = find(&agent, &task) else {
        return not_found("task");
    };
    let Some(id) = container_runtime(&r, &container) else {
        return not_found("container");
    };
    match agent.driver().stats(id).await {
        Ok(s) => Json(docker_stats(&s)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn v4_task_stats(State(agent): State<Agent>, Path((task, _container)): Path<(String, String)>) -> Response {
    let Some(r) = find(&agent, &task) else {
        return not_found("task");
    };
    let mut out = serde_json::Map::new();
    for id in r.runtime_ids.values() {
        let v = match agent.driver().stats(id).await {
            Ok(s) => docker_stats(&s),
            Err(_) => Value::Null,
        };
        out.insert(id.clone(), v);
    }
    Json(Value::Object(out)).into_response()
}

async fn logs(
    State(agent): State<Agent>,
    Path((task, container)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(r) = find(&agent, &task) else {
        return not_found("task");
    };
    let Some(id) = container_runtime(&r, &container) else {
        return not_found("container");
    };
    let tail = q.get("tail").and_then(|t| t.parse().ok());
    match agent.driver().logs(id, tail).await {
        Ok(l) => Json(json!({ "stdout": l.stdout, "stderr": l.stderr })).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
