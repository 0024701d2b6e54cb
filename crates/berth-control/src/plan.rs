//! `POST /v1/services/plan` (a Berth extension, `berth service plan`): what
//! an UpdateService would do, without doing it. It applies the proposed
//! change (task definition, desired count) to the stored service in memory,
//! runs the reconciler's pure planner once, and previews where the scheduler
//! would place the tasks it would start — tasks to start, tasks to stop and
//! why, placements and the reasons for any that would not fit.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_model::{Deployment, DeploymentStatus, RolloutState, Service, TaskDefinition};
use berth_records::{Cache, keys};
use berth_sched::{PlaceOptions, Strategy, TaskRequest};
use berth_store::DynStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::launcher::snapshot_of;
use crate::reconcile::{self, PassInput, ServiceState, TaskView};

/// The extension's path.
pub const PLAN_PATH: &str = "/v1/services/plan";

struct PlanState {
    store: DynStore,
}

/// The route, to merge beside the API. It does not authenticate: the
/// server puts it behind its authentication layer (operation `PlanService`).
pub fn plan_router(store: DynStore) -> Router {
    Router::new()
        .route(PLAN_PATH, axum::routing::post(handle))
        .with_state(Arc::new(PlanState { store }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanInput {
    #[serde(default)]
    cluster: Option<String>,
    service: String,
    task_definition: Option<String>,
    desired_count: Option<u32>,
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"__type": kind, "message": message}).to_string();
    let mut r = json_response(status, body);
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

async fn handle(State(st): State<Arc<PlanState>>, body: Bytes) -> Response {
    let input: PlanInput = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterException",
                format!("request: {e}"),
            );
        }
    };
    match plan(&st.store, input).await {
        Ok(v) => json_response(StatusCode::OK, v.to_string()),
        // Store faults are the server's; everything else is the request's.
        Err((kind @ "ServerException", msg)) => error(StatusCode::INTERNAL_SERVER_ERROR, kind, msg),
        Err((kind, msg)) => error(StatusCode::BAD_REQUEST, kind, msg),
    }
}

type PlanError = (&'static str, String);

async fn plan(store: &DynStore, input: PlanInput) -> Result<Value, PlanError> {
    let server_err = |e: &dyn std::fmt::Display| ("ServerException", e.to_string());
    let cluster = input
        .cluster
        .as_deref()
        .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
        .unwrap_or_else(|| "default".into());
    let name = input.service.rsplit('/').next().unwrap_or(&input.service).to_string();
    let cache = Cache::load(store.as_ref()).await.map_err(|e| server_err(&e))?;
    let view = cache
        .clusters
        .get(&cluster)
        .ok_or(("ClusterNotFoundException", format!("cluster {cluster} not found")))?;
    let stored = view.services.get(&name).ok_or((
        "ServiceNotFoundException",
        format!("service {name} not found in cluster {cluster}"),
    ))?;
    let mut svc: Service = stored.value.clone();
    if let Some(n) = input.desired_count {
        svc.desired_count = n;
    }
    let mut td_arn = None;
    if let Some(td) = &input.task_definition {
        let arn = resolve_taskdef(store, td, &svc.task_definition).await?;
        if arn != svc.task_definition {
            td_arn = Some(arn);
        }
    }
    if let Some(arn) = &td_arn {
        let now = berth_records::now();
        svc.begin_deployment(Deployment {
            id: "planned".into(),
            status: DeploymentStatus::Primary,
            task_definition: arn.clone(),
            desired_count: svc.desired_count,
            pending_count: 0,
            running_count: 0,
            failed_tasks: 0,
            rollout_state: RolloutState::InProgress,
            rollout_state_reason: String::new(),
            created_at: now,
            updated_at: now,
        });
    } else {
        let desired = svc.desired_count;
        if let Some(p) = svc.primary_mut() {
            p.desired_count = desired;
        }
    }
    let state = view
        .service_states
        .get(&name)
        .and_then(|(b, _)| serde_json::from_slice::<ServiceState>(b).ok())
        .unwrap_or_default();
    let tasks: Vec<TaskView> = view
        .tasks
        .values()
        .filter(|t| t.value.group.as_deref() == Some(&format!("service:{name}")))
        .map(|t| crate::services::task_view(t, false, &Default::default(), &[], berth_records::now()))
        .collect();
    let ids = |n: usize| format!("plan-{n}");
    let p = reconcile::plan(&PassInput {
        service: &svc,
        state: &state,
        tasks: &tasks,
        new_failures: &[],
        now: berth_records::now(),
        event_id: &ids,
    });
    let mut start = Value::Null;
    if let Some(s) = &p.start {
        let td = get_taskdef(store, &s.task_definition).await?;
        let (mut snapshot, instances) = snapshot_of(view);
        let mut requests = Vec::new();
        for i in 0..s.count {
            let mut r = TaskRequest::from_task_definition(format!("planned-{i}"), &td, format!("service:{name}"), &[])
                .map_err(|e| ("InvalidParameterException", e.to_string()))?;
            r = if svc.placement_strategy.is_empty() {
                r.strategy = Strategy::ecs_service_default();
                r
            } else {
                r.with_ecs_strategy(&svc.placement_strategy)
                    .map_err(|e| ("InvalidParameterException", e.to_string()))?
            };
            for c in &svc.placement_constraints {
                r.constraints.push(
                    berth_sched::Constraint::from_ecs(&c.kind, c.expression.as_deref())
                        .map_err(|e| ("InvalidParameterException", e.to_string()))?,
                );
            }
            requests.push(r);
        }
        let placed = snapshot.place(&requests, &PlaceOptions::default());
        let placements: Vec<Value> = placed
            .placements
            .iter()
            .map(|pl| {
                let ci = &instances[pl.instance_index].value;
                json!({
                    "containerInstance": ci.id,
                    "availabilityZone": ci.attributes.get("ecs.availability-zone"),
                    "hostPorts": pl.dynamic_ports.iter().map(|(_, port)| port).collect::<Vec<_>>(),
                })
            })
            .collect();
        let unplaced: Vec<String> = placed.unplaced.iter().map(|u| u.summary()).collect();
        start = json!({
            "count": s.count,
            "taskDefinition": s.task_definition,
            "placements": placements,
            "unplaced": unplaced,
        });
    }
    let stop: Vec<Value> = p
        .stop
        .iter()
        .map(|(id, reason)| json!({"task": id, "reason": reason}))
        .collect();
    let events: Vec<&str> = p
        .service
        .events
        .iter()
        .filter(|e| e.id.starts_with("plan-"))
        .map(|e| e.message.as_str())
        .collect();
    Ok(json!({
        "cluster": cluster,
        "service": name,
        "desiredCount": svc.desired_count,
        "taskDefinition": svc.task_definition,
        "start": start,
        "stop": stop,
        "events": events,
        "note": "a single reconciler step: later steps follow as started tasks become healthy",
    }))
}

async fn get_taskdef(store: &DynStore, arn: &str) -> Result<TaskDefinition, PlanError> {
    let tail = arn.rsplit('/').next().unwrap_or(arn);
    let (family, rev) = tail
        .rsplit_once(':')
        .and_then(|(f, r)| Some((f.to_string(), r.parse::<u32>().ok()?)))
        .ok_or((
            "InvalidParameterException",
            format!("taskDefinition: '{arn}' is not family:revision"),
        ))?;
    let kv = store
        .get(keys::taskdef(&family, rev).as_bytes())
        .await
        .map_err(|e| ("ServerException", e.to_string()))?
        .ok_or((
            "InvalidParameterException",
            format!("taskDefinition: {family}:{rev} not found"),
        ))?;
    serde_json::from_slice(&kv.value).map_err(|e| ("ServerException", e.to_string()))
}

/// `family`, `family:rev` or an ARN, as an ARN shaped like `current`'s.
async fn resolve_taskdef(store: &DynStore, input: &str, current: &str) -> Result<String, PlanError> {
    let prefix = current
        .split("task-definition/")
        .next()
        .unwrap_or("arn:aws:ecs:us-east-1:123456789012:");
    let tail = input.rsplit('/').next().unwrap_or(input);
    let family_rev = if tail.contains(':') {
        tail.to_string()
    } else {
        let kv = store
            .get(keys::taskdef_family(tail).as_bytes())
            .await
            .map_err(|e| ("ServerException", e.to_string()))?
            .ok_or((
                "InvalidParameterException",
                format!("taskDefinition: family {tail} not found"),
            ))?;
        let v: Value = serde_json::from_slice(&kv.value).map_err(|e| ("ServerException", e.to_string()))?;
        let rev = v["latestRevision"].as_u64().unwrap_or(0);
        format!("{tail}:{rev}")
    };
    let arn = format!("{prefix}task-definition/{family_rev}");
    get_taskdef(store, &arn).await?;
    Ok(arn)
}
