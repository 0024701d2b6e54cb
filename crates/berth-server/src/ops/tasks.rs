//! DescribeTasks, ListTasks, StopTask, and the ECS shape of a task.

use berth_model::{HealthStatus, NetworkBinding};
use berth_model::{ResourceType, Tag, Task, TaskStatus};
use berth_store::{Op, RangeRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use berth_model::Timestamp;
use berth_records::{Change, Stored};

use super::{Reply, failure};
use crate::api::{Api, cluster_name, id_and_cluster, input, max_results};
use crate::error::ApiError;
use crate::keys;

/// The ECS wire shape of a container, borrowing from the record.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer<'a> {
    container_arn: String,
    task_arn: String,
    name: &'a str,
    image: &'a str,
    last_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_id: Option<&'a str>,
    network_bindings: &'a [NetworkBinding],
    network_interfaces: [(); 0],
    health_status: HealthStatus,
}

/// The ECS wire shape of a task, borrowing from the record (serialized
/// straight to bytes on the DescribeTasks path).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireTask<'a> {
    task_arn: String,
    cluster_arn: String,
    task_definition_arn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_instance_arn: Option<String>,
    overrides: &'a Value,
    last_status: &'static str,
    desired_status: &'static str,
    cpu: String,
    memory: String,
    containers: Vec<WireContainer<'a>>,
    version: u64,
    created_at: f64,
    launch_type: &'a str,
    attachments: [(); 0],
    health_status: HealthStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopping_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_reason: Option<&'a str>,
    /// Berth extension: why the launcher has not placed the task yet.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pending_reasons: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a [Tag]>,
}

/// The members of a task record beyond the model that responses show.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskExtras {
    #[serde(default)]
    overrides: Option<Value>,
    #[serde(default)]
    launch_type: Option<String>,
}

impl TaskExtras {
    pub(crate) fn from_raw(raw: &Map<String, Value>) -> Self {
        TaskExtras {
            overrides: raw.get("overrides").cloned(),
            launch_type: raw.get("launchType").and_then(Value::as_str).map(str::to_string),
        }
    }
}

static NO_OVERRIDES: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| json!({"containerOverrides": []}));

pub(crate) fn wire<'a>(api: &Api, t: &'a Task, ex: &'a TaskExtras, tags: Option<&'a [Tag]>) -> WireTask<'a> {
    let task_arn = api.arn(ResourceType::Task, format!("{}/{}", t.cluster, t.id));
    let containers = t
        .containers
        .iter()
        .map(|c| WireContainer {
            container_arn: api.arn(ResourceType::Container, format!("{}/{}/{}", t.cluster, t.id, c.name)),
            task_arn: task_arn.clone(),
            name: &c.name,
            image: &c.image,
            last_status: c.last_status.as_str(),
            exit_code: c.exit_code,
            reason: c.reason.as_deref(),
            runtime_id: c.runtime_id.as_deref(),
            network_bindings: &c.network_bindings,
            network_interfaces: [],
            health_status: c.health_status,
        })
        .collect();
    WireTask {
        cluster_arn: api.cluster_arn(&t.cluster),
        task_definition_arn: &t.task_definition_arn,
        container_instance_arn: t
            .container_instance
            .as_ref()
            .map(|i| api.arn(ResourceType::ContainerInstance, format!("{}/{i}", t.cluster))),
        overrides: ex.overrides.as_ref().unwrap_or(&NO_OVERRIDES),
        last_status: t.last_status.as_str(),
        desired_status: t.desired_status.as_str(),
        cpu: t.demand.cpu.to_string(),
        memory: t.demand.memory_mib.to_string(),
        containers,
        version: t.version,
        created_at: t.created_at,
        launch_type: ex.launch_type.as_deref().unwrap_or("EC2"),
        attachments: [],
        health_status: t.health_status,
        started_by: t.started_by.as_deref(),
        group: t.group.as_deref(),
        started_at: t.started_at,
        stopping_at: t.stopping_at,
        stopped_at: t.stopped_at,
        stop_code: t.stop_code.as_deref(),
        stopped_reason: t.stopped_reason.as_deref(),
        pending_reasons: &t.pending_reasons,
        tags,
        task_arn,
    }
}

/// The ECS shape of a task, as a JSON value.
pub(crate) fn render(api: &Api, t: &Task, raw: &Map<String, Value>, tags: Option<&[Tag]>) -> Value {
    let mut ex = TaskExtras::from_raw(raw);
    if ex.overrides.is_none() {
        ex.overrides = t.overrides.as_ref().and_then(|o| serde_json::to_value(o).ok());
    }
    serde_json::to_value(wire(api, t, &ex, tags)).unwrap_or(Value::Null)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInput {
    cluster: Option<String>,
    tasks: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub(crate) async fn describe(api: &Api, body: &Value) -> Result<Reply, ApiError> {
    let req: DescribeInput = input(body)?;
    if req.tasks.len() > 100 {
        return Err(ApiError::invalid("tasks", "at most 100 tasks per call"));
    }
    let cluster = cluster_name(req.cluster.as_deref())?;
    if api.store.get(keys::cluster(&cluster).as_bytes()).await?.is_none() {
        return Err(ApiError::ClusterNotFound);
    }
    let with_tags = req.include.iter().any(|i| i == "TAGS");
    let mut found: Vec<(Task, TaskExtras, Option<Vec<Tag>>)> = Vec::with_capacity(req.tasks.len());
    let mut failures = Vec::new();
    for (i, s) in req.tasks.iter().enumerate() {
        let (c, id) = id_and_cluster(s, ResourceType::Task, &format!("tasks[{i}]"))?;
        let c = c.unwrap_or_else(|| cluster.clone());
        match api.store.get(keys::task(&c, &id).as_bytes()).await? {
            Some(kv) => {
                let bad = |e: serde_json::Error| ApiError::Server(format!("task record {c}/{id} is not valid: {e}"));
                let t: Task = serde_json::from_slice(&kv.value).map_err(bad)?;
                let ex: TaskExtras = serde_json::from_slice(&kv.value).map_err(bad)?;
                let tags = if with_tags {
                    Some(api.tags(&format!("task/{c}/{id}")).await?.0)
                } else {
                    None
                };
                found.push((t, ex, tags));
            }
            None => failures.push(failure(&api.arn(ResourceType::Task, format!("{c}/{id}")), "MISSING")),
        }
    }
    let tasks: Vec<WireTask<'_>> = found
        .iter()
        .map(|(t, ex, tags)| wire(api, t, ex, tags.as_deref()))
        .collect();
    let out = serde_json::to_vec(&json!({"failures": failures}))
        .and_then(|tail| {
            // {"tasks":[...],"failures":[...]} without building a Value per task.
            let mut out = Vec::with_capacity(600 * tasks.len() + tail.len() + 16);
            out.extend_from_slice(b"{\"tasks\":");
            serde_json::to_writer(&mut out, &tasks)?;
            out.push(b',');
            out.extend_from_slice(&tail[1..]);
            Ok(out)
        })
        .map_err(|e| ApiError::Server(format!("encoding the response: {e}")))?;
    Ok(Reply::Bytes(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    cluster: Option<String>,
    container_instance: Option<String>,
    family: Option<String>,
    started_by: Option<String>,
    service_name: Option<String>,
    desired_status: Option<String>,
    launch_type: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 100, 100)?;
    let desired = match req.desired_status.as_deref() {
        None | Some("RUNNING") => "RUNNING",
        Some("STOPPED") => "STOPPED",
        Some("PENDING") => "PENDING",
        Some(other) => {
            return Err(ApiError::invalid(
                "desiredStatus",
                format!("'{other}' is not RUNNING, PENDING or STOPPED"),
            ));
        }
    };
    if let Some(lt) = req.launch_type.as_deref()
        && !matches!(lt, "EC2" | "FARGATE" | "EXTERNAL")
    {
        return Err(ApiError::invalid(
            "launchType",
            format!("'{lt}' is not EC2, FARGATE or EXTERNAL"),
        ));
    }
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = cluster.value.cluster_name;
    if req.service_name.is_some() && req.family.is_some() {
        return Err(ApiError::invalid("family", "cannot be combined with serviceName"));
    }
    let instance = match &req.container_instance {
        Some(s) => Some(id_and_cluster(s, ResourceType::ContainerInstance, "containerInstance")?.1),
        None => None,
    };
    let service = match &req.service_name {
        Some(s) => Some(format!(
            "service:{}",
            berth_model::short_name(s, ResourceType::Service, "serviceName")?
        )),
        None => None,
    };
    // The most selective filter picks the index; the rest are checked on the record.
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(i) = instance {
        filters.push(("instance", i));
    }
    if let Some(g) = service {
        filters.push(("group", g));
    }
    if let Some(f) = &req.family {
        filters.push(("family", f.clone()));
    }
    if let Some(s) = &req.started_by {
        filters.push(("started-by", s.clone()));
    }
    if desired == "PENDING" || req.launch_type.as_deref().is_some_and(|l| l != "EC2") {
        return Ok(json!({"taskArns": [], "nextToken": null}));
    }
    let (kind, value) = filters.first().cloned().unwrap_or(("all", String::new()));
    let prefix = keys::task_index_prefix(&cname, desired, kind, &value);
    let rest: Vec<(&str, String)> = filters.iter().skip(1).cloned().collect();
    let (ids, next_token) = if rest.is_empty() {
        let page = api.page(&prefix, req.next_token.as_deref(), max, |_| true).await?;
        let ids: Vec<String> = page
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).to_string())
            .collect();
        (ids, page.next_token)
    } else {
        filtered_page(api, &cname, &prefix, req.next_token.as_deref(), max, &rest).await?
    };
    let arns: Vec<String> = ids
        .iter()
        .map(|id| api.arn(ResourceType::Task, format!("{cname}/{id}")))
        .collect();
    Ok(json!({"taskArns": arns, "nextToken": next_token}))
}

fn task_matches(t: &Task, filters: &[(&str, String)]) -> bool {
    filters.iter().all(|(kind, v)| match *kind {
        "instance" => t.container_instance.as_deref() == Some(v.as_str()),
        "group" => t.group.as_deref() == Some(v.as_str()),
        "family" => keys::family_of(&t.task_definition_arn) == v,
        "started-by" => t.started_by.as_deref() == Some(v.as_str()),
        _ => true,
    })
}

/// Walks an index, reading each task to check the filters the index does not cover.
async fn filtered_page(
    api: &Api,
    cluster: &str,
    prefix: &str,
    token: Option<&str>,
    max: usize,
    filters: &[(&str, String)],
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let mut after = match token {
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .filter(|k| k.starts_with(prefix.as_bytes()))
                .ok_or_else(|| ApiError::invalid("nextToken", "is not a token this call returned"))?,
        ),
        None => None,
    };
    let mut ids = Vec::new();
    loop {
        let mut r = RangeRequest::prefix(prefix).limit(100);
        if let Some(a) = &after {
            r = r.after(a);
        }
        let resp = api.store.range(r).await?;
        let n = resp.kvs.len();
        for (i, kv) in resp.kvs.iter().enumerate() {
            after = Some(kv.key.to_vec());
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).to_string();
            if let Some(t) = api.get::<Task>(&keys::task(cluster, &id)).await?
                && task_matches(&t.value, filters)
            {
                ids.push(id);
                if ids.len() == max {
                    let next = (resp.more || i + 1 < n).then(|| hex::encode(&kv.key));
                    return Ok((ids, next));
                }
            }
        }
        if !resp.more || n == 0 {
            return Ok((ids, None));
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopInput {
    cluster: Option<String>,
    task: String,
    reason: Option<String>,
}

/// Marks `t` as wanted STOPPED; a task that was never placed stops at once.
pub(crate) fn stop_record(t: &mut Task, reason: Option<String>, code: &str, at: Timestamp) {
    t.desired_status = TaskStatus::Stopped;
    t.stopping_at.get_or_insert(at);
    t.stop_code.get_or_insert_with(|| code.to_string());
    if let Some(r) = reason {
        t.stopped_reason.get_or_insert(r);
    }
    if t.container_instance.is_none() {
        t.last_status = TaskStatus::Stopped;
        t.stopped_at.get_or_insert(at);
        for c in &mut t.containers {
            c.last_status = TaskStatus::Stopped;
        }
    }
    t.version += 1;
}

pub(crate) async fn stop(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: StopInput = input(body)?;
    if req.reason.as_ref().is_some_and(|r| r.len() > 255) {
        return Err(ApiError::invalid("reason", "must be at most 255 characters"));
    }
    let (from_arn, id) = id_and_cluster(&req.task, ResourceType::Task, "task")?;
    let cluster_input = from_arn.or(req.cluster.clone());
    let cname = api.active_cluster(cluster_input.as_deref()).await?.value.cluster_name;
    let key = keys::task(&cname, &id);
    let pending = keys::pending(&cname, &id);
    let at = api.now();
    let after = api
        .update(&key, |cur: Option<&Stored<Task>>| {
            let Some(cur) = cur else {
                return Err(ApiError::invalid("task", "The referenced task was not found."));
            };
            if cur.value.desired_status == TaskStatus::Stopped {
                return Ok(Change::keep());
            }
            let mut t = cur.value.clone();
            let reason = req.reason.clone().unwrap_or_else(|| "Task stopped by user".into());
            stop_record(&mut t, Some(reason), "UserInitiated", at);
            let unplaced = t.last_status == TaskStatus::Stopped;
            let change = Change::put(t);
            Ok(if unplaced {
                change.then(Op::delete(&pending))
            } else {
                change
            })
        })
        .await?
        .ok_or_else(|| ApiError::invalid("task", "The referenced task was not found."))?;
    Ok(json!({"task": render(api, &after.value, &after.raw, None)}))
}
