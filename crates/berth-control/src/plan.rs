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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_model::{Deployment, DeploymentStatus, RolloutState, Service, TaskDefinition};
use berth_records::{Cache, ClusterView, keys};
use berth_sched::{PlaceOptions, Strategy, TaskRequest};
use berth_store::DynStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ControlError;
use crate::launcher::snapshot_of;
use crate::reconcile::{self, PassInput, ServicePlan, ServiceState, Start, TaskView};

/// The extension's path.
pub const PLAN_PATH: &str = "/v1/services/plan";

struct PlanState {
    store: DynStore,
}

/// The route, to merge beside the API. It does not authenticate or render
/// errors: the server puts it behind its authentication-and-error layer
/// (operation `PlanService`), which turns an error's status,
/// `x-amzn-errortype` and plain-text message into the API's JSON error.
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

/// An error as the server's layer renders it: status, ECS error type,
/// message. Store faults are the server's; everything else is the request's.
fn refusal(e: &ControlError) -> Response {
    let status = match e {
        ControlError::Request { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = (status, e.to_string()).into_response();
    r.headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(e.error_type()));
    r
}

async fn handle(State(st): State<Arc<PlanState>>, body: Bytes) -> Response {
    let input: PlanInput = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return refusal(&ControlError::invalid(format!("request: {e}"))),
    };
    match plan(&st.store, input).await {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            r
        }
        Err(e) => refusal(&e),
    }
}

/// The short name of a cluster or service given by name or ARN.
fn short(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_string()
}

async fn plan(store: &DynStore, input: PlanInput) -> Result<Value, ControlError> {
    let cluster = input.cluster.as_deref().map_or_else(|| "default".into(), short);
    let name = short(&input.service);
    let cache = Cache::load(store.as_ref()).await?;
    let view = cache.clusters.get(&cluster).ok_or_else(|| ControlError::Request {
        kind: "ClusterNotFoundException",
        message: format!("cluster {cluster} not found"),
    })?;
    let stored = view.services.get(&name).ok_or_else(|| ControlError::Request {
        kind: "ServiceNotFoundException",
        message: format!("service {name} not found in cluster {cluster}"),
    })?;
    let svc = proposed(store, stored.value.clone(), &input).await?;
    let p = reconcile_step(view, &svc, &name);
    let start = match &p.start {
        Some(s) => preview_placements(store, view, &svc, s, &name).await?,
        None => Value::Null,
    };
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

/// The service as the proposed UpdateService would leave it: the new
/// desired count, and a new primary deployment for a new task definition.
async fn proposed(store: &DynStore, mut svc: Service, input: &PlanInput) -> Result<Service, ControlError> {
    if let Some(n) = input.desired_count {
        svc.desired_count = n;
    }
    let mut td_arn = None;
    if let Some(td) = &input.task_definition {
        let arn = resolve_taskdef(store, td, &svc.task_definition).await?;
        td_arn = Some(arn).filter(|a| *a != svc.task_definition);
    }
    if let Some(arn) = td_arn {
        let now = berth_records::now();
        svc.begin_deployment(Deployment {
            id: "planned".into(),
            status: DeploymentStatus::Primary,
            task_definition: arn,
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
    Ok(svc)
}

/// One pass of the reconciler's pure planner over the proposed service.
fn reconcile_step(view: &ClusterView, svc: &Service, name: &str) -> ServicePlan {
    let state = view
        .service_states
        .get(name)
        .and_then(|(b, _)| serde_json::from_slice::<ServiceState>(b).ok())
        .unwrap_or_default();
    let group = format!("service:{name}");
    let now = berth_records::now();
    let tasks: Vec<TaskView> = view
        .tasks
        .values()
        .filter(|t| t.value.group.as_deref() == Some(group.as_str()))
        .map(|t| crate::services::task_view(t, false, &Default::default(), &[], now))
        .collect();
    let ids = |n: usize| format!("plan-{n}");
    reconcile::plan(&PassInput {
        service: svc,
        state: &state,
        tasks: &tasks,
        new_failures: &[],
        now,
        event_id: &ids,
    })
}

/// Where the scheduler would place the tasks `start` asks for, and why any
/// would not fit.
async fn preview_placements(
    store: &DynStore,
    view: &ClusterView,
    svc: &Service,
    start: &Start,
    name: &str,
) -> Result<Value, ControlError> {
    let td = get_taskdef(store, &start.task_definition).await?;
    let invalid = |e: berth_sched::SchedError| ControlError::invalid(e.to_string());
    let mut requests = Vec::new();
    for i in 0..start.count {
        let mut r = TaskRequest::from_task_definition(format!("planned-{i}"), &td, format!("service:{name}"), &[])
            .map_err(invalid)?;
        r = if svc.placement_strategy.is_empty() {
            r.strategy = Strategy::ecs_service_default();
            r
        } else {
            r.with_ecs_strategy(&svc.placement_strategy).map_err(invalid)?
        };
        for c in &svc.placement_constraints {
            r.constraints
                .push(berth_sched::Constraint::from_ecs(&c.kind, c.expression.as_deref()).map_err(invalid)?);
        }
        requests.push(r);
    }
    let (mut snapshot, instances) = snapshot_of(view);
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
    Ok(json!({
        "count": start.count,
        "taskDefinition": start.task_definition,
        "placements": placements,
        "unplaced": unplaced,
    }))
}

async fn get_taskdef(store: &DynStore, arn: &str) -> Result<TaskDefinition, ControlError> {
    let tail = arn.rsplit('/').next().unwrap_or(arn);
    let (family, rev) = tail
        .rsplit_once(':')
        .and_then(|(f, r)| Some((f.to_string(), r.parse::<u32>().ok()?)))
        .ok_or_else(|| ControlError::invalid(format!("taskDefinition: '{arn}' is not family:revision")))?;
    let kv = store
        .get(keys::taskdef(&family, rev).as_bytes())
        .await?
        .ok_or_else(|| ControlError::invalid(format!("taskDefinition: {family}:{rev} not found")))?;
    serde_json::from_slice(&kv.value).map_err(|e| ControlError::Decode(e.to_string()))
}

/// `family`, `family:rev` or an ARN, as an ARN shaped like `current`'s.
async fn resolve_taskdef(store: &DynStore, input: &str, current: &str) -> Result<String, ControlError> {
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
            .await?
            .ok_or_else(|| ControlError::invalid(format!("taskDefinition: family {tail} not found")))?;
        let v: Value = serde_json::from_slice(&kv.value).map_err(|e| ControlError::Decode(e.to_string()))?;
        let rev = v["latestRevision"].as_u64().unwrap_or(0);
        format!("{tail}:{rev}")
    };
    let arn = format!("{prefix}task-definition/{family_rev}");
    get_taskdef(store, &arn).await?;
    Ok(arn)
}
