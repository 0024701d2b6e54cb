//! RunTask (tasks wait in PROVISIONING for the launcher) and StartTask (the
//! caller picks the instances; resources are reserved in the same
//! transaction, compared on each instance's revision, so parallel callers
//! never over-commit an instance).

use std::collections::BTreeSet;

use berth_model::{
    ContainerInstance, InstanceStatus, NetworkBinding, NetworkConfiguration, NetworkMode, PlacementConstraint,
    PlacementStrategy, Protocol, ResourceKind, ResourceType, Resources, Tag, Task, TaskDefinition, TaskOverride,
    Validate,
};
use berth_records::{Attempt, Stored, encode};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::tasks::render;
use super::{failure, taskdefs};
use crate::api::{Api, check_tags, decode, id_and_cluster, input, to_json};
use crate::error::ApiError;
use crate::keys;
use crate::query::Query;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunInput {
    cluster: Option<String>,
    network_configuration: Option<Value>,
    task_definition: String,
    count: Option<i64>,
    group: Option<String>,
    started_by: Option<String>,
    overrides: Option<TaskOverride>,
    #[serde(default)]
    placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    placement_strategy: Vec<PlacementStrategy>,
    client_token: Option<String>,
    launch_type: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    container_instances: Vec<String>,
}

/// What both calls share once the request is checked.
struct Prepared {
    td: Stored<TaskDefinition>,
    /// `awsvpcConfiguration` (subnets, securityGroups): the ENI security
    /// groups the launcher binds.
    network_configuration: Option<NetworkConfiguration>,
    /// The definition with the overrides applied (what the agent runs).
    effective: TaskDefinition,
    demand: Resources,
    overrides: TaskOverride,
    group: String,
    started_by: Option<String>,
    constraints: Vec<PlacementConstraint>,
    strategy: Vec<PlacementStrategy>,
    tags: Vec<Tag>,
    /// From the `berth:tier` tag.
    tier: u8,
}

async fn prepare(api: &Api, req: &RunInput) -> Result<Prepared, ApiError> {
    check_tags("tags", &req.tags)?;
    let tier = berth_model::tier_from_tags("tags", &req.tags)?.unwrap_or(berth_model::DEFAULT_TIER);
    if let Some(lt) = req.launch_type.as_deref() {
        match lt {
            "EC2" | "EXTERNAL" => {}
            "FARGATE" => {
                return Err(ApiError::UnsupportedFeature(
                    "launchType FARGATE is not available; tasks run on registered container instances".into(),
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    "launchType",
                    format!("'{other}' is not EC2, FARGATE or EXTERNAL"),
                ));
            }
        }
    }
    if let Some(g) = &req.group
        && (g.is_empty() || g.len() > 255)
    {
        return Err(ApiError::invalid("group", "must be 1 to 255 characters"));
    }
    if let Some(s) = &req.started_by
        && (s.is_empty() || s.len() > 128)
    {
        return Err(ApiError::invalid("startedBy", "must be 1 to 128 characters"));
    }
    if req.placement_constraints.len() > 10 {
        return Err(ApiError::invalid(
            "placementConstraints",
            "at most 10 constraints are allowed",
        ));
    }
    for (i, c) in req.placement_constraints.iter().enumerate() {
        c.validate()
            .map_err(|e| e.within(&format!("placementConstraints[{i}]")))?;
    }
    check_expressions(&req.placement_constraints, "placementConstraints")?;
    if req.placement_strategy.len() > 5 {
        return Err(ApiError::invalid(
            "placementStrategy",
            "at most 5 strategies are allowed",
        ));
    }
    for (i, s) in req.placement_strategy.iter().enumerate() {
        s.validate().map_err(|e| e.within(&format!("placementStrategy[{i}]")))?;
    }
    let td = taskdefs::resolve(api, &req.task_definition, "taskDefinition")
        .await?
        .ok_or_else(|| ApiError::invalid("taskDefinition", "TaskDefinition not found."))?;
    if td.value.status != berth_model::TaskDefinitionStatus::Active && !req.task_definition.contains(':') {
        return Err(ApiError::invalid("taskDefinition", "TaskDefinition is inactive"));
    }
    check_network_configuration(req.network_configuration.as_ref(), td.value.network_mode)?;
    let network_configuration = match &req.network_configuration {
        Some(v) => Some(
            serde_json::from_value::<NetworkConfiguration>(v.clone())
                .map_err(|e| ApiError::invalid("networkConfiguration", e))?,
        ),
        None => None,
    };
    let ov = req.overrides.clone().unwrap_or_default();
    let effective = ov.apply(&td.value)?;
    let mut constraints = td.value.placement_constraints.clone();
    constraints.extend(req.placement_constraints.iter().cloned());
    Ok(Prepared {
        demand: effective.demand(),
        effective,
        overrides: ov,
        group: req
            .group
            .clone()
            .unwrap_or_else(|| format!("family:{}", td.value.family)),
        started_by: req.started_by.clone(),
        constraints,
        strategy: req.placement_strategy.clone(),
        tags: req.tags.clone(),
        tier,
        network_configuration,
        td,
    })
}

/// A new task of the call, waiting for the launcher.
fn new_task(api: &Api, p: &Prepared, cluster: &str) -> Task {
    let id = api.new_id();
    let mut t = Task::new(
        id.clone(),
        api.arn(ResourceType::Task, format!("{cluster}/{id}")),
        cluster,
        api.arn(ResourceType::TaskDefinition, p.td.value.family_revision()),
        &p.effective,
        api.now(),
    );
    t.demand = p.demand.clone();
    t.started_by.clone_from(&p.started_by);
    t.group = Some(p.group.clone());
    t.tier = p.tier;
    t.overrides = Some(p.overrides.clone());
    t.placement_constraints.clone_from(&p.constraints);
    t.placement_strategy.clone_from(&p.strategy);
    t.network_configuration.clone_from(&p.network_configuration);
    t
}

/// Members of a new task record the model does not carry.
fn task_extras() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("launchType".into(), json!("EC2"));
    m
}

/// Puts a new task with its index keys (and pending key when unplaced).
fn create_ops(txn: TxnRequest, t: &Task, extras: &Map<String, Value>, tags: &[Tag]) -> Result<TxnRequest, ApiError> {
    let key = keys::task(&t.cluster, &t.id);
    let mut txn = txn.when(Compare::missing(&key)).then(Op::put(&key, encode(t, extras)?));
    for op in keys::task_index_ops(None, Some(t)) {
        txn = txn.then(op);
    }
    if t.container_instance.is_none() {
        txn = txn.then(Op::put(keys::pending(&t.cluster, &t.id), key.as_bytes()));
    }
    if !tags.is_empty() {
        txn = txn.then(Op::put(
            keys::tags(&format!("task/{}/{}", t.cluster, t.id)),
            to_json(&tags)?,
        ));
    }
    Ok(txn)
}

/// The first resource `have` lacks for `want`. (Our own check: the model's
/// `Resources::check_fits` overflows in debug builds when `have > want`.)
fn shortfall(have: &Resources, want: &Resources) -> Option<ResourceKind> {
    if have.cpu < want.cpu {
        Some(ResourceKind::Cpu)
    } else if have.memory_mib < want.memory_mib {
        Some(ResourceKind::Memory)
    } else if have.network_mbps < want.network_mbps {
        Some(ResourceKind::Network)
    } else if have.gpus < want.gpus {
        Some(ResourceKind::Gpu)
    } else if have.ports.overlap(&want.ports) > 0 {
        Some(ResourceKind::Ports)
    } else {
        None
    }
}

/// Takes `want` out of `have`, or names what is short; on error nothing changes.
fn reserve(have: &mut Resources, want: &Resources) -> Result<(), ResourceKind> {
    if let Some(k) = shortfall(have, want) {
        return Err(k);
    }
    have.cpu -= want.cpu;
    have.memory_mib -= want.memory_mib;
    have.network_mbps -= want.network_mbps;
    have.gpus -= want.gpus;
    have.ports.tcp.extend(want.ports.tcp.iter().copied());
    have.ports.udp.extend(want.ports.udp.iter().copied());
    Ok(())
}

/// Why `ci` can never run the task (judged on its registered capacity), if so.
fn never_fits(ci: &ContainerInstance, p: &Prepared) -> Option<String> {
    if !ci.agent_connected {
        return Some("AGENT".into());
    }
    for c in &p.constraints {
        if c.kind == "memberOf"
            && let Some(q) = c.expression.as_deref().and_then(|e| Query::parse(e).ok())
            && !q.matches(ci)
        {
            return Some("ATTRIBUTE".into());
        }
    }
    shortfall(&ci.registered, &p.demand).map(|k| k.ecs_reason().to_string())
}

fn request_hash(body: &Value) -> String {
    let mut b = body.clone();
    if let Value::Object(m) = &mut b {
        m.remove("clientToken");
    }
    hex::encode(Sha256::digest(b.to_string().as_bytes()))
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    hash: String,
    tasks: Vec<String>,
}

pub(crate) async fn run_task(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: RunInput = input(body)?;
    let count = req.count.unwrap_or(1);
    crate::api::check_range("count", count, 1, 10)?;
    if let Some(t) = &req.client_token
        && (t.is_empty() || t.len() > 64)
    {
        return Err(ApiError::invalid("clientToken", "must be 1 to 64 characters"));
    }
    let p = prepare(api, &req).await?;
    let hash = request_hash(body);
    let (req, p, hash) = (&req, &p, hash.as_str());
    api.transact("RunTask", || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let token_key = req.client_token.as_deref().map(|t| keys::run_task_token(&cname, t));
        if let Some(k) = &token_key
            && let Some(done) = replay(api, &cname, k, hash).await?
        {
            return Ok(Attempt::Done(done));
        }
        // Can any registered instance ever run it?
        let instances = api.store.range(RangeRequest::prefix(keys::instances(&cname))).await?;
        let mut failures = Vec::new();
        let mut feasible = false;
        for kv in &instances.kvs {
            let ci = decode::<ContainerInstance>(kv)?.value;
            // A draining instance may come back; only deregistered ones are gone.
            if ci.status == InstanceStatus::Inactive {
                continue;
            }
            match never_fits(&ci, p) {
                None => feasible = true,
                Some(reason) => failures.push(failure(
                    &api.arn(ResourceType::ContainerInstance, format!("{cname}/{}", ci.id)),
                    &reason,
                )),
            }
        }
        if !feasible {
            if failures.is_empty() {
                failures.push(failure(&api.cluster_arn(&cname), "MISSING"));
            }
            return Ok(Attempt::Done(json!({"tasks": [], "failures": failures})));
        }
        let extras = task_extras();
        let mut txn = TxnRequest::new().when(Compare::mod_revision(
            keys::cluster(&cname),
            CmpOp::Equal,
            cluster.mod_revision,
        ));
        let mut tasks = Vec::new();
        for _ in 0..count {
            let t = new_task(api, p, &cname);
            txn = create_ops(txn, &t, &extras, &p.tags)?;
            tasks.push(t);
        }
        if let Some(k) = &token_key {
            let rec = TokenRecord {
                hash: hash.to_string(),
                tasks: tasks.iter().map(|t| t.id.clone()).collect(),
            };
            txn = txn.when(Compare::missing(k)).then(Op::put(k, to_json(&rec)?));
        }
        let out: Vec<Value> = tasks.iter().map(|t| render(api, t, &extras, Some(&p.tags))).collect();
        Ok(Attempt::Commit(txn, json!({"tasks": out, "failures": []})))
    })
    .await
}

/// The earlier answer for a reused clientToken, if any.
async fn replay(api: &Api, cluster: &str, key: &str, hash: &str) -> Result<Option<Value>, ApiError> {
    let Some(kv) = api.store.get(key.as_bytes()).await? else {
        return Ok(None);
    };
    let rec: TokenRecord =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::Server(format!("client token record: {e}")))?;
    if rec.hash != hash {
        return Err(ApiError::invalid(
            "clientToken",
            "was already used for a RunTask request with different parameters",
        ));
    }
    let mut out = Vec::new();
    for id in &rec.tasks {
        if let Some(t) = api.get::<Task>(&keys::task(cluster, id)).await? {
            let (tags, _) = api.tags(&format!("task/{cluster}/{id}")).await?;
            out.push(render(api, &t.value, &t.raw, Some(&tags)));
        }
    }
    Ok(Some(json!({"tasks": out, "failures": []})))
}

/// Host ports for the task on `ci`: static ones from the definition, dynamic
/// ones from the instance's range. Returns the demand with every host port
/// and the bindings per container, or the ECS reason it does not fit.
fn plan_ports(
    td: &TaskDefinition,
    base: &Resources,
    ci: &ContainerInstance,
) -> Result<(Resources, Vec<Vec<NetworkBinding>>), String> {
    let mut demand = base.clone();
    let mut bindings = Vec::new();
    let mut taken: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    for c in &td.container_definitions {
        let mut b = Vec::new();
        for pm in &c.port_mappings {
            let host = match (td.network_mode, pm.host_port.filter(|p| *p != 0)) {
                (NetworkMode::Awsvpc | NetworkMode::None, _) => continue,
                (NetworkMode::Host, None) => pm.container_port,
                (_, Some(p)) => p,
                (NetworkMode::Bridge, None) => {
                    let (lo, hi) = ci.port_range;
                    let free = (lo..=hi).find(|p| {
                        !ci.remaining.ports.contains(pm.protocol, *p)
                            && !demand.ports.contains(pm.protocol, *p)
                            && !taken.contains(&(pm.protocol, *p))
                    });
                    match free {
                        Some(p) => p,
                        None => return Err("RESOURCE:PORTS".into()),
                    }
                }
            };
            taken.insert((pm.protocol, host));
            demand.ports.insert(pm.protocol, host);
            b.push(NetworkBinding {
                bind_ip: "0.0.0.0".into(),
                container_port: pm.container_port,
                host_port: host,
                protocol: pm.protocol,
            });
        }
        bindings.push(b);
    }
    Ok((demand, bindings))
}

pub(crate) async fn start_task(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: RunInput = input(body)?;
    if req.container_instances.is_empty() || req.container_instances.len() > 10 {
        return Err(ApiError::invalid(
            "containerInstances",
            "must list 1 to 10 container instances",
        ));
    }
    let mut ids = Vec::new();
    for (i, s) in req.container_instances.iter().enumerate() {
        let (_, id) = id_and_cluster(s, ResourceType::ContainerInstance, &format!("containerInstances[{i}]"))?;
        if ids.contains(&id) {
            return Err(ApiError::invalid(
                &format!("containerInstances[{i}]"),
                "is listed twice",
            ));
        }
        ids.push(id);
    }
    let p = prepare(api, &req).await?;
    let (req, p, ids) = (&req, &p, &ids);
    api.transact("StartTask", || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let extras = task_extras();
        let mut txn = TxnRequest::new().when(Compare::mod_revision(
            keys::cluster(&cname),
            CmpOp::Equal,
            cluster.mod_revision,
        ));
        let (mut tasks, mut failures) = (Vec::new(), Vec::new());
        for id in ids {
            let key = keys::instance(&cname, id);
            let arn = api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}"));
            let Some(Stored {
                value: mut ci,
                mod_revision,
                raw,
            }) = api.get::<ContainerInstance>(&key).await?
            else {
                failures.push(failure(&arn, "MISSING"));
                continue;
            };
            // Compare even when refusing: the answer is only as good as the read.
            txn = txn.when(Compare::mod_revision(&key, CmpOp::Equal, mod_revision));
            if ci.status != InstanceStatus::Active {
                failures.push(failure(
                    &arn,
                    if ci.status == InstanceStatus::Draining {
                        "DRAINING"
                    } else {
                        "INACTIVE"
                    },
                ));
                continue;
            }
            if let Some(reason) = never_fits(&ci, p).filter(|r| !r.starts_with("RESOURCE:")) {
                failures.push(failure(&arn, &reason));
                continue;
            }
            let (demand, bindings) = match plan_ports(&p.effective, &p.demand, &ci) {
                Ok(x) => x,
                Err(reason) => {
                    failures.push(failure(&arn, &reason));
                    continue;
                }
            };
            if let Err(kind) = reserve(&mut ci.remaining, &demand) {
                failures.push(failure(&arn, kind.ecs_reason()));
                continue;
            }
            ci.pending_tasks_count += 1;
            let mut t = new_task(api, p, &cname);
            let named: Vec<(String, Vec<NetworkBinding>)> = p
                .effective
                .container_definitions
                .iter()
                .map(|c| c.name.clone())
                .zip(bindings)
                .collect();
            t.place(id, &named, demand);
            txn = create_ops(txn, &t, &extras, &p.tags)?.then(Op::put(&key, encode(&ci, &raw)?));
            tasks.push(t);
        }
        let out: Vec<Value> = tasks.iter().map(|t| render(api, t, &extras, Some(&p.tags))).collect();
        Ok(Attempt::Commit(txn, json!({"tasks": out, "failures": failures})))
    })
    .await
}

/// `networkConfiguration.awsvpcConfiguration`: required for `awsvpc` task
/// definitions (as in ECS), refused for others; subnets and at most five
/// security groups, each a string.
fn check_network_configuration(nc: Option<&Value>, mode: NetworkMode) -> Result<(), ApiError> {
    let Some(nc) = nc else {
        if mode == NetworkMode::Awsvpc {
            return Err(ApiError::invalid(
                "networkConfiguration",
                "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
            ));
        }
        return Ok(());
    };
    if mode != NetworkMode::Awsvpc {
        return Err(ApiError::invalid(
            "networkConfiguration",
            "Network Configuration is not valid for the given networkMode of this task definition.",
        ));
    }
    let Some(vpc) = nc.get("awsvpcConfiguration").filter(|v| v.is_object()) else {
        return Err(ApiError::invalid(
            "networkConfiguration.awsvpcConfiguration",
            "is required and must be an object",
        ));
    };
    for (member, max) in [("subnets", 16usize), ("securityGroups", 5)] {
        match vpc.get(member) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.len() <= max && a.iter().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("networkConfiguration.awsvpcConfiguration.{member}"),
                    format!("must be a list of at most {max} strings"),
                ));
            }
        }
    }
    Ok(())
}

/// Parses every `memberOf` expression with the scheduler's query language,
/// so a malformed one is a 400 naming the member, the position and what was
/// expected, instead of a task that stays pending.
pub(crate) fn check_expressions(list: &[PlacementConstraint], at: &str) -> Result<(), ApiError> {
    for (i, c) in list.iter().enumerate() {
        if c.kind == "memberOf"
            && let Some(e) = c.expression.as_deref()
            && let Err(err) = berth_sched::parse_expression(e)
        {
            return Err(ApiError::invalid(&format!("{at}[{i}].expression"), err));
        }
    }
    Ok(())
}
