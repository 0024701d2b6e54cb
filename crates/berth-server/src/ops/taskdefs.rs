//! RegisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions,
//! ListTaskDefinitionFamilies, DeregisterTaskDefinition, DeleteTaskDefinitions.
//!
//! Records keep every member the client sent (`volumes`, `logConfiguration`,
//! roles, ...) beside the model's, so tools that read their definition back
//! (Terraform) see what they wrote.

use berth_model::{Arn, ResourceType, Tag, TaskDefinition, TaskDefinitionStatus, Validate};
use berth_store::{CmpOp, Compare, Op, RangeRequest, TxnRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use berth_records::{Attempt, Stored};

use crate::api::{Api, check_tags, decode, input, max_results, tags_json, to_json};
use crate::error::ApiError;
use crate::keys;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Family {
    latest_revision: u32,
    active_revisions: u32,
}

fn status_str(s: TaskDefinitionStatus) -> &'static str {
    match s {
        TaskDefinitionStatus::Active => "ACTIVE",
        TaskDefinitionStatus::Inactive => "INACTIVE",
        TaskDefinitionStatus::DeleteInProgress => "DELETE_IN_PROGRESS",
    }
}

/// Adds to `target` every member of `source` it lacks, one level deep, and
/// per container definition.
fn merge_extras(target: &mut Value, source: &Map<String, Value>) {
    let Value::Object(t) = target else { return };
    for (k, v) in source {
        if k == "tags" {
            continue;
        }
        if k == "containerDefinitions" {
            if let (Some(Value::Array(tc)), Value::Array(sc)) = (t.get_mut(k), v) {
                for (tc, sc) in tc.iter_mut().zip(sc) {
                    if let (Value::Object(tc), Value::Object(sc)) = (tc, sc) {
                        for (ck, cv) in sc {
                            tc.entry(ck.clone()).or_insert_with(|| cv.clone());
                        }
                    }
                }
            }
            continue;
        }
        t.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// The ECS shape of a stored task definition (its raw record, plus the
/// members ECS always reports).
pub(crate) fn render(api: &Api, td: &Stored<TaskDefinition>) -> Value {
    let mut v = Value::Object(td.raw.clone());
    v["taskDefinitionArn"] = json!(api.arn(ResourceType::TaskDefinition, td.value.family_revision()));
    v["status"] = json!(status_str(td.value.status));
    if v.get("compatibilities").is_none() {
        v["compatibilities"] = json!(["EC2"]);
    }
    if v.get("requiresAttributes").is_none() {
        v["requiresAttributes"] = json!([]);
    }
    v
}

/// `family`, `family:revision` or an ARN: `(family, revision if given)`.
pub(crate) fn parse_ref(s: &str, field: &str) -> Result<(String, Option<u32>), ApiError> {
    let tail = if s.starts_with("arn:") {
        let arn = Arn::parse(s, field)?;
        if arn.resource != ResourceType::TaskDefinition {
            return Err(ApiError::invalid(field, "expected a task-definition ARN"));
        }
        arn.path
    } else {
        s.to_string()
    };
    match tail.split_once(':') {
        Some((f, r)) => {
            let rev = r
                .parse::<u32>()
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| ApiError::invalid(field, format!("'{r}' is not a revision number")))?;
            Ok((f.to_string(), Some(rev)))
        }
        None if !tail.is_empty() && !tail.contains('/') => Ok((tail, None)),
        None => Err(ApiError::invalid(field, format!("'{s}' is not a task definition"))),
    }
}

/// The task definition `s` names; a bare family means its latest ACTIVE
/// revision.
pub(crate) async fn resolve(api: &Api, s: &str, field: &str) -> Result<Option<Stored<TaskDefinition>>, ApiError> {
    let (family, rev) = parse_ref(s, field)?;
    let rev = match rev {
        Some(r) => r,
        None => {
            let prefix = format!("{}{family}/", keys::taskdef_index_prefix("ACTIVE"));
            let all = api.store.range(RangeRequest::prefix(&prefix)).await?;
            let Some(last) = all.kvs.last() else { return Ok(None) };
            let r = String::from_utf8_lossy(&last.key[prefix.len()..])
                .parse::<u32>()
                .unwrap_or(0);
            if r == 0 {
                return Ok(None);
            }
            r
        }
    };
    api.get::<TaskDefinition>(&keys::taskdef(&family, rev)).await
}

pub(crate) async fn register(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let Value::Object(req) = body else {
        return Err(ApiError::Serialization("request body must be a JSON object".into()));
    };
    let tags: Vec<Tag> = match req.get("tags") {
        Some(t) => input(t)
            .map_err(|e| ApiError::InvalidParameter(format!("tags{}", e.to_string().trim_start_matches('.'))))?,
        None => Vec::new(),
    };
    check_tags("tags", &tags)?;
    if req.get("family").is_none() {
        return Err(ApiError::InvalidParameter("missing required member `family`".into()));
    }
    if req.get("containerDefinitions").is_none() {
        return Err(ApiError::InvalidParameter(
            "missing required member `containerDefinitions`".into(),
        ));
    }
    let mut shaped = req.clone();
    shaped.remove("tags");
    for k in [
        "revision",
        "taskDefinitionArn",
        "status",
        "registeredAt",
        "deregisteredAt",
    ] {
        shaped.remove(k);
    }
    shaped.insert("revision".into(), json!(1));
    shaped.insert("taskDefinitionArn".into(), json!(""));
    let td: TaskDefinition = input(&Value::Object(shaped))?;
    if let Some(c) = req.get("requiresCompatibilities").and_then(Value::as_array)
        && c.iter().any(|x| x.as_str() == Some("FARGATE"))
    {
        tracing::debug!("FARGATE compatibility requested; tasks run on registered instances");
    }
    td.validate()?;
    super::run_task::check_expressions(&td.placement_constraints, "placementConstraints")?;
    let family = td.family.clone();
    let fkey = keys::taskdef_family(&family);
    let (td, tags, family, fkey) = (&td, &tags, &family, &fkey);
    api.transact("RegisterTaskDefinition", || async move {
        let mut td = td.clone();
        let (fam, fam_rev) = match api.store.get(fkey.as_bytes()).await? {
            Some(kv) => (
                serde_json::from_slice::<Family>(&kv.value)
                    .map_err(|e| ApiError::Server(format!("family record {family}: {e}")))?,
                kv.mod_revision,
            ),
            None => (Family::default(), 0),
        };
        let rev = fam.latest_revision + 1;
        td.revision = rev;
        td.task_definition_arn = api.arn(ResourceType::TaskDefinition, td.family_revision());
        td.status = TaskDefinitionStatus::Active;
        td.registered_at = Some(api.now());
        td.deregistered_at = None;
        let mut value = serde_json::to_value(&td).map_err(|e| ApiError::Server(e.to_string()))?;
        merge_extras(&mut value, req);
        let new_fam = Family {
            latest_revision: rev,
            active_revisions: fam.active_revisions + 1,
        };
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(fkey, CmpOp::Equal, fam_rev))
            .then(Op::put(fkey, to_json(&new_fam)?))
            .then(Op::put(keys::taskdef(family, rev), to_json(&value)?))
            .then(Op::put(keys::taskdef_index("ACTIVE", family, rev), b""));
        if !tags.is_empty() {
            txn = txn.then(Op::put(
                keys::tags(&format!("task-definition/{family}:{rev}")),
                to_json(tags)?,
            ));
        }
        let raw = match value {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let stored = Stored {
            value: td.clone(),
            raw,
            mod_revision: 0,
        };
        Ok(Attempt::Commit(
            txn,
            json!({"taskDefinition": render(api, &stored), "tags": tags_json(tags)}),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeInput {
    task_definition: String,
    #[serde(default)]
    include: Vec<String>,
}

pub(crate) async fn describe(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DescribeInput = input(body)?;
    let td = resolve(api, &req.task_definition, "taskDefinition")
        .await?
        .ok_or_else(|| ApiError::Client("Unable to describe task definition.".into()))?;
    let mut out = json!({"taskDefinition": render(api, &td)});
    if req.include.iter().any(|i| i == "TAGS") {
        let (t, _) = api
            .tags(&format!("task-definition/{}", td.value.family_revision()))
            .await?;
        out["tags"] = tags_json(&t);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

fn status_filter(s: Option<&str>) -> Result<&'static str, ApiError> {
    match s {
        None | Some("ACTIVE") => Ok("ACTIVE"),
        Some("INACTIVE") => Ok("INACTIVE"),
        Some("DELETE_IN_PROGRESS") => Ok("DELETE_IN_PROGRESS"),
        Some(other) => Err(ApiError::invalid(
            "status",
            format!("'{other}' is not ACTIVE, INACTIVE or DELETE_IN_PROGRESS"),
        )),
    }
}

pub(crate) async fn list(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 100, 100)?;
    let status = status_filter(req.status.as_deref())?;
    let base = keys::taskdef_index_prefix(status);
    let prefix = match &req.family_prefix {
        Some(f) => format!("{base}{f}/"),
        None => base.clone(),
    };
    let arn_of = |key: &[u8]| -> String {
        let rest = String::from_utf8_lossy(&key[base.len()..]).to_string();
        let (family, rev) = rest.rsplit_once('/').unwrap_or((&rest, "0"));
        let rev = rev.parse::<u32>().unwrap_or(0);
        api.arn(ResourceType::TaskDefinition, format!("{family}:{rev}"))
    };
    match req.sort.as_deref() {
        None | Some("ASC") => {
            let page = api.page(&prefix, req.next_token.as_deref(), max, |_| true).await?;
            let arns: Vec<String> = page.kvs.iter().map(|kv| arn_of(&kv.key)).collect();
            Ok(json!({"taskDefinitionArns": arns, "nextToken": page.next_token}))
        }
        Some("DESC") => {
            // Task definitions are few; read the index and walk it backwards.
            let all = api.store.range(RangeRequest::prefix(&prefix)).await?;
            let cursor = match &req.next_token {
                Some(t) => Some(
                    hex::decode(t)
                        .ok()
                        .filter(|k| k.starts_with(prefix.as_bytes()))
                        .ok_or_else(|| ApiError::invalid("nextToken", "is not a token this call returned"))?,
                ),
                None => None,
            };
            let mut rows: Vec<_> = all
                .kvs
                .iter()
                .rev()
                .filter(|kv| cursor.as_ref().is_none_or(|c| kv.key.as_ref() < c.as_slice()))
                .collect();
            let more = rows.len() > max;
            rows.truncate(max);
            let next = if more {
                rows.last().map(|kv| hex::encode(&kv.key))
            } else {
                None
            };
            let arns: Vec<String> = rows.iter().map(|kv| arn_of(&kv.key)).collect();
            Ok(json!({"taskDefinitionArns": arns, "nextToken": next}))
        }
        Some(other) => Err(ApiError::invalid("sort", format!("'{other}' is not ASC or DESC"))),
    }
}

pub(crate) async fn list_families(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: ListInput = input(body)?;
    let max = max_results(req.max_results, 100, 100)?;
    let want = match req.status.as_deref() {
        None | Some("ALL") => None,
        Some("ACTIVE") => Some(true),
        Some("INACTIVE") => Some(false),
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("'{other}' is not ACTIVE, INACTIVE or ALL"),
            ));
        }
    };
    let prefix = format!(
        "{}{}",
        keys::TASKDEF_FAMILIES,
        req.family_prefix.as_deref().unwrap_or("")
    );
    let page = api
        .page(&prefix, req.next_token.as_deref(), max, |kv| {
            let active = serde_json::from_slice::<Family>(&kv.value).is_ok_and(|f| f.active_revisions > 0);
            want.is_none_or(|w| w == active)
        })
        .await?;
    let families: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[keys::TASKDEF_FAMILIES.len()..]).to_string())
        .collect();
    Ok(json!({"families": families, "nextToken": page.next_token}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeregisterInput {
    task_definition: String,
}

pub(crate) async fn deregister(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DeregisterInput = input(body)?;
    let (family, rev) = parse_ref(&req.task_definition, "taskDefinition")?;
    let rev =
        rev.ok_or_else(|| ApiError::invalid("taskDefinition", "must name a revision (family:revision or ARN)"))?;
    let key = keys::taskdef(&family, rev);
    let fkey = keys::taskdef_family(&family);
    let (key, fkey, family) = (&key, &fkey, &family);
    api.transact("DeregisterTaskDefinition", || async move {
        let Some(mut td) = api.get::<TaskDefinition>(key).await? else {
            return Err(ApiError::Client("The specified task definition does not exist.".into()));
        };
        if td.value.status != TaskDefinitionStatus::Active {
            return Ok(Attempt::Done(json!({"taskDefinition": render(api, &td)})));
        }
        let Some(fkv) = api.store.get(fkey.as_bytes()).await? else {
            return Err(ApiError::Server(format!("family record of {family} is missing")));
        };
        let mut fam: Family =
            serde_json::from_slice(&fkv.value).map_err(|e| ApiError::Server(format!("family record {family}: {e}")))?;
        fam.active_revisions = fam.active_revisions.saturating_sub(1);
        td.value.status = TaskDefinitionStatus::Inactive;
        td.value.deregistered_at = Some(api.now());
        td.raw.insert("status".into(), json!("INACTIVE"));
        td.raw.insert("deregisteredAt".into(), json!(td.value.deregistered_at));
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(key, CmpOp::Equal, td.mod_revision))
            .when(Compare::mod_revision(fkey, CmpOp::Equal, fkv.mod_revision))
            .then(Op::put(key, to_json(&td.raw)?))
            .then(Op::put(fkey, to_json(&fam)?))
            .then(Op::delete(keys::taskdef_index("ACTIVE", family, rev)))
            .then(Op::put(keys::taskdef_index("INACTIVE", family, rev), b""));
        Ok(Attempt::Commit(txn, json!({"taskDefinition": render(api, &td)})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteInput {
    task_definitions: Vec<String>,
}

pub(crate) async fn delete(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: DeleteInput = input(body)?;
    if req.task_definitions.is_empty() || req.task_definitions.len() > 10 {
        return Err(ApiError::invalid(
            "taskDefinitions",
            "must list 1 to 10 task definitions",
        ));
    }
    let (mut deleted, mut failures) = (Vec::new(), Vec::new());
    for (i, s) in req.task_definitions.iter().enumerate() {
        let field = format!("taskDefinitions[{i}]");
        let (family, rev) = parse_ref(s, &field)?;
        let rev = rev.ok_or_else(|| ApiError::invalid(&field, "must name a revision (family:revision or ARN)"))?;
        let key = keys::taskdef(&family, rev);
        let arn = api.arn(ResourceType::TaskDefinition, format!("{family}:{rev}"));
        let (key, family, arn) = (&key, &family, &arn);
        let outcome = api
            .transact("DeleteTaskDefinitions", || async move {
                let Some(kv) = api.store.get(key.as_bytes()).await? else {
                    return Ok(Attempt::Done(Err(
                        json!({"arn": arn, "reason": "The specified task definition does not exist."}),
                    )));
                };
                let mut td = decode::<TaskDefinition>(&kv)?;
                if td.value.status == TaskDefinitionStatus::Active {
                    return Ok(Attempt::Done(Err(
                        json!({"arn": arn, "reason": "The specified task definition is still in ACTIVE status. Please deregister the target and try again."}),
                    )));
                }
                let txn = TxnRequest::new()
                    .when(Compare::mod_revision(key, CmpOp::Equal, kv.mod_revision))
                    .then(Op::delete(key))
                    .then(Op::delete(keys::taskdef_index("INACTIVE", family, rev)))
                    .then(Op::delete(keys::tags(&format!("task-definition/{family}:{rev}"))));
                td.value.status = TaskDefinitionStatus::DeleteInProgress;
                Ok(Attempt::Commit(txn, Ok(render(api, &td))))
            })
            .await?;
        match outcome {
            Ok(v) => deleted.push(v),
            Err(f) => failures.push(f),
        }
    }
    Ok(json!({"taskDefinitions": deleted, "failures": failures}))
}
