//! Placement through the API: StartTask places with the scheduler's engine
//! on the named instances, and the cluster query language is one language
//! (the scheduler's) for `memberOf` constraints and ListContainerInstances
//! filters alike.

// Non-#[test] helpers here panic on a broken setup, like the tests do.
#![allow(clippy::unwrap_used)]

// Each test binary uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;

use berth_server::Auth;
use common::{TestServer, start};
use serde_json::{Value, json};

/// A cluster with one instance per zone (`zone` attribute); their ARNs.
async fn zoned_cluster(s: &TestServer, cluster: &str, zones: &[&str]) -> Vec<String> {
    s.ok("CreateCluster", json!({"clusterName": cluster})).await;
    let mut arns = Vec::new();
    for zone in zones {
        let ci = s
            .ok(
                "RegisterContainerInstance",
                json!({"cluster": cluster,
                       "attributes": [{"name": "zone", "value": zone}],
                       "totalResources": [
                           {"name": "CPU", "type": "INTEGER", "integerValue": 1024},
                           {"name": "MEMORY", "type": "INTEGER", "integerValue": 1024}]}),
            )
            .await;
        arns.push(
            ci["containerInstance"]["containerInstanceArn"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    arns
}

async fn register(s: &TestServer, family: &str, constraints: Value) {
    s.ok(
        "RegisterTaskDefinition",
        json!({"family": family, "placementConstraints": constraints,
               "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 64, "memory": 64,
                                         "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;
}

fn instance_of(task: &Value) -> &str {
    task["containerInstanceArn"].as_str().unwrap()
}

#[tokio::test]
async fn start_task_honours_a_not_constraint_from_the_task_definition() {
    let s = start(Auth::Disabled).await;
    let arns = zoned_cluster(&s, "zones", &["a", "b"]).await;
    register(
        &s,
        "not-a",
        json!([{"type": "memberOf", "expression": "not(attribute:zone == a)"}]),
    )
    .await;
    let v = s
        .ok(
            "StartTask",
            json!({"cluster": "zones", "taskDefinition": "not-a", "containerInstances": arns}),
        )
        .await;
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{v}");
    assert_eq!(instance_of(&tasks[0]), arns[1], "accepted on the zone-b instance");
    let host_port = tasks[0]["containers"][0]["networkBindings"][0]["hostPort"].as_u64();
    assert!(host_port.is_some_and(|p| p >= 32768), "a dynamic host port: {v}");
    assert_eq!(
        v["failures"],
        json!([{"arn": arns[0], "reason": "ATTRIBUTE"}]),
        "refused on the zone-a instance"
    );
    // Only the zone-b instance gave up resources.
    let d = s
        .ok(
            "DescribeContainerInstances",
            json!({"cluster": "zones", "containerInstances": arns}),
        )
        .await;
    let cpu_left: Vec<Option<u64>> = d["containerInstances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ci| ci["remainingResources"][0]["integerValue"].as_u64())
        .collect();
    assert_eq!(cpu_left, [Some(1024), Some(960)]);
}

#[tokio::test]
async fn start_task_sees_the_tasks_already_on_an_instance() {
    let s = start(Auth::Disabled).await;
    let arns = zoned_cluster(&s, "distinct", &["a"]).await;
    register(&s, "one-each", json!([{"type": "distinctInstance"}])).await;
    let start = json!({"cluster": "distinct", "taskDefinition": "one-each", "containerInstances": arns,
                       "group": "singleton"});
    let first = s.ok("StartTask", start.clone()).await;
    assert_eq!(first["tasks"].as_array().map(Vec::len), Some(1), "{first}");
    let second = s.ok("StartTask", start).await;
    assert_eq!(second["tasks"], json!([]));
    assert_eq!(second["failures"][0]["reason"], "DISTINCT_INSTANCE", "{second}");
    // Too big for what is left: the engine names the resource.
    s.ok(
        "RegisterTaskDefinition",
        json!({"family": "huge", "containerDefinitions": [{"name": "app", "image": "busybox",
               "cpu": 2048, "memory": 64}]}),
    )
    .await;
    let v = s
        .ok(
            "StartTask",
            json!({"cluster": "distinct", "taskDefinition": "huge", "containerInstances": arns}),
        )
        .await;
    assert_eq!(v["failures"][0]["reason"], "RESOURCE:CPU", "{v}");
}

#[tokio::test]
async fn run_task_refuses_what_no_instance_could_ever_run() {
    let s = start(Auth::Disabled).await;
    let arns = zoned_cluster(&s, "never", &["a", "b"]).await;
    register(
        &s,
        "zone-c",
        json!([{"type": "memberOf", "expression": "attribute:zone == c"}]),
    )
    .await;
    let v = s
        .ok("RunTask", json!({"cluster": "never", "taskDefinition": "zone-c"}))
        .await;
    assert_eq!(v["tasks"], json!([]));
    let reasons: BTreeSet<(&str, &str)> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["arn"].as_str().unwrap(), f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([(arns[0].as_str(), "ATTRIBUTE"), (arns[1].as_str(), "ATTRIBUTE")])
    );
    // A constraint on running tasks says nothing about "ever": queued.
    register(
        &s,
        "near-db",
        json!([{"type": "memberOf", "expression": "task:group == db"}]),
    )
    .await;
    let v = s
        .ok("RunTask", json!({"cluster": "never", "taskDefinition": "near-db"}))
        .await;
    assert_eq!(v["tasks"].as_array().map(Vec::len), Some(1), "{v}");
    // Subjects only records know are refused in constraints, naming the member.
    let (st, t, m) = s
        .err(
            "RunTask",
            json!({"cluster": "never", "taskDefinition": "zone-c",
                   "placementConstraints": [{"type": "memberOf", "expression": "agentVersion exists"}]}),
        )
        .await;
    assert_eq!((st, t.as_str()), (400, "InvalidParameterException"));
    assert!(m.starts_with("placementConstraints[0].expression:"), "{m}");
}

#[tokio::test]
async fn list_filters_use_the_full_query_language() {
    let s = start(Auth::Disabled).await;
    let arns = zoned_cluster(&s, "filters", &["a", "b", "c"]).await;
    let list = |filter: &str| {
        let s = &s;
        let filter = filter.to_string();
        async move {
            let v = s
                .ok(
                    "ListContainerInstances",
                    json!({"cluster": "filters", "filter": filter}),
                )
                .await;
            v["containerInstanceArns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let mut not_a = list("not(attribute:zone == a)").await;
    not_a.sort();
    let mut want = vec![arns[1].clone(), arns[2].clone()];
    want.sort();
    assert_eq!(not_a, want);
    assert_eq!(
        list("(attribute:zone == a or attribute:zone == b) and attribute:zone != b").await,
        [arns[0].clone()]
    );
    assert_eq!(list("agentConnected == true and runningTasksCount == 0").await.len(), 3);
    assert!(list("runningTasksCount > 0").await.is_empty());
    let (st, t, m) = s
        .err(
            "ListContainerInstances",
            json!({"cluster": "filters", "filter": "attribute:zone =="}),
        )
        .await;
    assert_eq!((st, t.as_str()), (400, "InvalidParameterException"));
    assert!(m.starts_with("filter:"), "{m}");
}
