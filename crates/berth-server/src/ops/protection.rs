//! UpdateTaskProtection and GetTaskProtection: scale-in protection for
//! service tasks, kept on the task record (`protectionEnabled`,
//! `protectionExpiresAt`) where the service reconciler reads it.

use berth_model::{ResourceType, Task};
use berth_records::{Change, Stored};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::failure;
use crate::api::{Api, check_range, id_and_cluster, input};
use crate::error::ApiError;
use crate::keys;

/// Default and longest protection, in minutes (as ECS).
const DEFAULT_MINUTES: i64 = 120;
const MAX_MINUTES: i64 = 2880;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    cluster: String,
    tasks: Vec<String>,
    protection_enabled: bool,
    expires_in_minutes: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetInput {
    cluster: String,
    #[serde(default)]
    tasks: Vec<String>,
}

fn protected_task(api: &Api, t: &Task, raw: &Map<String, Value>) -> Value {
    let enabled = raw.get("protectionEnabled").and_then(Value::as_bool).unwrap_or(false);
    let expires = raw.get("protectionExpiresAt").and_then(Value::as_f64);
    let active = enabled && expires.is_none_or(|e| e > api.now());
    let mut v = json!({
        "taskArn": api.arn(ResourceType::Task, format!("{}/{}", t.cluster, t.id)),
        "protectionEnabled": active,
    });
    if let (true, Some(e)) = (active, expires) {
        v["expirationDate"] = json!(e);
    }
    v
}

fn check_tasks(tasks: &[String]) -> Result<(), ApiError> {
    if tasks.is_empty() || tasks.len() > 10 {
        return Err(ApiError::invalid("tasks", "must list 1 to 10 tasks"));
    }
    Ok(())
}

pub(crate) async fn update(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: UpdateInput = input(body)?;
    check_tasks(&req.tasks)?;
    let minutes = req.expires_in_minutes.unwrap_or(DEFAULT_MINUTES);
    check_range("expiresInMinutes", minutes, 1, MAX_MINUTES)?;
    let cluster = api.active_cluster(Some(&req.cluster)).await?.value.cluster_name;
    let (mut protected, mut failures) = (Vec::new(), Vec::new());
    for (i, t) in req.tasks.iter().enumerate() {
        let (_, id) = id_and_cluster(t, ResourceType::Task, &format!("tasks[{i}]"))?;
        let key = keys::task(&cluster, &id);
        let expires = api.now() + minutes as f64 * 60.0;
        let after = api
            .update(&key, |cur: Option<&Stored<Task>>| {
                let Some(cur) = cur else {
                    return Ok(Change::keep());
                };
                let mut raw = cur.raw.clone();
                raw.insert("protectionEnabled".into(), json!(req.protection_enabled));
                if req.protection_enabled {
                    raw.insert("protectionExpiresAt".into(), json!(expires));
                } else {
                    raw.remove("protectionExpiresAt");
                }
                Ok(Change::put_with(cur.value.clone(), raw))
            })
            .await?;
        match after {
            Some(s) => protected.push(protected_task(api, &s.value, &s.raw)),
            None => failures.push(failure(
                &api.arn(ResourceType::Task, format!("{cluster}/{id}")),
                "MISSING",
            )),
        }
    }
    Ok(json!({"protectedTasks": protected, "failures": failures}))
}

pub(crate) async fn get(api: &Api, body: &Value) -> Result<Value, ApiError> {
    let req: GetInput = input(body)?;
    check_tasks(&req.tasks)?;
    let cluster = api.active_cluster(Some(&req.cluster)).await?.value.cluster_name;
    let (mut protected, mut failures) = (Vec::new(), Vec::new());
    for (i, t) in req.tasks.iter().enumerate() {
        let (_, id) = id_and_cluster(t, ResourceType::Task, &format!("tasks[{i}]"))?;
        match api.get::<Task>(&keys::task(&cluster, &id)).await? {
            Some(s) => protected.push(protected_task(api, &s.value, &s.raw)),
            None => failures.push(failure(
                &api.arn(ResourceType::Task, format!("{cluster}/{id}")),
                "MISSING",
            )),
        }
    }
    Ok(json!({"protectedTasks": protected, "failures": failures}))
}
