//! TagResource, UntagResource, ListTagsForResource for clusters, container
//! instances, task definitions, tasks and services.

use berth_model::{Arn, ResourceType, Tag};
use berth_store::{CmpOp, Compare, Op, TxnRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use berth_records::Attempt;

use crate::api::{Api, check_tags, input, tags_json, to_json};
use crate::error::ApiError;
use crate::keys;

/// The record key and tag path of the resource an ARN names.
fn resolve(arn: &str) -> Result<(String, String), ApiError> {
    let a = Arn::parse(arn, "resourceArn")?;
    let not_found = || {
        ApiError::invalid(
            "resourceArn",
            format!("'{arn}' must include the cluster (long ARN format)"),
        )
    };
    let key = match a.resource {
        ResourceType::Cluster => keys::cluster(&a.path),
        ResourceType::ContainerInstance | ResourceType::Task | ResourceType::Service => {
            let (cluster, id) = a.path.split_once('/').ok_or_else(not_found)?;
            match a.resource {
                ResourceType::ContainerInstance => keys::instance(cluster, id),
                ResourceType::Task => keys::task(cluster, id),
                _ => keys::service(cluster, id),
            }
        }
        ResourceType::TaskDefinition => {
            let (family, rev) = a
                .path
                .split_once(':')
                .and_then(|(f, r)| r.parse::<u32>().ok().map(|r| (f.to_string(), r)))
                .ok_or_else(|| ApiError::invalid("resourceArn", "a task definition ARN needs family:revision"))?;
            keys::taskdef(&family, rev)
        }
        ResourceType::Container => {
            return Err(ApiError::invalid("resourceArn", "containers cannot be tagged"));
        }
    };
    Ok((key, format!("{}/{}", a.resource.as_str(), a.path)))
}

async fn existing(api: &Api, key: &str, arn: &str) -> Result<i64, ApiError> {
    match api.store.get(key.as_bytes()).await? {
        Some(kv) if !is_inactive(&kv.value) => Ok(kv.mod_revision),
        _ => Err(ApiError::ResourceNotFound(format!(
            "The specified resource {arn} could not be found."
        ))),
    }
}

fn is_inactive(value: &[u8]) -> bool {
    serde_json::from_slice::<Value>(value)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(|s| s == "INACTIVE"))
        .unwrap_or(false)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagInput {
    resource_arn: String,
    tags: Vec<Tag>,
}

pub(crate) async fn tag(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: TagInput = input(body)?;
    check_tags("tags", &req.tags)?;
    let (key, path) = resolve(&req.resource_arn)?;
    let (req, key, path) = (&req, &key, &path);
    api.transact("TagResource", || async move {
        let rev = existing(api, key, &req.resource_arn).await?;
        let (mut tags, tag_rev) = api.tags(path).await?;
        for t in &req.tags {
            match tags.iter_mut().find(|x| x.key == t.key) {
                Some(x) => x.value.clone_from(&t.value),
                None => tags.push(t.clone()),
            }
        }
        check_tags("tags", &tags)?;
        let tkey = keys::tags(path);
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(key, CmpOp::Equal, rev))
            .when(Compare::mod_revision(&tkey, CmpOp::Equal, tag_rev))
            .then(Op::put(&tkey, to_json(&tags)?));
        Ok(Attempt::Commit(txn, json!({})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UntagInput {
    resource_arn: String,
    tag_keys: Vec<String>,
}

pub(crate) async fn untag(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: UntagInput = input(body)?;
    let (key, path) = resolve(&req.resource_arn)?;
    let (req, key, path) = (&req, &key, &path);
    api.transact("UntagResource", || async move {
        let rev = existing(api, key, &req.resource_arn).await?;
        let (mut tags, tag_rev) = api.tags(path).await?;
        tags.retain(|t| !req.tag_keys.contains(&t.key));
        let tkey = keys::tags(path);
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(key, CmpOp::Equal, rev))
            .when(Compare::mod_revision(&tkey, CmpOp::Equal, tag_rev))
            .then(if tags.is_empty() {
                Op::delete(&tkey)
            } else {
                Op::put(&tkey, to_json(&tags)?)
            });
        Ok(Attempt::Commit(txn, json!({})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    resource_arn: String,
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let (key, path) = resolve(&req.resource_arn)?;
    existing(api, &key, &req.resource_arn).await?;
    let (tags, _) = api.tags(&path).await?;
    Ok(json!({"tags": tags_json(&tags)}))
}
