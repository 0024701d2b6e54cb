//! CreateCluster, DescribeClusters, ListClusters, DeleteCluster,
//! UpdateCluster, UpdateClusterSettings.

use berth_model::{Cluster, ContainerInstance, KeyValuePair, Tag, Validate};
use berth_records::{Attempt, Change, Stored, encode};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::failure;
use crate::api::{Api, check_tags, cluster_name, input, max_results, tags_json, to_json};
use crate::error::ApiError;
use crate::keys;

/// Set while DeleteCluster re-checks emptiness; creators see a non-ACTIVE
/// cluster and refuse, so nothing can slip in between check and delete.
const DEPROVISIONING: &str = "DEPROVISIONING";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    cluster_name: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    settings: Vec<KeyValuePair>,
}

fn check_settings(settings: &[KeyValuePair]) -> Result<(), ApiError> {
    for (i, s) in settings.iter().enumerate() {
        if s.name != "containerInsights" {
            return Err(ApiError::invalid(
                &format!("settings[{i}].name"),
                format!("'{}' is not a cluster setting; expected containerInsights", s.name),
            ));
        }
        if !matches!(s.value.as_str(), "enabled" | "disabled" | "enhanced") {
            return Err(ApiError::invalid(
                &format!("settings[{i}].value"),
                "must be enabled, disabled or enhanced",
            ));
        }
    }
    Ok(())
}

pub(crate) async fn create(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: CreateInput = input(body)?;
    let name = req.cluster_name.unwrap_or_else(|| "default".to_string());
    check_tags("tags", &req.tags)?;
    check_settings(&req.settings)?;
    let key = keys::cluster(&name);
    let tag_key = keys::tags(&format!("cluster/{name}"));
    let tags = to_json(&req.tags)?;
    let after = api
        .update(&key, |existing: Option<&Stored<Cluster>>| {
            if existing.is_some_and(|c| c.value.status == "ACTIVE") {
                return Ok(Change::keep());
            }
            let cluster = Cluster {
                cluster_name: name.clone(),
                cluster_arn: api.cluster_arn(&name),
                status: "ACTIVE".into(),
                tags: Vec::new(),
                settings: if req.settings.is_empty() {
                    vec![KeyValuePair {
                        name: "containerInsights".into(),
                        value: "disabled".into(),
                    }]
                } else {
                    req.settings.clone()
                },
                created_at: api.now(),
            };
            cluster.validate()?;
            // A cluster created again starts afresh.
            let change = Change::put_with(cluster, Map::new());
            Ok(if req.tags.is_empty() {
                change.then(Op::delete(&tag_key))
            } else {
                change.then(Op::put(&tag_key, &tags))
            })
        })
        .await?
        .ok_or_else(|| ApiError::Server(format!("cluster {name} vanished while being created")))?;
    render(api, &after.value, true, true, true)
        .await
        .map(|c| json!({"cluster": c}))
}

async fn count(api: &Api, prefix: &str) -> Result<u64, ApiError> {
    Ok(api.store.range(RangeRequest::prefix(prefix).count_only()).await?.count)
}

/// The ECS shape of a cluster, with its counts.
async fn render(api: &Api, c: &Cluster, tags: bool, settings: bool, stats: bool) -> Result<Value, ApiError> {
    let name = &c.cluster_name;
    // Instances are few per cluster and carry their own task counts; tasks
    // not placed yet wait under /pending/.
    let records = api.store.range(RangeRequest::prefix(keys::instances(name))).await?;
    let instances = records.kvs.len() as u64;
    let (mut running, mut pending) = (0u64, count(api, &keys::pending_in(name)).await?);
    for kv in &records.kvs {
        if let Ok(ci) = serde_json::from_slice::<ContainerInstance>(&kv.value) {
            running += u64::from(ci.running_tasks_count);
            pending += u64::from(ci.pending_tasks_count);
        }
    }
    let services = count(api, &keys::service_index_prefix(name)).await?;
    let mut v = json!({
        "clusterArn": api.cluster_arn(name),
        "clusterName": name,
        "status": c.status,
        "registeredContainerInstancesCount": instances,
        "runningTasksCount": running,
        "pendingTasksCount": pending,
        "activeServicesCount": services,
        "capacityProviders": [],
        "defaultCapacityProviderStrategy": [],
    });
    if stats {
        v["statistics"] = json!([
            {"name": "runningEC2TasksCount", "value": running.to_string()},
            {"name": "pendingEC2TasksCount", "value": pending.to_string()},
            {"name": "activeEC2ServiceCount", "value": services.to_string()},
            {"name": "runningFargateTasksCount", "value": "0"},
            {"name": "pendingFargateTasksCount", "value": "0"},
            {"name": "activeFargateServiceCount", "value": "0"},
        ]);
    }
    if tags {
        let (t, _) = api.tags(&format!("cluster/{name}")).await?;
        v["tags"] = tags_json(&t);
    }
    if settings {
        v["settings"] = json!(c.settings);
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInput {
    clusters: Option<Vec<String>>,
    #[serde(default)]
    include: Vec<String>,
}

pub(crate) async fn describe(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DescribeInput = input(body)?;
    let names = req.clusters.unwrap_or_else(|| vec!["default".to_string()]);
    if names.len() > 100 {
        return Err(ApiError::invalid("clusters", "at most 100 clusters per call"));
    }
    for (i, inc) in req.include.iter().enumerate() {
        if !matches!(
            inc.as_str(),
            "ATTACHMENTS" | "CONFIGURATIONS" | "SETTINGS" | "STATISTICS" | "TAGS"
        ) {
            return Err(ApiError::invalid(
                &format!("include[{i}]"),
                format!("'{inc}' is not one of ATTACHMENTS, CONFIGURATIONS, SETTINGS, STATISTICS, TAGS"),
            ));
        }
    }
    let has = |s: &str| req.include.iter().any(|i| i == s);
    let (mut clusters, mut failures) = (Vec::new(), Vec::new());
    for (i, input) in names.iter().enumerate() {
        let name = match cluster_name(Some(input)) {
            Ok(n) => n,
            Err(_) => {
                return Err(ApiError::invalid(
                    &format!("clusters[{i}]"),
                    format!("'{input}' is not a cluster name or ARN"),
                ));
            }
        };
        match api.get::<Cluster>(&keys::cluster(&name)).await? {
            Some(c) => clusters.push(render(api, &c.value, has("TAGS"), has("SETTINGS"), has("STATISTICS")).await?),
            None => failures.push(failure(&api.cluster_arn(&name), "MISSING")),
        }
    }
    Ok(json!({"clusters": clusters, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 100, 100)?;
    let page = api
        .page(keys::CLUSTERS, req.next_token.as_deref(), max, |kv| {
            serde_json::from_slice::<Cluster>(&kv.value).is_ok_and(|c| c.status != "INACTIVE")
        })
        .await?;
    let arns: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| api.cluster_arn(String::from_utf8_lossy(&kv.key[keys::CLUSTERS.len()..]).as_ref()))
        .collect();
    Ok(json!({"clusterArns": arns, "nextToken": page.next_token}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteInput {
    cluster: String,
}

pub(crate) async fn delete(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DeleteInput = input(body)?;
    let name = cluster_name(Some(&req.cluster))?;
    let key = &keys::cluster(&name);
    let name = &name;
    api.transact("DeleteCluster", || async move {
        // Phase 1: fence out creators.
        let mut original = String::new();
        let fenced = api
            .update(key, |cur: Option<&Stored<Cluster>>| match cur {
                Some(c) if c.value.status != "INACTIVE" => {
                    original.clone_from(&c.value.status);
                    let mut c = c.value.clone();
                    c.status = DEPROVISIONING.into();
                    Ok(Change::put(c))
                }
                _ => Err(ApiError::ClusterNotFound),
            })
            .await?
            .ok_or(ApiError::ClusterNotFound)?;
        let mut c = fenced.value;
        // Phase 2: with creators fenced out, the counts cannot grow.
        let refusal = if count(api, &keys::instances(name)).await? > 0 {
            Some(ApiError::ClusterContainsContainerInstances)
        } else if count(api, &keys::service_index_prefix(name)).await? > 0 {
            Some(ApiError::ClusterContainsServices)
        } else if count(api, &keys::task_index_prefix(name, "RUNNING", "all", "")).await? > 0 {
            Some(ApiError::ClusterContainsTasks)
        } else {
            None
        };
        c.status = match refusal {
            Some(_) if original == DEPROVISIONING => "ACTIVE".into(),
            Some(_) => original,
            None => "INACTIVE".into(),
        };
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(key, CmpOp::Equal, fenced.mod_revision))
            .then(Op::put(key, encode(&c, &fenced.raw)?));
        if let Some(e) = refusal {
            api.store.txn(txn).await?;
            return Err(e);
        }
        let mut v = render(api, &c, false, true, false).await?;
        v["status"] = json!("INACTIVE");
        Ok(Attempt::Commit(txn, json!({"cluster": v})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    cluster: String,
    settings: Option<Vec<KeyValuePair>>,
}

pub(crate) async fn update(api: &Api, body: &Value, settings_required: bool) -> Result<Value, ApiError> {
    let req: UpdateInput = input(body)?;
    if settings_required && req.settings.is_none() {
        return Err(ApiError::InvalidParameter("missing required member `settings`".into()));
    }
    if let Some(s) = &req.settings {
        check_settings(s)?;
    }
    let key = keys::cluster(&cluster_name(Some(&req.cluster))?);
    let after = api
        .update(&key, |cur: Option<&Stored<Cluster>>| {
            let Some(c) = cur.filter(|c| c.value.status == "ACTIVE") else {
                return Err(ApiError::ClusterNotFound);
            };
            let mut c = c.value.clone();
            for s in req.settings.iter().flatten() {
                match c.settings.iter_mut().find(|x| x.name == s.name) {
                    Some(x) => x.value.clone_from(&s.value),
                    None => c.settings.push(s.clone()),
                }
            }
            Ok(Change::put(c))
        })
        .await?
        .ok_or(ApiError::ClusterNotFound)?;
    Ok(json!({"cluster": render(api, &after.value, true, true, false).await?}))
}
