//! RegisterContainerInstance, DeregisterContainerInstance,
//! DescribeContainerInstances, ListContainerInstances,
//! UpdateContainerInstancesState.

use std::collections::BTreeMap;

use berth_model::{
    Attribute, ContainerInstance, InstanceStatus, PortSet, Protocol, ResourceType, Resources, Tag, Validate,
    VersionInfo,
};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use berth_records::{Attempt, Stored};

use super::failure;
use crate::api::{Api, check_tags, id_and_cluster, input, max_results, tags_json, to_json};
use crate::error::ApiError;
use crate::keys;

/// The dynamic host-port range handed to tasks (the Linux ephemeral range ECS
/// uses; the same as `berth agent`'s default).
pub(crate) const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireResource {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    integer_value: Option<i64>,
    long_value: Option<i64>,
    double_value: Option<f64>,
    #[serde(default)]
    string_set_value: Vec<String>,
}

fn resources_from_wire(list: &[WireResource]) -> Result<Resources, ApiError> {
    let mut r = Resources::default();
    for (i, w) in list.iter().enumerate() {
        let at = format!("totalResources[{i}]");
        let number = || -> Result<u64, ApiError> {
            let n = w
                .integer_value
                .or(w.long_value)
                .or(w.double_value.map(|d| d as i64))
                .ok_or_else(|| ApiError::invalid(&format!("{at}.integerValue"), "is required for this resource"))?;
            u64::try_from(n).map_err(|_| ApiError::invalid(&format!("{at}.integerValue"), "must not be negative"))
        };
        let ports = |p: Protocol, set: &mut PortSet| -> Result<(), ApiError> {
            for (j, s) in w.string_set_value.iter().enumerate() {
                let port = s.parse::<u16>().map_err(|_| {
                    ApiError::invalid(&format!("{at}.stringSetValue[{j}]"), format!("'{s}' is not a port"))
                })?;
                set.insert(p, port);
            }
            Ok(())
        };
        if let Some(k) = &w.kind
            && !matches!(k.as_str(), "INTEGER" | "LONG" | "DOUBLE" | "STRINGSET")
        {
            return Err(ApiError::invalid(
                &format!("{at}.type"),
                format!("'{k}' is not a resource type"),
            ));
        }
        match w.name.as_str() {
            "CPU" => r.cpu = number()?,
            "MEMORY" => r.memory_mib = number()?,
            "GPU" => r.gpus = number()?,
            "NETWORK" => r.network_mbps = number()?,
            "PORTS" => ports(Protocol::Tcp, &mut r.ports)?,
            "PORTS_UDP" => ports(Protocol::Udp, &mut r.ports)?,
            _ => {}
        }
    }
    Ok(r)
}

/// Resources as ECS lists them; GPU and NETWORK (which registration
/// accepts as integers) only on instances that registered some.
fn resources_wire(r: &Resources, registered: &Resources) -> Value {
    let set = |s: &std::collections::BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>();
    let mut out = vec![
        json!({"name": "CPU", "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": r.cpu}),
        json!({"name": "MEMORY", "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": r.memory_mib}),
        json!({"name": "PORTS", "type": "STRINGSET", "doubleValue": 0.0, "longValue": 0, "integerValue": 0,
         "stringSetValue": set(&r.ports.tcp)}),
        json!({"name": "PORTS_UDP", "type": "STRINGSET", "doubleValue": 0.0, "longValue": 0, "integerValue": 0,
         "stringSetValue": set(&r.ports.udp)}),
    ];
    for (name, n, has) in [
        ("GPU", r.gpus, registered.gpus > 0),
        ("NETWORK", r.network_mbps, registered.network_mbps > 0),
    ] {
        if has {
            out.push(json!({"name": name, "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": n}));
        }
    }
    Value::Array(out)
}

fn status_str(s: InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::Active => "ACTIVE",
        InstanceStatus::Draining => "DRAINING",
        InstanceStatus::Inactive => "INACTIVE",
    }
}

pub(crate) fn attributes_wire(attrs: &BTreeMap<String, String>) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    json!({"name": k})
                } else {
                    json!({"name": k, "value": v})
                }
            })
            .collect(),
    )
}

/// The ECS shape of a container instance.
pub(crate) fn render(api: &Api, ci: &ContainerInstance, version: i64, tags: Option<&[Tag]>) -> Value {
    let mut v = json!({
        "containerInstanceArn": api.arn(ResourceType::ContainerInstance, format!("{}/{}", ci.cluster, ci.id)),
        "ec2InstanceId": ci.ec2_instance_id,
        "version": version,
        "versionInfo": ci.version_info,
        "remainingResources": resources_wire(&ci.remaining, &ci.registered),
        "registeredResources": resources_wire(&ci.registered, &ci.registered),
        "status": status_str(ci.status),
        "agentConnected": ci.agent_connected,
        "runningTasksCount": ci.running_tasks_count,
        "pendingTasksCount": ci.pending_tasks_count,
        "attributes": attributes_wire(&ci.attributes),
        "registeredAt": ci.registered_at,
        "attachments": [],
    });
    if let Some(t) = tags {
        v["tags"] = tags_json(t);
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterInput {
    cluster: Option<String>,
    instance_identity_document: Option<String>,
    #[serde(default)]
    total_resources: Vec<WireResource>,
    version_info: Option<VersionInfo>,
    container_instance_arn: Option<String>,
    #[serde(default)]
    attributes: Vec<Attribute>,
    #[serde(default)]
    tags: Vec<Tag>,
}

pub(crate) async fn register(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: RegisterInput = input(body)?;
    check_tags("tags", &req.tags)?;
    let registered = resources_from_wire(&req.total_resources)?;
    let doc: Value = match &req.instance_identity_document {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::invalid("instanceIdentityDocument", format!("is not a JSON document: {e}")))?,
        None => json!({}),
    };
    let doc_str = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
    let mut attributes = BTreeMap::new();
    attributes.insert("ecs.os-type".to_string(), "linux".to_string());
    if let Some(t) = doc_str("instanceType") {
        attributes.insert("ecs.instance-type".into(), t);
    }
    if let Some(az) = doc_str("availabilityZone") {
        attributes.insert("ecs.availability-zone".into(), az);
    }
    if let Some(a) = doc_str("architecture") {
        attributes.insert("ecs.cpu-architecture".into(), a);
    }
    for (i, a) in req.attributes.iter().enumerate() {
        if a.name.is_empty() || a.name.len() > 128 {
            return Err(ApiError::invalid(
                &format!("attributes[{i}].name"),
                "must be 1 to 128 characters",
            ));
        }
        attributes.insert(a.name.clone(), a.value.clone().unwrap_or_default());
    }
    let (req, attributes, registered, doc_str) = (&req, &attributes, &registered, &doc_str);
    let ((ci, tag_path), rev) = api
        .transact_at("RegisterContainerInstance", || async move {
            let cluster = api.active_cluster(req.cluster.as_deref()).await?;
            let cname = cluster.value.cluster_name.clone();
            let mut existing = None;
            let id = match &req.container_instance_arn {
                Some(arn) => {
                    let (_, id) = id_and_cluster(arn, ResourceType::ContainerInstance, "containerInstanceArn")?;
                    existing = api.get::<ContainerInstance>(&keys::instance(&cname, &id)).await?;
                    if existing.is_none() {
                        return Err(ApiError::invalid(
                            "containerInstanceArn",
                            format!("container instance {arn} is not registered in cluster {cname}"),
                        ));
                    }
                    id
                }
                None => api.new_id(),
            };
            let ec2 = doc_str("instanceId").unwrap_or_else(|| format!("i-{}", &api.new_id()[..17]));
            let ci = match &existing {
                Some(Stored { value: old, .. }) => ContainerInstance {
                    registered: registered.clone(),
                    remaining: old.remaining.clone(),
                    attributes: attributes.clone(),
                    version_info: req.version_info.clone().unwrap_or_else(|| old.version_info.clone()),
                    agent_connected: true,
                    ..old.clone()
                },
                None => ContainerInstance {
                    id: id.clone(),
                    cluster: cname.clone(),
                    ec2_instance_id: ec2,
                    status: InstanceStatus::Active,
                    agent_connected: true,
                    registered: registered.clone(),
                    remaining: registered.clone(),
                    port_range: DEFAULT_PORT_RANGE,
                    attributes: attributes.clone(),
                    version_info: req.version_info.clone().unwrap_or_default(),
                    running_tasks_count: 0,
                    pending_tasks_count: 0,
                    registered_at: api.now(),
                    tags: Vec::new(),
                },
            };
            ci.validate().map_err(|e| {
                if e.field == "remainingResources" {
                    ApiError::invalid("totalResources", "smaller than what the instance's tasks already use")
                } else {
                    e.into()
                }
            })?;
            let key = keys::instance(&cname, &id);
            let tag_path = format!("container-instance/{cname}/{id}");
            let mut txn = TxnRequest::new()
                .when(Compare::mod_revision(
                    keys::cluster(&cname),
                    CmpOp::Equal,
                    cluster.mod_revision,
                ))
                .when(Compare::mod_revision(
                    &key,
                    CmpOp::Equal,
                    existing.as_ref().map_or(0, |e| e.mod_revision),
                ))
                .then(Op::put(&key, to_json(&ci)?));
            if !req.tags.is_empty() {
                txn = txn.then(Op::put(keys::tags(&tag_path), to_json(&req.tags)?));
            }
            Ok(Attempt::Commit(txn, (ci, tag_path)))
        })
        .await?;
    let (tags, _) = api.tags(&tag_path).await?;
    Ok(json!({"containerInstance": render(api, &ci, rev.unwrap_or_default(), Some(&tags))}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeregisterInput {
    cluster: Option<String>,
    container_instance: String,
    #[serde(default)]
    force: bool,
}

pub(crate) async fn deregister(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DeregisterInput = input(body)?;
    let (_, id) = id_and_cluster(
        &req.container_instance,
        ResourceType::ContainerInstance,
        "containerInstance",
    )?;
    let (req, id) = (&req, &id);
    let ((ci, tags), rev) = api
        .transact_at("DeregisterContainerInstance", || async move {
            let cluster = api.active_cluster(req.cluster.as_deref()).await?;
            let cname = &cluster.value.cluster_name;
            let key = keys::instance(cname, id);
            let Some(Stored {
                value: mut ci,
                mod_revision,
                ..
            }) = api.get::<ContainerInstance>(&key).await?
            else {
                return Err(ApiError::invalid(
                    "containerInstance",
                    format!(
                        "container instance {} not found in cluster {cname}",
                        req.container_instance
                    ),
                ));
            };
            let busy = api
                .store
                .range(RangeRequest::prefix(keys::task_index_prefix(cname, "RUNNING", "instance", id)).count_only())
                .await?
                .count;
            if busy > 0 && !req.force {
                return Err(ApiError::invalid(
                    "containerInstance",
                    format!("the container instance has {busy} tasks; stop them or pass force"),
                ));
            }
            let tag_path = format!("container-instance/{cname}/{id}");
            let (tags, _) = api.tags(&tag_path).await?;
            let mut txn = TxnRequest::new()
                .when(Compare::mod_revision(&key, CmpOp::Equal, mod_revision))
                .then(Op::delete(&key))
                .then(Op::delete(keys::tags(&tag_path)));
            if busy > 0 {
                // Forced: its tasks are stopped (the agent, if still connected,
                // is told to stop them; services replace them elsewhere).
                txn = stop_tasks_on(api, txn, cname, id).await?;
            }
            ci.status = InstanceStatus::Inactive;
            ci.agent_connected = false;
            Ok(Attempt::Commit(txn, (ci, tags)))
        })
        .await?;
    Ok(json!({"containerInstance": render(api, &ci, rev.unwrap_or_default(), Some(&tags))}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInput {
    cluster: Option<String>,
    container_instances: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub(crate) async fn describe(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DescribeInput = input(body)?;
    if req.container_instances.len() > 100 {
        return Err(ApiError::invalid("containerInstances", "at most 100 per call"));
    }
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = &cluster.value.cluster_name;
    let with_tags = req.include.iter().any(|i| i == "TAGS");
    let (mut out, mut failures) = (Vec::new(), Vec::new());
    for (i, s) in req.container_instances.iter().enumerate() {
        let (_, id) = id_and_cluster(s, ResourceType::ContainerInstance, &format!("containerInstances[{i}]"))?;
        match api.store.get(keys::instance(cname, &id).as_bytes()).await? {
            Some(kv) => {
                let ci = crate::api::decode::<ContainerInstance>(&kv)?.value;
                let tags = if with_tags {
                    Some(api.tags(&format!("container-instance/{cname}/{id}")).await?.0)
                } else {
                    None
                };
                out.push(render(api, &ci, kv.version, tags.as_deref()));
            }
            None => failures.push(failure(
                &api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}")),
                "MISSING",
            )),
        }
    }
    Ok(json!({"containerInstances": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    cluster: Option<String>,
    filter: Option<String>,
    status: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 100, 100)?;
    let query = match &req.filter {
        Some(f) => Some(berth_sched::parse_expression(f).map_err(|e| ApiError::invalid("filter", e))?),
        None => None,
    };
    let status = match req.status.as_deref() {
        None => None,
        Some("ACTIVE") => Some(InstanceStatus::Active),
        Some("DRAINING") => Some(InstanceStatus::Draining),
        Some("REGISTERING" | "DEREGISTERING" | "REGISTRATION_FAILED") => Some(InstanceStatus::Inactive),
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("'{other}' is not one of ACTIVE, DRAINING, REGISTERING, DEREGISTERING, REGISTRATION_FAILED"),
            ));
        }
    };
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = cluster.value.cluster_name.clone();
    let prefix = keys::instances(&cname);
    let page = api
        .page(&prefix, req.next_token.as_deref(), max, |kv| {
            let Ok(ci) = serde_json::from_slice::<ContainerInstance>(&kv.value) else {
                return false;
            };
            // `task:group` filters would need the instance's tasks: none match.
            status.is_none_or(|s| ci.status == s) && query.as_ref().is_none_or(|q| q.matches_instance(&ci, &[]))
        })
        .await?;
    let arns: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| {
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]);
            api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}"))
        })
        .collect();
    Ok(json!({"containerInstanceArns": arns, "nextToken": page.next_token}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateStateInput {
    cluster: Option<String>,
    container_instances: Vec<String>,
    status: String,
}

pub(crate) async fn update_state(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: UpdateStateInput = input(body)?;
    let status = match req.status.as_str() {
        "ACTIVE" => InstanceStatus::Active,
        "DRAINING" => InstanceStatus::Draining,
        other => {
            return Err(ApiError::invalid(
                "status",
                format!("'{other}' is not ACTIVE or DRAINING"),
            ));
        }
    };
    if req.container_instances.len() > 10 {
        return Err(ApiError::invalid("containerInstances", "at most 10 per call"));
    }
    let mut ids = Vec::new();
    for (i, s) in req.container_instances.iter().enumerate() {
        let id = id_and_cluster(s, ResourceType::ContainerInstance, &format!("containerInstances[{i}]"))?.1;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let (req, ids) = (&req, &ids);
    let ((updated, failures), rev) = api
        .transact_at("UpdateContainerInstancesState", || async move {
            let cluster = api.active_cluster(req.cluster.as_deref()).await?;
            let cname = cluster.value.cluster_name.clone();
            let mut txn = TxnRequest::new();
            let (mut updated, mut failures) = (Vec::new(), Vec::new());
            for id in ids {
                let key = keys::instance(&cname, id);
                match api.get::<ContainerInstance>(&key).await? {
                    Some(Stored {
                        value: mut ci,
                        mod_revision,
                        ..
                    }) => {
                        txn = txn.when(Compare::mod_revision(&key, CmpOp::Equal, mod_revision));
                        if ci.status != status {
                            ci.status = status;
                            txn = txn.then(Op::put(&key, to_json(&ci)?));
                        }
                        updated.push(ci);
                    }
                    None => failures.push(failure(
                        &api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}")),
                        "MISSING",
                    )),
                }
            }
            Ok(Attempt::Commit(txn, (updated, failures)))
        })
        .await?;
    let rev = rev.unwrap_or_default();
    let out: Vec<Value> = updated.iter().map(|ci| render(api, ci, rev, None)).collect();
    Ok(json!({"containerInstances": out, "failures": failures}))
}

/// Adds to `txn` the stop of every task placed on instance `id`, with
/// compares on each task record.
async fn stop_tasks_on(api: &Api, mut txn: TxnRequest, cluster: &str, id: &str) -> Result<TxnRequest, ApiError> {
    let prefix = keys::task_index_prefix(cluster, "RUNNING", "instance", id);
    let listed = api.store.range(RangeRequest::prefix(prefix.as_bytes())).await?;
    for kv in listed.kvs {
        let Some(task_id) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.rsplit('/').next()) else {
            continue;
        };
        let tkey = keys::task(cluster, task_id);
        let Some(Stored {
            value: old,
            raw,
            mod_revision,
        }) = api.get::<berth_model::Task>(&tkey).await?
        else {
            continue;
        };
        let mut t = old.clone();
        super::tasks::stop_record(
            &mut t,
            Some("Container instance deregistered".into()),
            "UserInitiated",
            api.now(),
        );
        let stored = Stored {
            value: old,
            raw,
            mod_revision,
        };
        let write = berth_records::replace(&tkey, &stored, &t)?;
        txn.compares.extend(write.compares);
        txn.success.extend(write.success);
    }
    Ok(txn)
}
