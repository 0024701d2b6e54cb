//! PutAttributes, DeleteAttributes, ListAttributes: custom attributes of
//! container instances (the only target type ECS has).

use std::collections::BTreeMap;

use berth_model::{ContainerInstance, ResourceType};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use berth_records::Attempt;

use crate::api::{Api, decode, id_and_cluster, input, max_results, to_json};
use crate::error::ApiError;
use crate::keys;

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct WireAttribute {
    name: String,
    value: Option<String>,
    target_type: Option<String>,
    target_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeInput {
    cluster: Option<String>,
    attributes: Vec<WireAttribute>,
}

fn check_target_type(field: &str, t: Option<&str>) -> Result<(), ApiError> {
    match t {
        None | Some("container-instance") => Ok(()),
        Some(o) => Err(ApiError::invalid(
            field,
            format!("'{o}' is not a target type; expected container-instance"),
        )),
    }
}

async fn change(api: &Api, body: &Value, put: bool) -> Result<Value, ApiError> {
    let req: ChangeInput = input(body)?;
    if req.attributes.is_empty() || req.attributes.len() > 10 {
        return Err(ApiError::invalid("attributes", "must list 1 to 10 attributes"));
    }
    let mut targets = Vec::new();
    for (i, a) in req.attributes.iter().enumerate() {
        let at = format!("attributes[{i}]");
        check_target_type(&format!("{at}.targetType"), a.target_type.as_deref())?;
        if a.name.is_empty() || a.name.len() > 128 || a.name.starts_with("ecs.") && put {
            return Err(ApiError::invalid(
                &format!("{at}.name"),
                "must be 1 to 128 characters and must not start with 'ecs.'",
            ));
        }
        if a.value.as_ref().is_some_and(|v| v.len() > 128) {
            return Err(ApiError::invalid(
                &format!("{at}.value"),
                "must be at most 128 characters",
            ));
        }
        let target = a
            .target_id
            .as_deref()
            .ok_or_else(|| ApiError::invalid(&format!("{at}.targetId"), "is required"))?;
        let (_, id) = id_and_cluster(target, ResourceType::ContainerInstance, &format!("{at}.targetId"))?;
        targets.push(id);
    }
    let (req, targets) = (&req, &targets);
    let what = if put { "PutAttributes" } else { "DeleteAttributes" };
    api.transact(what, || async move {
        let cluster = api.active_cluster(req.cluster.as_deref()).await?;
        let cname = cluster.value.cluster_name.clone();
        let mut records: BTreeMap<String, (ContainerInstance, i64)> = BTreeMap::new();
        for id in targets {
            if records.contains_key(id) {
                continue;
            }
            let Some(st) = api.get::<ContainerInstance>(&keys::instance(&cname, id)).await? else {
                return Err(ApiError::TargetNotFound(format!(
                    "Could not find container instance {id} in cluster {cname}"
                )));
            };
            records.insert(id.clone(), (st.value, st.mod_revision));
        }
        let mut out = Vec::new();
        for (a, id) in req.attributes.iter().zip(targets) {
            if let Some((ci, _)) = records.get_mut(id) {
                if put {
                    ci.attributes
                        .insert(a.name.clone(), a.value.clone().unwrap_or_default());
                } else {
                    ci.attributes.remove(&a.name);
                }
            }
            let mut v = json!({
                "name": a.name,
                "targetType": "container-instance",
                "targetId": api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}")),
            });
            if let Some(val) = &a.value {
                v["value"] = json!(val);
            }
            out.push(v);
        }
        let mut txn = TxnRequest::new();
        for (id, (ci, rev)) in &records {
            let key = keys::instance(&cname, id);
            txn = txn
                .when(Compare::mod_revision(&key, CmpOp::Equal, *rev))
                .then(Op::put(&key, to_json(ci)?));
        }
        Ok(Attempt::Commit(txn, json!({"attributes": out})))
    })
    .await
}

pub(crate) async fn put(api: &Api, body: &Value) -> Result<Value, ApiError> {
    change(api, body, true).await
}

pub(crate) async fn delete(api: &Api, body: &Value) -> Result<Value, ApiError> {
    change(api, body, false).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    cluster: Option<String>,
    target_type: String,
    attribute_name: Option<String>,
    attribute_value: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    check_target_type("targetType", Some(&req.target_type))?;
    if req.attribute_value.is_some() && req.attribute_name.is_none() {
        return Err(ApiError::invalid("attributeValue", "requires attributeName"));
    }
    let max = max_results(req.max_results, 100, 100)?;
    let cluster = api.active_cluster(req.cluster.as_deref()).await?;
    let cname = cluster.value.cluster_name;
    // Instances per cluster are few: walk them and page over (instance, name).
    let cursor = match &req.next_token {
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| s.contains('\n'))
                .ok_or_else(|| ApiError::invalid("nextToken", "is not a token this call returned"))?,
        ),
        None => None,
    };
    let all = api.store.range(RangeRequest::prefix(keys::instances(&cname))).await?;
    let mut rows = Vec::new();
    for kv in &all.kvs {
        let ci = decode::<ContainerInstance>(kv)?.value;
        for (name, value) in &ci.attributes {
            if req.attribute_name.as_ref().is_some_and(|n| n != name) {
                continue;
            }
            if req.attribute_value.as_ref().is_some_and(|v| v != value) {
                continue;
            }
            let pos = format!("{}\n{name}", ci.id);
            if cursor.as_ref().is_some_and(|c| pos.as_str() <= c.as_str()) {
                continue;
            }
            rows.push((pos, ci.id.clone(), name.clone(), value.clone()));
        }
    }
    let more = rows.len() > max;
    rows.truncate(max);
    let next = if more {
        rows.last().map(|r| hex::encode(r.0.as_bytes()))
    } else {
        None
    };
    let out: Vec<Value> = rows
        .iter()
        .map(|(_, id, name, value)| {
            let mut v = json!({
                "name": name,
                "targetType": "container-instance",
                "targetId": api.arn(ResourceType::ContainerInstance, format!("{cname}/{id}")),
            });
            if !value.is_empty() {
                v["value"] = json!(value);
            }
            v
        })
        .collect();
    Ok(json!({"attributes": out, "nextToken": next}))
}
