//! The ECS operations, one file per resource group. Each takes the decoded
//! JSON body and returns the JSON response; every mutation is one store
//! transaction whose compares cover what it read (retried on conflict).

mod attributes;
mod clusters;
mod instances;
mod protection;
mod run_task;
mod services;
mod tags;
mod taskdefs;
mod tasks;

use serde_json::Value;

use crate::api::Api;
use crate::error::ApiError;

/// Every operation this server answers, as named in `X-Amz-Target`.
pub const OPERATIONS: &[&str] = &[
    "CreateCluster",
    "DescribeClusters",
    "ListClusters",
    "DeleteCluster",
    "UpdateCluster",
    "UpdateClusterSettings",
    "RegisterContainerInstance",
    "DeregisterContainerInstance",
    "DescribeContainerInstances",
    "ListContainerInstances",
    "UpdateContainerInstancesState",
    "RegisterTaskDefinition",
    "DescribeTaskDefinition",
    "ListTaskDefinitions",
    "ListTaskDefinitionFamilies",
    "DeregisterTaskDefinition",
    "DeleteTaskDefinitions",
    "RunTask",
    "StartTask",
    "StopTask",
    "DescribeTasks",
    "ListTasks",
    "CreateService",
    "UpdateService",
    "DescribeServices",
    "ListServices",
    "DeleteService",
    "PutAttributes",
    "DeleteAttributes",
    "ListAttributes",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "UpdateTaskProtection",
    "GetTaskProtection",
];

/// An operation's answer: a JSON value, or bytes already encoded (hot paths).
pub(crate) enum Reply {
    Json(Value),
    Bytes(Vec<u8>),
}

pub(crate) async fn dispatch(api: &Api, operation: &str, body: &Value) -> Result<Reply, ApiError> {
    if operation == "DescribeTasks" {
        return tasks::describe(api, body).await;
    }
    let value = match operation {
        "CreateCluster" => clusters::create(api, body).await,
        "DescribeClusters" => clusters::describe(api, body).await,
        "ListClusters" => clusters::list(api, body).await,
        "DeleteCluster" => clusters::delete(api, body).await,
        "UpdateCluster" => clusters::update(api, body, false).await,
        "UpdateClusterSettings" => clusters::update(api, body, true).await,
        "RegisterContainerInstance" => instances::register(api, body).await,
        "DeregisterContainerInstance" => instances::deregister(api, body).await,
        "DescribeContainerInstances" => instances::describe(api, body).await,
        "ListContainerInstances" => instances::list(api, body).await,
        "UpdateContainerInstancesState" => instances::update_state(api, body).await,
        "RegisterTaskDefinition" => taskdefs::register(api, body).await,
        "DescribeTaskDefinition" => taskdefs::describe(api, body).await,
        "ListTaskDefinitions" => taskdefs::list(api, body).await,
        "ListTaskDefinitionFamilies" => taskdefs::list_families(api, body).await,
        "DeregisterTaskDefinition" => taskdefs::deregister(api, body).await,
        "DeleteTaskDefinitions" => taskdefs::delete(api, body).await,
        "RunTask" => run_task::run_task(api, body).await,
        "UpdateTaskProtection" => protection::update(api, body).await,
        "GetTaskProtection" => protection::get(api, body).await,
        "StartTask" => run_task::start_task(api, body).await,
        "StopTask" => tasks::stop(api, body).await,
        "ListTasks" => tasks::list(api, body).await,
        "CreateService" => services::create(api, body).await,
        "UpdateService" => services::update(api, body).await,
        "DescribeServices" => services::describe(api, body).await,
        "ListServices" => services::list(api, body).await,
        "DeleteService" => services::delete(api, body).await,
        "PutAttributes" => attributes::put(api, body).await,
        "DeleteAttributes" => attributes::delete(api, body).await,
        "ListAttributes" => attributes::list(api, body).await,
        "TagResource" => tags::tag(api, body).await,
        "UntagResource" => tags::untag(api, body).await,
        "ListTagsForResource" => tags::list(api, body).await,
        other => Err(ApiError::UnknownOperation(format!(
            "operation '{other}' is not supported by this server"
        ))),
    }?;
    Ok(Reply::Json(value))
}

/// A mutation that kept losing its compares: a real fault, so a 5xx.
/// A `failures[]` entry.
pub(crate) fn failure(arn: &str, reason: &str) -> Value {
    serde_json::json!({"arn": arn, "reason": reason})
}
