//! CreateService, UpdateService, DescribeServices, ListServices,
//! DeleteService. Services are stored and validated here; the reconciler
//! that runs their tasks (group `service:NAME`) is its own component.

use berth_model::{
    Deployment, DeploymentConfiguration, DeploymentStatus, LoadBalancer, PlacementConstraint, PlacementStrategy,
    ResourceType, RolloutState, Service, ServiceStatus, Tag, Validate, short_name,
};
use berth_store::{CmpOp, Compare, Op, TxnRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use berth_records::{Attempt, encode};

use super::{failure, taskdefs};
use crate::api::{Api, check_tags, input, max_results, tags_json, to_json};
use crate::error::ApiError;
use crate::keys;
use crate::keys::SERVICE_TIER as TIER_MEMBER;

/// Request members kept on the record beside the model's.
const SERVICE_EXTRAS: &[&str] = &[
    "launchType",
    "schedulingStrategy",
    "networkConfiguration",
    "role",
    "enableECSManagedTags",
    "propagateTags",
    "serviceRegistries",
    "deploymentController",
    "enableExecuteCommand",
    "platformVersion",
    "capacityProviderStrategy",
];

fn extras_of(body: &Value) -> Map<String, Value> {
    SERVICE_EXTRAS
        .iter()
        .filter_map(|k| body.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

fn deployment_id() -> String {
    let n: u64 = rand::random::<u64>() % 10_000_000_000_000_000_000;
    format!("ecs-svc/{n:019}")
}

fn deployment(api: &Api, task_definition: &str, desired: u32) -> Deployment {
    let at = api.now();
    Deployment {
        id: deployment_id(),
        status: DeploymentStatus::Primary,
        task_definition: task_definition.to_string(),
        desired_count: desired,
        pending_count: 0,
        running_count: 0,
        failed_tasks: 0,
        rollout_state: if desired == 0 {
            RolloutState::Completed
        } else {
            RolloutState::InProgress
        },
        rollout_state_reason: if desired == 0 {
            "ECS deployment completed.".into()
        } else {
            "ECS deployment in progress.".into()
        },
        created_at: at,
        updated_at: at,
    }
}

fn render(api: &Api, raw: &Map<String, Value>, svc: &Service, tags: Option<&[Tag]>) -> Value {
    let mut v = Value::Object(raw.clone());
    let cluster = svc.cluster_arn.rsplit('/').next().unwrap_or_default().to_string();
    v["serviceArn"] = json!(api.arn(ResourceType::Service, format!("{cluster}/{}", svc.service_name)));
    v["clusterArn"] = json!(api.cluster_arn(&cluster));
    for (k, d) in [
        ("launchType", json!("EC2")),
        ("schedulingStrategy", json!("REPLICA")),
        ("deploymentController", json!({"type": "ECS"})),
    ] {
        if v.get(k).is_none() {
            v[k] = d;
        }
    }
    if let Some(t) = tags {
        v["tags"] = tags_json(t);
    }
    v
}

/// Berth extension: each `loadBalancers[i]` with a target group also lists
/// the service's targets in it and their health (`targetHealth`), as
/// DescribeTargetHealth reports them.
async fn add_target_health(api: &Api, v: &mut Value, svc: &Service) -> Result<(), ApiError> {
    let Some(entries) = v.get_mut("loadBalancers").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let cluster = svc.cluster_arn.rsplit('/').next().unwrap_or_default();
    for (entry, lb) in entries.iter_mut().zip(&svc.load_balancers) {
        let Some(arn) = &lb.target_group_arn else { continue };
        let group = crate::elb::target_group_name(arn);
        let mine: Vec<Value> = crate::elb::targets_with_health(api, group)
            .await?
            .into_iter()
            .filter(|t| t["service"] == svc.service_name.as_str() && t["cluster"] == cluster)
            .collect();
        if let Some(o) = entry.as_object_mut() {
            o.insert("targetHealth".into(), Value::Array(mine));
        }
    }
    Ok(())
}

/// Checks a service's `loadBalancers` against the task definition and the
/// stored target groups, and stores each group's ARN (given by ARN or name).
async fn check_load_balancers(
    api: &Api,
    lbs: &mut [LoadBalancer],
    td: &berth_model::TaskDefinition,
) -> Result<(), ApiError> {
    for (i, lb) in lbs.iter_mut().enumerate() {
        let Some(c) = td.container_definitions.iter().find(|c| c.name == lb.container_name) else {
            return Err(ApiError::invalid(
                &format!("loadBalancers[{i}].containerName"),
                format!("no container '{}' in {}", lb.container_name, td.family_revision()),
            ));
        };
        if !c.port_mappings.iter().any(|p| p.container_port == lb.container_port) {
            return Err(ApiError::invalid(
                &format!("loadBalancers[{i}].containerPort"),
                format!(
                    "container '{}' of {} has no port mapping for port {}",
                    lb.container_name,
                    td.family_revision(),
                    lb.container_port
                ),
            ));
        }
        match (&lb.target_group_arn, &lb.load_balancer_name) {
            (Some(tg), _) => {
                let name = crate::elb::target_group_name(tg);
                let Some(g) = api.get::<berth_model::TargetGroup>(&keys::targetgroup(name)).await? else {
                    return Err(ApiError::invalid(
                        &format!("loadBalancers[{i}].targetGroupArn"),
                        format!(
                            "target group '{name}' not found (create it with CreateTargetGroup / `berth targetgroup create`)"
                        ),
                    ));
                };
                lb.target_group_arn = Some(g.value.target_group_arn);
            }
            (None, _) => {
                return Err(ApiError::invalid(
                    &format!("loadBalancers[{i}].targetGroupArn"),
                    "is required (classic load balancers are not supported)",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    cluster: Option<String>,
    service_name: String,
    task_definition: Option<String>,
    desired_count: Option<i64>,
    #[serde(default)]
    load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    placement_strategy: Vec<PlacementStrategy>,
    deployment_configuration: Option<DeploymentConfiguration>,
    health_check_grace_period_seconds: Option<i64>,
    scheduling_strategy: Option<String>,
    launch_type: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

fn check_count(field: &str, n: i64) -> Result<u32, ApiError> {
    crate::api::check_range(field, n, 0, 100_000)?;
    Ok(n as u32)
}

pub(crate) async fn create(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: CreateInput = input(body)?;
    check_tags("tags", &req.tags)?;
    let tier = berth_model::tier_from_tags("tags", &req.tags)?;
    let daemon = match req.scheduling_strategy.as_deref() {
        None | Some("REPLICA") => false,
        Some("DAEMON") => true,
        Some(o) => {
            return Err(ApiError::invalid(
                "schedulingStrategy",
                format!("'{o}' is not REPLICA or DAEMON"),
            ));
        }
    };
    if req.launch_type.as_deref() == Some("FARGATE") {
        return Err(ApiError::UnsupportedFeature(
            "launchType FARGATE is not available; services run on registered container instances".into(),
        ));
    }
    let desired = match req.desired_count {
        Some(n) => check_count("desiredCount", n)?,
        None if daemon => 0,
        None => {
            return Err(ApiError::invalid(
                "desiredCount",
                "is required for the REPLICA scheduling strategy",
            ));
        }
    };
    let td_ref = req
        .task_definition
        .as_deref()
        .ok_or_else(|| ApiError::InvalidParameter("missing required member `taskDefinition`".into()))?;
    let td = taskdefs::resolve(api, td_ref, "taskDefinition")
        .await?
        .ok_or_else(|| ApiError::invalid("taskDefinition", "TaskDefinition not found."))?;
    let td_arn = api.arn(ResourceType::TaskDefinition, td.value.family_revision());
    let grace = match req.health_check_grace_period_seconds {
        Some(g) => {
            crate::api::check_range("healthCheckGracePeriodSeconds", g, 0, 2_147_483_647)?;
            Some(g as u32)
        }
        None => None,
    };
    let mut load_balancers = req.load_balancers.clone();
    check_load_balancers(api, &mut load_balancers, &td.value).await?;
    let mut extras = extras_of(body);
    if let Some(t) = tier {
        // The reconciler gives the service's tasks this tier.
        extras.insert(TIER_MEMBER.into(), json!(t));
    }
    let (req, extras, td_arn, load_balancers) = (&req, &extras, &td_arn, &load_balancers);
    api.transact("CreateService", || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let key = keys::service(&cname, &req.service_name);
        let existing = api.get::<Service>(&key).await?;
        if existing
            .as_ref()
            .is_some_and(|s| s.value.status != ServiceStatus::Inactive)
        {
            return Err(ApiError::invalid(
                "serviceName",
                "Creation of service was not idempotent.",
            ));
        }
        let svc = Service {
            service_name: req.service_name.clone(),
            service_arn: api.arn(ResourceType::Service, format!("{cname}/{}", req.service_name)),
            cluster_arn: api.cluster_arn(&cname),
            status: ServiceStatus::Active,
            task_definition: td_arn.clone(),
            desired_count: desired,
            running_count: 0,
            pending_count: 0,
            deployment_configuration: req.deployment_configuration.unwrap_or_default(),
            deployments: vec![deployment(api, td_arn, desired)],
            placement_strategy: req.placement_strategy.clone(),
            placement_constraints: req.placement_constraints.clone(),
            load_balancers: load_balancers.clone(),
            health_check_grace_period_seconds: grace,
            events: Vec::new(),
            created_at: api.now(),
        };
        svc.validate()?;
        super::run_task::check_expressions(&svc.placement_constraints, "placementConstraints")?;
        let tag_key = keys::tags(&format!("service/{cname}/{}", req.service_name));
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(
                keys::cluster(&cname),
                CmpOp::Equal,
                cluster.mod_revision,
            ))
            .when(Compare::mod_revision(
                &key,
                CmpOp::Equal,
                existing.as_ref().map_or(0, |s| s.mod_revision),
            ))
            .then(Op::put(&key, encode(&svc, extras)?))
            .then(Op::put(keys::service_index(&cname, &req.service_name), b""));
        txn = if req.tags.is_empty() {
            txn.then(Op::delete(&tag_key))
        } else {
            txn.then(Op::put(&tag_key, to_json(&req.tags)?))
        };
        let raw = match serde_json::to_value(&svc) {
            Ok(Value::Object(mut m)) => {
                m.extend(extras.clone());
                m
            }
            _ => Map::new(),
        };
        Ok(Attempt::Commit(
            txn,
            json!({"service": render(api, &raw, &svc, Some(&req.tags))}),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    cluster: Option<String>,
    service: String,
    desired_count: Option<i64>,
    task_definition: Option<String>,
    deployment_configuration: Option<DeploymentConfiguration>,
    placement_constraints: Option<Vec<PlacementConstraint>>,
    placement_strategy: Option<Vec<PlacementStrategy>>,
    load_balancers: Option<Vec<LoadBalancer>>,
    health_check_grace_period_seconds: Option<i64>,
    #[serde(default)]
    force_new_deployment: bool,
}

pub(crate) async fn update(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: UpdateInput = input(body)?;
    let name = short_name(&req.service, ResourceType::Service, "service")?;
    let desired = req.desired_count.map(|n| check_count("desiredCount", n)).transpose()?;
    let new_td = match &req.task_definition {
        Some(r) => Some(
            taskdefs::resolve(api, r, "taskDefinition")
                .await?
                .ok_or_else(|| ApiError::invalid("taskDefinition", "TaskDefinition not found."))?,
        ),
        None => None,
    };
    let td_arn = new_td
        .as_ref()
        .map(|td| api.arn(ResourceType::TaskDefinition, td.value.family_revision()));
    let extras = extras_of(body);
    let (req, extras, td_arn, new_td, name) = (&req, &extras, &td_arn, &new_td, &name);
    api.transact("UpdateService", || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let key = keys::service(&cname, name);
        let Some(stored) = api.get::<Service>(&key).await? else {
            return Err(ApiError::ServiceNotFound);
        };
        let mut svc = stored.value.clone();
        if svc.status != ServiceStatus::Active {
            return Err(ApiError::ServiceNotActive);
        }
        if let Some(d) = desired {
            svc.desired_count = d;
        }
        if let Some(dc) = req.deployment_configuration {
            svc.deployment_configuration = dc;
        }
        if let Some(pc) = &req.placement_constraints {
            svc.placement_constraints.clone_from(pc);
        }
        if let Some(ps) = &req.placement_strategy {
            svc.placement_strategy.clone_from(ps);
        }
        if let Some(lb) = &req.load_balancers {
            svc.load_balancers.clone_from(lb);
        }
        if req.load_balancers.is_some() || new_td.is_some() {
            let td = match &new_td {
                Some(td) => td.value.clone(),
                None => {
                    taskdefs::resolve(api, &svc.task_definition, "taskDefinition")
                        .await?
                        .ok_or_else(|| ApiError::invalid("taskDefinition", "TaskDefinition not found."))?
                        .value
                }
            };
            check_load_balancers(api, &mut svc.load_balancers, &td).await?;
        }
        if let Some(g) = req.health_check_grace_period_seconds {
            crate::api::check_range("healthCheckGracePeriodSeconds", g, 0, 2_147_483_647)?;
            svc.health_check_grace_period_seconds = Some(g as u32);
        }
        let new_td = td_arn.clone().filter(|a| *a != svc.task_definition);
        if new_td.is_some() || req.force_new_deployment {
            let arn = new_td.unwrap_or_else(|| svc.task_definition.clone());
            let d = deployment(api, &arn, svc.desired_count);
            svc.begin_deployment(d);
        } else {
            let desired = svc.desired_count;
            if let Some(primary) = svc.primary_mut() {
                primary.desired_count = desired;
                primary.updated_at = api.now();
            }
        }
        svc.validate()?;
        super::run_task::check_expressions(&svc.placement_constraints, "placementConstraints")?;
        let mut raw_extras = stored.raw.clone();
        raw_extras.extend(extras.clone());
        let keep: Map<String, Value> = raw_extras
            .into_iter()
            .filter(|(k, _)| SERVICE_EXTRAS.contains(&k.as_str()) || k == TIER_MEMBER)
            .collect();
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(&key, CmpOp::Equal, stored.mod_revision))
            .then(Op::put(&key, encode(&svc, &keep)?));
        let mut raw = match serde_json::to_value(&svc) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        raw.extend(keep);
        Ok(Attempt::Commit(txn, json!({"service": render(api, &raw, &svc, None)})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInput {
    cluster: Option<String>,
    services: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub(crate) async fn describe(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DescribeInput = input(body)?;
    if req.services.len() > 10 {
        return Err(ApiError::invalid("services", "at most 10 services per call"));
    }
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = cluster.value.cluster_name;
    let with_tags = req.include.iter().any(|i| i == "TAGS");
    let (mut out, mut failures) = (Vec::new(), Vec::new());
    for (i, s) in req.services.iter().enumerate() {
        let name = short_name(s, ResourceType::Service, &format!("services[{i}]"))?;
        match api.get::<Service>(&keys::service(&cname, &name)).await? {
            Some(st) => {
                let tags = if with_tags {
                    Some(api.tags(&format!("service/{cname}/{name}")).await?.0)
                } else {
                    None
                };
                let mut v = render(api, &st.raw, &st.value, tags.as_deref());
                add_target_health(api, &mut v, &st.value).await?;
                out.push(v);
            }
            None => failures.push(failure(
                &api.arn(ResourceType::Service, format!("{cname}/{name}")),
                "MISSING",
            )),
        }
    }
    Ok(json!({"services": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    cluster: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    launch_type: Option<String>,
    scheduling_strategy: Option<String>,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 10, 100)?;
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = cluster.value.cluster_name;
    if req.launch_type.as_deref().is_some_and(|l| l != "EC2") {
        return Ok(json!({"serviceArns": [], "nextToken": null}));
    }
    let want_daemon = match req.scheduling_strategy.as_deref() {
        None => None,
        Some("REPLICA") => Some(false),
        Some("DAEMON") => Some(true),
        Some(o) => {
            return Err(ApiError::invalid(
                "schedulingStrategy",
                format!("'{o}' is not REPLICA or DAEMON"),
            ));
        }
    };
    // The index holds names only: the strategy is in the service records.
    let daemons: std::collections::BTreeSet<String> = match want_daemon {
        None => Default::default(),
        Some(_) => {
            let records = api
                .store
                .range(berth_store::RangeRequest::prefix(keys::service(&cname, "").as_bytes()))
                .await?;
            records
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .filter(|v| v.get("schedulingStrategy").and_then(Value::as_str) == Some("DAEMON"))
                .filter_map(|v| v.get("serviceName").and_then(Value::as_str).map(str::to_string))
                .collect()
        }
    };
    let prefix = keys::service_index_prefix(&cname);
    let page = api
        .page(&prefix, req.next_token.as_deref(), max, |kv| match want_daemon {
            None => true,
            Some(d) => daemons.contains(String::from_utf8_lossy(&kv.key[prefix.len()..]).as_ref()) == d,
        })
        .await?;
    let arns: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]);
            api.arn(ResourceType::Service, format!("{cname}/{name}"))
        })
        .collect();
    Ok(json!({"serviceArns": arns, "nextToken": page.next_token}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteInput {
    cluster: Option<String>,
    service: String,
    #[serde(default)]
    force: bool,
}

pub(crate) async fn delete(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DeleteInput = input(body)?;
    let name = short_name(&req.service, ResourceType::Service, "service")?;
    let (req, name) = (&req, &name);
    api.transact("DeleteService", || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let key = keys::service(&cname, name);
        let Some(stored) = api.get::<Service>(&key).await? else {
            return Err(ApiError::ServiceNotFound);
        };
        let mut svc = stored.value.clone();
        if svc.status == ServiceStatus::Inactive {
            return Err(ApiError::ServiceNotFound);
        }
        if svc.desired_count > 0 && !req.force {
            return Err(ApiError::invalid(
                "service",
                "The service cannot be stopped while it is scaled above 0; set desiredCount to 0 or pass force",
            ));
        }
        svc.desired_count = 0;
        let still_running = svc.running_count + svc.pending_count > 0;
        svc.status = if still_running {
            ServiceStatus::Draining
        } else {
            ServiceStatus::Inactive
        };
        let keep: Map<String, Value> = stored
            .raw
            .clone()
            .into_iter()
            .filter(|(k, _)| SERVICE_EXTRAS.contains(&k.as_str()) || k == TIER_MEMBER)
            .collect();
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(&key, CmpOp::Equal, stored.mod_revision))
            .then(Op::put(&key, encode(&svc, &keep)?));
        if !still_running {
            txn = txn.then(Op::delete(keys::service_index(&cname, name)));
        }
        let mut raw = match serde_json::to_value(&svc) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        raw.extend(keep);
        Ok(Attempt::Commit(txn, json!({"service": render(api, &raw, &svc, None)})))
    })
    .await
}
