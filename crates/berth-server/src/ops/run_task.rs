//! RunTask (tasks wait in PROVISIONING for the launcher) and StartTask (the
//! caller picks the instances; the placement engine places on each one
//! alone, and resources are reserved in the same transaction, compared on
//! each instance's revision, so parallel callers never over-commit an
//! instance). Fit checks, constraints and host ports are the engine's.

use berth_model::{
    ContainerInstance, Eni, InstanceStatus, NetworkBinding, NetworkConfiguration, NetworkMode, PlacementConstraint,
    PlacementStrategy, ResourceType, Resources, Tag, Task, TaskDefinition, TaskOverride, Validate,
};
use berth_records::{Attempt, Stored, encode};
use berth_sched::{Constraint, Instance, PlaceOptions, Plan, Snapshot, Subject, TaskRequest, Unplaced};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::tasks::render;
use super::{failure, taskdefs};
use crate::api::{Api, check_tags, decode, id_and_cluster, input, to_json};
use crate::error::ApiError;
use crate::keys;

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

/// The security groups of the task's `awsvpcConfiguration`, if any.
fn security_groups(nc: Option<&NetworkConfiguration>) -> Vec<String> {
    nc.map(NetworkConfiguration::security_groups).unwrap_or_default()
}

/// The engine's request for one task of `p`. `only_static` leaves out the
/// `memberOf` expressions that read running tasks (`task:group`, counts):
/// they say nothing about whether an instance could *ever* run the task.
fn sched_request(p: &Prepared, only_static: bool) -> Result<TaskRequest, ApiError> {
    let sgs = security_groups(p.network_configuration.as_ref());
    let mut r = TaskRequest::from_task_definition("request", &p.effective, p.group.clone(), &sgs)
        .map_err(|e| ApiError::invalid("taskDefinition", e))?;
    r.tier = p.tier;
    r.constraints.clear();
    for (i, c) in p.constraints.iter().enumerate() {
        let dynamic = c.kind == "memberOf"
            && c.expression
                .as_deref()
                .and_then(|e| berth_sched::parse_expression(e).ok())
                .is_some_and(|ast| !ast.is_static());
        if only_static && dynamic {
            continue;
        }
        let constraint = Constraint::from_ecs(&c.kind, c.expression.as_deref())
            .map_err(|e| ApiError::invalid(&format!("placementConstraints[{i}]"), e))?;
        r.constraints.push(constraint);
    }
    Ok(r)
}

/// The ECS reason the engine gives for a task it did not place on a
/// one-instance snapshot.
fn reason_of(plan: &Plan) -> String {
    match plan.unplaced.first() {
        Some(Unplaced { error: Some(e), .. }) => format!("INVALID: {e}"),
        Some(u) => u
            .reasons
            .first()
            .map_or_else(|| "RESOURCE".to_string(), |(r, _)| r.to_string()),
        None => "RESOURCE".to_string(),
    }
}

/// Why each instance could never run a task of `p`, judged by the engine
/// on its registered capacity as if it were empty (a DRAINING instance may
/// come back, so it counts as ACTIVE); empty when some instance could.
fn never_fits(instances: &[ContainerInstance], p: &Prepared) -> Result<Vec<(String, String)>, ApiError> {
    let req = [sched_request(p, true)?];
    let empty = |ci: &ContainerInstance| {
        let mut i = Instance::from_model(ci, std::iter::empty::<&Task>());
        i.status = InstanceStatus::Active;
        i
    };
    let mut all = Snapshot::new(instances.iter().map(empty).collect());
    if !all.place(&req, &PlaceOptions::default()).placements.is_empty() {
        return Ok(Vec::new());
    }
    Ok(instances
        .iter()
        .map(|ci| {
            let plan = Snapshot::new(vec![empty(ci)]).place(&req, &PlaceOptions::default());
            (ci.id.clone(), reason_of(&plan))
        })
        .collect())
}

/// A task's demand with its host ports, and each container's bindings.
type Placed = (Resources, Vec<Vec<NetworkBinding>>);

/// One task of `p` placed on `ci` alone by the engine, from what the
/// instance record says is left and the tasks running on it: the task's
/// demand with its host ports (and ENI IP) and each container's bindings,
/// or the ECS reason it does not fit there.
fn place_on(p: &Prepared, ci: &ContainerInstance, tasks: &[Task]) -> Result<Result<Placed, String>, ApiError> {
    let req = sched_request(p, false)?;
    let mut snapshot = Snapshot::new(vec![Instance::from_record(ci, tasks)]);
    let plan = snapshot.place(std::slice::from_ref(&req), &PlaceOptions::default());
    let Some(placement) = plan.placements.first() else {
        return Ok(Err(reason_of(&plan)));
    };
    let bindings = placement.network_bindings(&p.effective);
    let mut demand = p.demand.clone();
    for b in bindings.iter().flatten() {
        demand.ports.insert(b.protocol, b.host_port);
    }
    if p.effective.network_mode == NetworkMode::Awsvpc {
        // One IP on an ENI bound to the task's security groups.
        demand.enis = vec![Eni {
            security_groups: security_groups(p.network_configuration.as_ref()).into_iter().collect(),
            ips: 1,
        }];
    }
    Ok(Ok((demand, bindings)))
}

/// The tasks placed on instance `id` that still hold resources.
async fn tasks_on(api: &Api, cluster: &str, id: &str) -> Result<Vec<Task>, ApiError> {
    let prefix = keys::task_index_prefix(cluster, "RUNNING", "instance", id);
    let index = api.store.range(RangeRequest::prefix(prefix.as_bytes())).await?;
    let mut out = Vec::new();
    for kv in &index.kvs {
        let task_id = String::from_utf8_lossy(&kv.key[prefix.len()..]).to_string();
        if let Some(t) = api.get::<Task>(&keys::task(cluster, &task_id)).await? {
            out.push(t.value);
        }
    }
    Ok(out)
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
        let kvs = api
            .store
            .range(RangeRequest::prefix(keys::instances(&cname)))
            .await?
            .kvs;
        let mut instances = Vec::new();
        for kv in &kvs {
            let ci = decode::<ContainerInstance>(kv)?.value;
            // A draining instance may come back; only deregistered ones are gone.
            if ci.status != InstanceStatus::Inactive {
                instances.push(ci);
            }
        }
        let refusals = never_fits(&instances, p)?;
        if instances.is_empty() || !refusals.is_empty() {
            let mut failures: Vec<Value> = refusals
                .iter()
                .map(|(id, reason)| {
                    failure(
                        &api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}")),
                        reason,
                    )
                })
                .collect();
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
            let running = tasks_on(api, &cname, id).await?;
            let (demand, bindings) = match place_on(p, &ci, &running)? {
                Ok(x) => x,
                Err(reason) => {
                    failures.push(failure(&arn, &reason));
                    continue;
                }
            };
            if let Err(short) = ci.remaining.checked_sub_assign(&demand) {
                // The engine planned from this very record.
                failures.push(failure(&arn, short.kind.ecs_reason()));
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
        let Some(e) = c.expression.as_deref().filter(|_| c.kind == "memberOf") else {
            continue;
        };
        let field = format!("{at}[{i}].expression");
        let ast = berth_sched::parse_expression(e).map_err(|err| ApiError::invalid(&field, err))?;
        if ast.subjects().into_iter().any(Subject::record_only) {
            return Err(ApiError::invalid(
                &field,
                "agentVersion and pendingTasksCount are for ListContainerInstances filters; placement does not know them",
            ));
        }
    }
    Ok(())
}
