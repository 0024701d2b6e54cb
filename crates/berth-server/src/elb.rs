//! The load balancer API (a Berth extension in the spirit of ELBv2):
//! `POST /v1/elb/{Operation}` with a JSON body, SigV4-signed like the ECS
//! API. Target groups and load balancers are stored under `/lb/` (see
//! [`crate::keys`]); registered targets are written by the reconciler's
//! target controller and their health by the data plane.
//!
//! Operations: `CreateTargetGroup`, `DescribeTargetGroups`,
//! `DeleteTargetGroup`, `CreateLoadBalancer`, `DescribeLoadBalancers`,
//! `DeleteLoadBalancer`, `DescribeTargetHealth`; for a standalone data plane
//! (`berth lb --server`): `GetLbConfig` (long poll on the `/lb/` revision)
//! and `ReportTargetHealth`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use berth_model::{LoadBalancerDef, Service, ServiceStatus, TargetGroup, TargetHealthRecord, TargetRecord, Validate};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, decode, input, to_json};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::keys;
use crate::layer::error_response;
use crate::server::Shared;

/// The path prefix of the operations.
pub const ELB_PATH: &str = "/v1/elb/";

pub use berth_model::target_group_name;

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(op): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let request_id = shared.config.env.new_id();
    match serve(&shared, &op, caller, &body).await {
        Ok(v) => {
            let mut r = axum::response::IntoResponse::into_response(v.to_string());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => error_response(&e, &request_id),
    }
}

/// One operation; the layer has verified the caller and read the body.
async fn serve(shared: &Shared, op: &str, caller: Caller, body: &Bytes) -> Result<Value, ApiError> {
    let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::Serialization(format!("request body is not valid JSON: {e}")))?
    };
    if !input.is_object() {
        return Err(ApiError::Serialization("request body must be a JSON object".into()));
    }
    let api = Api {
        store: shared.store.clone(),
        ctx: berth_model::ArnContext {
            region: caller.region,
            account: shared.config.account_id.clone(),
        },
        env: shared.config.env.clone(),
    };
    match op {
        "CreateTargetGroup" => create_target_group(&api, &input).await,
        "DescribeTargetGroups" => describe_target_groups(&api, &input).await,
        "DeleteTargetGroup" => delete_target_group(&api, &input).await,
        "CreateLoadBalancer" => create_load_balancer(&api, &input).await,
        "DescribeLoadBalancers" => describe_load_balancers(&api, &input).await,
        "DeleteLoadBalancer" => delete_load_balancer(&api, &input).await,
        "DescribeTargetHealth" => describe_target_health(&api, &input).await,
        "GetLbConfig" => get_config(&api, &input).await,
        "ReportTargetHealth" => report_health(&api, &input).await,
        other => Err(ApiError::UnknownOperation(format!(
            "{other} is not a load balancer operation"
        ))),
    }
}

async fn list<T: serde::de::DeserializeOwned>(api: &Api, prefix: &str) -> Result<Vec<(T, i64)>, ApiError> {
    let resp = api.store.range(RangeRequest::prefix(prefix.as_bytes())).await?;
    let mut out = Vec::new();
    for kv in &resp.kvs {
        let s = decode::<T>(kv)?;
        out.push((s.value, s.mod_revision));
    }
    Ok(out)
}

fn tg_arn(api: &Api, name: &str) -> String {
    let id: [u8; 8] = rand::random();
    format!(
        "arn:aws:elasticloadbalancing:{}:{}:targetgroup/{name}/{}",
        api.ctx.region,
        api.ctx.account,
        hex::encode(id)
    )
}

async fn create_target_group(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let mut tg: TargetGroup = input(body)?;
    tg.validate()?;
    let key = keys::targetgroup(&tg.target_group_name);
    if let Some(existing) = api.get::<TargetGroup>(&key).await? {
        let mut same = existing.value.clone();
        same.target_group_arn.clear();
        let mut asked = tg.clone();
        asked.target_group_arn.clear();
        if same == asked {
            return Ok(json!({"targetGroups": [existing.value]}));
        }
        return Err(ApiError::invalid(
            "targetGroupName",
            format!(
                "a target group named '{}' exists with other settings",
                tg.target_group_name
            ),
        ));
    }
    tg.target_group_arn = tg_arn(api, &tg.target_group_name);
    let txn = TxnRequest::new()
        .when(Compare::missing(&key))
        .then(Op::put(&key, to_json(&tg)?));
    if !api.store.txn(txn).await?.succeeded {
        return Err(ApiError::invalid("targetGroupName", "was created concurrently; retry"));
    }
    Ok(json!({"targetGroups": [tg]}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamesInput {
    #[serde(default)]
    names: Vec<String>,
}

async fn describe_target_groups(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: NamesInput = input(body)?;
    let all = list::<TargetGroup>(api, keys::TARGETGROUPS).await?;
    let wanted: Vec<&str> = req.names.iter().map(|n| target_group_name(n)).collect();
    for (i, w) in wanted.iter().enumerate() {
        if !all.iter().any(|(g, _)| g.target_group_name == *w) {
            return Err(ApiError::ResourceNotFound(format!(
                "names[{i}]: target group '{w}' not found"
            )));
        }
    }
    let mut groups = Vec::new();
    for (g, _) in all {
        if !wanted.is_empty() && !wanted.contains(&g.target_group_name.as_str()) {
            continue;
        }
        let targets = api
            .store
            .range(RangeRequest::prefix(keys::targets_of(&g.target_group_name).as_bytes()))
            .await?
            .count;
        let mut v = serde_json::to_value(&g).map_err(|e| ApiError::Server(e.to_string()))?;
        v["targetCount"] = json!(targets);
        groups.push(v);
    }
    Ok(json!({"targetGroups": groups}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TgRef {
    target_group: String,
}

/// Services (of any cluster) that reference target group `name`.
async fn services_using(api: &Api, name: &str) -> Result<Vec<String>, ApiError> {
    let resp = api.store.range(RangeRequest::prefix(b"/services/")).await?;
    let mut out = Vec::new();
    for kv in &resp.kvs {
        let Ok(s) = decode::<Service>(kv) else { continue };
        if s.value.status != ServiceStatus::Inactive
            && s.value
                .load_balancers
                .iter()
                .any(|l| l.target_group_arn.as_deref().map(target_group_name) == Some(name))
        {
            out.push(s.value.service_name);
        }
    }
    Ok(out)
}

async fn delete_target_group(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: TgRef = input(body)?;
    let name = target_group_name(&req.target_group).to_string();
    let key = keys::targetgroup(&name);
    let Some(stored) = api.get::<TargetGroup>(&key).await? else {
        return Err(ApiError::ResourceNotFound(format!("targetGroup: '{name}' not found")));
    };
    for (lb, _) in list::<LoadBalancerDef>(api, keys::LOADBALANCERS).await? {
        if lb_groups(&lb).any(|g| g == name) {
            return Err(ApiError::invalid(
                "targetGroup",
                format!("'{name}' is in use by load balancer '{}'", lb.load_balancer_name),
            ));
        }
    }
    let users = services_using(api, &name).await?;
    if !users.is_empty() {
        return Err(ApiError::invalid(
            "targetGroup",
            format!("'{name}' is in use by service(s) {}", users.join(", ")),
        ));
    }
    let txn = TxnRequest::new()
        .when(Compare::mod_revision(&key, CmpOp::Equal, stored.mod_revision))
        .then(Op::delete(&key))
        .then(Op::delete_prefix(keys::targets_of(&name)))
        .then(Op::delete_prefix(format!("{}{name}/", keys::TARGET_HEALTH)));
    api.store.txn(txn).await?;
    Ok(json!({"targetGroup": stored.value}))
}

fn lb_groups(lb: &LoadBalancerDef) -> impl Iterator<Item = &str> {
    lb.listeners.iter().flat_map(|l| {
        l.rules
            .iter()
            .map(|r| r.target_group.as_str())
            .chain(l.default_target_group.as_deref())
    })
}

async fn create_load_balancer(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let mut lb: LoadBalancerDef = input(body)?;
    lb.validate()?;
    // Names, not ARNs, in the record; every group must exist.
    for (i, l) in lb.listeners.iter_mut().enumerate() {
        for (j, r) in l.rules.iter_mut().enumerate() {
            r.target_group = target_group_name(&r.target_group).to_string();
            if api
                .get::<TargetGroup>(&keys::targetgroup(&r.target_group))
                .await?
                .is_none()
            {
                return Err(ApiError::invalid(
                    &format!("listeners[{i}].rules[{j}].targetGroup"),
                    format!("target group '{}' not found", r.target_group),
                ));
            }
        }
        if let Some(d) = &mut l.default_target_group {
            *d = target_group_name(d).to_string();
            if api.get::<TargetGroup>(&keys::targetgroup(d)).await?.is_none() {
                return Err(ApiError::invalid(
                    &format!("listeners[{i}].defaultTargetGroup"),
                    format!("target group '{d}' not found"),
                ));
            }
        }
    }
    let key = keys::loadbalancer(&lb.load_balancer_name);
    // Ports must not collide with another load balancer's.
    for (other, _) in list::<LoadBalancerDef>(api, keys::LOADBALANCERS).await? {
        if other.load_balancer_name == lb.load_balancer_name {
            return Err(ApiError::invalid(
                "loadBalancerName",
                format!("a load balancer named '{}' exists", lb.load_balancer_name),
            ));
        }
        for (i, l) in lb.listeners.iter().enumerate() {
            if l.port != 0 && other.listeners.iter().any(|o| o.port == l.port) {
                return Err(ApiError::invalid(
                    &format!("listeners[{i}].port"),
                    format!(
                        "port {} is used by load balancer '{}'",
                        l.port, other.load_balancer_name
                    ),
                ));
            }
        }
    }
    let id: [u8; 8] = rand::random();
    lb.load_balancer_arn = format!(
        "arn:aws:elasticloadbalancing:{}:{}:loadbalancer/app/{}/{}",
        api.ctx.region,
        api.ctx.account,
        lb.load_balancer_name,
        hex::encode(id)
    );
    lb.created_at = api.now();
    let txn = TxnRequest::new()
        .when(Compare::missing(&key))
        .then(Op::put(&key, to_json(&lb)?));
    if !api.store.txn(txn).await?.succeeded {
        return Err(ApiError::invalid("loadBalancerName", "was created concurrently; retry"));
    }
    Ok(json!({"loadBalancers": [lb]}))
}

async fn render_lb(api: &Api, lb: &LoadBalancerDef) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(lb).map_err(|e| ApiError::Server(e.to_string()))?;
    let bound = api
        .store
        .range(RangeRequest::prefix(
            format!("{}{}/", keys::LB_BOUND, lb.load_balancer_name).as_bytes(),
        ))
        .await?;
    if let Some(ls) = v["listeners"].as_array_mut() {
        for l in ls {
            let port = l["port"].as_u64().unwrap_or(0);
            let key = keys::lb_bound(&lb.load_balancer_name, port as u16);
            if let Some(kv) = bound.kvs.iter().find(|kv| kv.key.as_ref() == key.as_bytes()) {
                l["address"] = json!(String::from_utf8_lossy(&kv.value));
            }
        }
    }
    Ok(v)
}

async fn describe_load_balancers(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: NamesInput = input(body)?;
    let all = list::<LoadBalancerDef>(api, keys::LOADBALANCERS).await?;
    for (i, w) in req.names.iter().enumerate() {
        if !all.iter().any(|(l, _)| &l.load_balancer_name == w) {
            return Err(ApiError::ResourceNotFound(format!(
                "names[{i}]: load balancer '{w}' not found"
            )));
        }
    }
    let mut out = Vec::new();
    for (lb, _) in &all {
        if req.names.is_empty() || req.names.contains(&lb.load_balancer_name) {
            out.push(render_lb(api, lb).await?);
        }
    }
    Ok(json!({"loadBalancers": out}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LbRef {
    load_balancer: String,
}

async fn delete_load_balancer(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: LbRef = input(body)?;
    let name = req
        .load_balancer
        .rsplit('/')
        .nth(1)
        .filter(|_| req.load_balancer.starts_with("arn:"));
    let name = name.unwrap_or(&req.load_balancer).to_string();
    let key = keys::loadbalancer(&name);
    let Some(stored) = api.get::<LoadBalancerDef>(&key).await? else {
        return Err(ApiError::ResourceNotFound(format!("loadBalancer: '{name}' not found")));
    };
    let txn = TxnRequest::new()
        .when(Compare::mod_revision(&key, CmpOp::Equal, stored.mod_revision))
        .then(Op::delete(&key))
        .then(Op::delete_prefix(format!("{}{name}/", keys::LB_BOUND)));
    api.store.txn(txn).await?;
    Ok(json!({"loadBalancer": stored.value}))
}

/// Targets of a group with their health, as DescribeTargetHealth (and
/// DescribeServices, under each load balancer) show them.
pub(crate) async fn targets_with_health(api: &Api, group: &str) -> Result<Vec<Value>, ApiError> {
    let targets = list::<TargetRecord>(api, &keys::targets_of(group)).await?;
    let prefix = format!("{}{group}/", keys::TARGET_HEALTH);
    let mut health = std::collections::HashMap::new();
    for kv in api.store.range(RangeRequest::prefix(prefix.as_bytes())).await?.kvs {
        let h = decode::<TargetHealthRecord>(&kv)?;
        if let Some(addr) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.strip_prefix(&prefix)) {
            health.insert(addr.to_string(), h.value);
        }
    }
    let mut out = Vec::new();
    for (t, _) in targets {
        let h = health.get(&t.id);
        let state = if t.state == "draining" {
            "draining".to_string()
        } else {
            h.map_or_else(|| "initial".to_string(), |h| h.state.clone())
        };
        out.push(json!({
            "targetGroup": group,
            "id": t.id,
            "taskArn": t.task_arn,
            "cluster": t.cluster,
            "service": t.service,
            "state": state,
            "health": h.map(|h| h.state.clone()),
            "inFlight": h.map(|h| h.in_flight),
            "drainUntil": t.drain_until,
        }));
    }
    Ok(out)
}

async fn describe_target_health(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: TgRef = input(body)?;
    let name = target_group_name(&req.target_group).to_string();
    if api.get::<TargetGroup>(&keys::targetgroup(&name)).await?.is_none() {
        return Err(ApiError::ResourceNotFound(format!("targetGroup: '{name}' not found")));
    }
    Ok(json!({"targets": targets_with_health(api, &name).await?}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigInput {
    #[serde(default)]
    after_revision: i64,
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// Everything under `/lb/` (except health) at one revision; with
/// `afterRevision`, waits up to `waitSeconds` (default 30) for a change past it.
async fn get_config(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ConfigInput = input(body)?;
    if req.after_revision > 0 {
        let wait = Duration::from_secs(req.wait_seconds.unwrap_or(30).min(300));
        match api.store.watch(keys::LB.as_bytes(), req.after_revision + 1).await {
            Ok(mut w) => {
                let changed = async {
                    while let Some(b) = w.next().await {
                        match b {
                            Ok(b) => {
                                // Health and bound addresses are the data plane's own writes.
                                if b.events.iter().any(|e| {
                                    !e.kv.key.starts_with(keys::TARGET_HEALTH.as_bytes())
                                        && !e.kv.key.starts_with(keys::LB_BOUND.as_bytes())
                                }) {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                };
                let _ = tokio::time::timeout(wait, changed).await;
            }
            Err(_) => {
                // Compacted: answer with the current state.
            }
        }
    }
    let resp = api.store.range(RangeRequest::prefix(keys::LB.as_bytes())).await?;
    let (mut lbs, mut groups, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for kv in &resp.kvs {
        let k = String::from_utf8_lossy(&kv.key);
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        if k.starts_with(keys::LOADBALANCERS) {
            lbs.push(v);
        } else if k.starts_with(keys::TARGETGROUPS) {
            groups.push(v);
        } else if let Some(rest) = k.strip_prefix(keys::TARGETS) {
            let group = rest.split('/').next().unwrap_or_default();
            targets.push(json!({"targetGroup": group, "target": v}));
        }
    }
    Ok(json!({
        "revision": resp.revision,
        "loadBalancers": lbs,
        "targetGroups": groups,
        "targets": targets,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthReport {
    #[serde(default)]
    health: Vec<HealthItem>,
    #[serde(default)]
    bound: Vec<BoundItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthItem {
    target_group: String,
    id: String,
    state: String,
    #[serde(default)]
    in_flight: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BoundItem {
    load_balancer: String,
    port: u16,
    address: String,
}

/// Writes target health (only records that changed state) and listener
/// addresses reported by a standalone data plane.
async fn report_health(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: HealthReport = input(body)?;
    let mut written = 0;
    for (i, h) in req.health.iter().enumerate() {
        if !matches!(
            h.state.as_str(),
            "initial" | "healthy" | "unhealthy" | "ejected" | "draining"
        ) {
            return Err(ApiError::invalid(&format!("health[{i}].state"), "unknown state"));
        }
        let key = keys::target_health(&h.target_group, &h.id);
        let old = api.get::<TargetHealthRecord>(&key).await?;
        if old.as_ref().is_some_and(|o| o.value.state == h.state) {
            continue;
        }
        let rec = TargetHealthRecord {
            state: h.state.clone(),
            since: api.now(),
            in_flight: h.in_flight,
        };
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(
                &key,
                CmpOp::Equal,
                old.map_or(0, |o| o.mod_revision),
            ))
            .then(Op::put(&key, to_json(&rec)?));
        api.store.txn(txn).await?;
        written += 1;
    }
    for b in &req.bound {
        let key = keys::lb_bound(&b.load_balancer, b.port);
        let same = api
            .store
            .get(key.as_bytes())
            .await?
            .is_some_and(|kv| kv.value.as_ref() == b.address.as_bytes());
        if !same {
            api.store
                .txn(TxnRequest::new().then(Op::put(&key, b.address.as_bytes())))
                .await?;
        }
    }
    Ok(json!({"written": written}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_from_arns() {
        assert_eq!(target_group_name("web"), "web");
        assert_eq!(
            target_group_name("arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web/abc"),
            "web"
        );
    }
}
