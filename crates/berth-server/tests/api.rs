//! The API over HTTP against a MemoryStore: protocol errors, SigV4,
//! concurrency (no over-commit), pagination under writes, cluster deletion.

// Non-#[test] helpers here panic on a broken setup, like the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use berth_server::{Auth, Credentials};
use common::{Signing, TestServer, cluster_with_instance, start, taskdef};
use serde_json::{Value, json};

#[tokio::test]
async fn protocol_errors_are_400s_naming_the_member() {
    let s = start(Auth::Disabled).await;
    let (st, kind, _) = s.raw("NoSuchThing", b"{}".to_vec(), &Signing::None).await;
    assert_eq!((st, kind.as_deref()), (400, Some("UnknownOperationException")));
    let (st, kind, _) = s.raw("ListClusters", b"[1,2".to_vec(), &Signing::None).await;
    assert_eq!((st, kind.as_deref()), (400, Some("SerializationException")));
    let (st, kind, v) = s.raw("ListClusters", vec![b' '; 100 * 1024], &Signing::None).await;
    assert_eq!((st, kind.as_deref()), (400, Some("ClientException")), "{v}");
    let (_, t, m) = s.err("RunTask", json!({"cluster": "default"})).await;
    assert_eq!(t, "InvalidParameterException");
    assert!(m.contains("taskDefinition"), "{m}");
    let (_, t, m) = s.err("RunTask", json!({"taskDefinition": "x", "count": "2"})).await;
    assert_eq!(t, "InvalidParameterException");
    assert!(m.starts_with("count:"), "{m}");
    let (_, _, m) = s.err("ListTasks", json!({"maxResults": 0})).await;
    assert!(m.contains("maxResults"), "{m}");
    let (_, _, m) = s
        .err(
            "RegisterTaskDefinition",
            json!({"family": "f", "containerDefinitions": [{"name": "a", "image": "b"}]}),
        )
        .await;
    assert!(m.contains("containerDefinitions[0].memory"), "{m}");
    let (st, t, _) = s.err("ListTasks", json!({"cluster": "nope"})).await;
    assert_eq!((st, t.as_str()), (400, "ClusterNotFoundException"));
    let (_, t, _) = s.err("DeleteCluster", json!({})).await;
    assert_eq!(t, "InvalidParameterException");
    // A malformed memberOf expression is refused up front, naming the
    // member and where the parser stopped.
    let bad = json!([{"type": "memberOf", "expression": "attribute:zone ~= a"}]);
    let (st, t, m) = s
        .err(
            "RunTask",
            json!({"taskDefinition": "x", "placementConstraints": bad.clone()}),
        )
        .await;
    assert_eq!((st, t.as_str()), (400, "InvalidParameterException"));
    assert!(m.starts_with("placementConstraints[0].expression:"), "{m}");
    assert!(m.contains("position"), "{m}");
    let (_, _, m) = s
        .err(
            "RegisterTaskDefinition",
            json!({"family": "f", "placementConstraints": bad,
                   "containerDefinitions": [{"name": "a", "image": "b", "memory": 16}]}),
        )
        .await;
    assert!(m.starts_with("placementConstraints[0].expression:"), "{m}");
}

fn creds() -> Auth {
    Auth::SigV4(Credentials::parse("[default]\naws_access_key_id = AKID\naws_secret_access_key = s3cret\n").unwrap())
}

fn key(id: &str, secret: &str, skew_secs: i64) -> Signing {
    Signing::Key {
        id: id.into(),
        secret: secret.into(),
        region: "eu-central-1".into(),
        skew_secs,
    }
}

#[tokio::test]
async fn sigv4_accepts_good_signatures_and_refuses_the_rest() {
    let s = start(creds()).await;
    let body = |name: &str| json!({"clusterName": name}).to_string().into_bytes();
    let (st, _, v) = s.raw("CreateCluster", body("good"), &key("AKID", "s3cret", 0)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["cluster"]["clusterArn"], "arn:aws:ecs:eu-central-1:123456789012:cluster/good",
        "region from the credential scope"
    );
    for (signing, want) in [
        (Signing::None, "IncompleteSignatureException"),
        (key("AKID", "wrong", 0), "InvalidSignatureException"),
        (key("OTHER", "s3cret", 0), "UnrecognizedClientException"),
        (key("AKID", "s3cret", -16 * 60), "InvalidSignatureException"),
        (key("AKID", "s3cret", 16 * 60), "InvalidSignatureException"),
    ] {
        let (st, kind, _) = s.raw("CreateCluster", body("bad"), &signing).await;
        assert_eq!((st, kind.as_deref()), (403, Some(want)));
    }
    // Skew within the limit is fine.
    let (st, _, _) = s
        .raw("ListClusters", b"{}".to_vec(), &key("AKID", "s3cret", 14 * 60))
        .await;
    assert_eq!(st, 200);
    let (_, _, v) = s
        .raw(
            "DescribeClusters",
            json!({"clusters": ["bad"]}).to_string().into_bytes(),
            &key("AKID", "s3cret", 0),
        )
        .await;
    assert_eq!(v["failures"][0]["reason"], "MISSING", "refused requests wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_start_task_never_over_commits() {
    let s = Arc::new(start(Auth::Disabled).await);
    let arn = cluster_with_instance(&s, "busy", 1000, 100_000).await;
    taskdef(&s, "job", 30, 10).await;
    let mut handles = Vec::new();
    for _ in 0..48 {
        let (s, arn) = (s.clone(), arn.clone());
        handles.push(tokio::spawn(async move {
            let v = s
                .ok(
                    "StartTask",
                    json!({"cluster": "busy", "taskDefinition": "job", "containerInstances": [arn]}),
                )
                .await;
            v["tasks"].as_array().unwrap().clone()
        }));
    }
    let mut tasks = Vec::new();
    for h in handles {
        tasks.extend(h.await.unwrap());
    }
    assert_eq!(tasks.len(), 33, "1000 CPU units hold exactly 33 tasks of 30");
    let ports: BTreeSet<u64> = tasks
        .iter()
        .map(|t| t["containers"][0]["networkBindings"][0]["hostPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 33, "every task got its own dynamic host port");
    let ci = s
        .ok(
            "DescribeContainerInstances",
            json!({"cluster": "busy", "containerInstances": [arn]}),
        )
        .await;
    let cpu_left = ci["containerInstances"][0]["remainingResources"][0]["integerValue"].as_u64();
    assert_eq!(cpu_left, Some(10));
    let c = s.ok("DescribeClusters", json!({"clusters": ["busy"]})).await;
    assert_eq!(
        c["clusters"][0]["pendingTasksCount"], 33,
        "placed tasks count as pending until they run"
    );
    assert_eq!(c["clusters"][0]["registeredContainerInstancesCount"], 1);
}

async fn list_all(s: &TestServer, cluster: &str, page: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({"cluster": cluster, "maxResults": page});
        if let Some(t) = &token {
            req["nextToken"] = json!(t);
        }
        let v = s.ok("ListTasks", req).await;
        out.extend(
            v["taskArns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
        match v.get("nextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_is_stable_under_concurrent_writes() {
    let s = Arc::new(start(Auth::Disabled).await);
    cluster_with_instance(&s, "pages", 100_000, 100_000).await;
    taskdef(&s, "p", 1, 6).await;
    for _ in 0..6 {
        s.ok(
            "RunTask",
            json!({"cluster": "pages", "taskDefinition": "p", "count": 10}),
        )
        .await;
    }
    let before: BTreeSet<String> = list_all(&s, "pages", 100).await.into_iter().collect();
    assert_eq!(before.len(), 60);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                s.ok(
                    "RunTask",
                    json!({"cluster": "pages", "taskDefinition": "p", "count": 3}),
                )
                .await;
            }
        })
    };
    let seen = list_all(&s, "pages", 7).await;
    writer.await.unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no task is listed twice");
    assert!(
        before.is_subset(&unique),
        "every task that existed throughout is listed"
    );
    assert_eq!(list_all(&s, "pages", 100).await.len(), 120);
}

#[tokio::test]
async fn stop_moves_tasks_between_indexes_and_unblocks_cluster_deletion() {
    let s = start(Auth::Disabled).await;
    let arn = cluster_with_instance(&s, "gone", 1024, 1024).await;
    taskdef(&s, "t", 1, 6).await;
    let run = s
        .ok(
            "RunTask",
            json!({"cluster": "gone", "taskDefinition": "t", "count": 2, "startedBy": "me/ci"}),
        )
        .await;
    let ids: Vec<String> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskArn"].as_str().unwrap().to_string())
        .collect();
    let listed = s
        .ok("ListTasks", json!({"cluster": "gone", "startedBy": "me/ci"}))
        .await;
    assert_eq!(
        listed["taskArns"].as_array().unwrap().len(),
        2,
        "startedBy with a slash is indexed"
    );
    let (_, t, _) = s.err("DeleteCluster", json!({"cluster": "gone"})).await;
    assert_eq!(t, "ClusterContainsContainerInstancesException");
    s.ok(
        "DeregisterContainerInstance",
        json!({"cluster": "gone", "containerInstance": arn, "force": true}),
    )
    .await;
    let (_, t, _) = s.err("DeleteCluster", json!({"cluster": "gone"})).await;
    assert_eq!(t, "ClusterContainsTasksException");
    for id in &ids {
        let v = s.ok("StopTask", json!({"cluster": "gone", "task": id})).await;
        assert_eq!(v["task"]["lastStatus"], "STOPPED", "an unplaced task stops at once");
    }
    let stopped = s
        .ok("ListTasks", json!({"cluster": "gone", "desiredStatus": "STOPPED"}))
        .await;
    assert_eq!(stopped["taskArns"].as_array().unwrap().len(), 2);
    let running = s.ok("ListTasks", json!({"cluster": "gone"})).await;
    assert_eq!(running["taskArns"].as_array().unwrap().len(), 0);
    let pending = s
        .store
        .range(berth_store::RangeRequest::prefix(berth_records::keys::pending_in(
            "gone",
        )))
        .await
        .unwrap();
    assert!(pending.kvs.is_empty(), "stopped tasks leave the launcher's queue");
    let v = s.ok("DeleteCluster", json!({"cluster": "gone"})).await;
    assert_eq!(v["cluster"]["status"], "INACTIVE");
    let (_, t, _) = s
        .err("RunTask", json!({"cluster": "gone", "taskDefinition": "t"}))
        .await;
    assert_eq!(t, "ClusterNotFoundException");
}

#[tokio::test]
async fn run_task_queues_provisioning_tasks_for_the_launcher() {
    let s = start(Auth::Disabled).await;
    cluster_with_instance(&s, "q", 1024, 1024).await;
    taskdef(&s, "t", 1, 6).await;
    let v = s
        .ok("RunTask", json!({"cluster": "q", "taskDefinition": "t:1", "count": 3}))
        .await;
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    let pending = s
        .store
        .range(berth_store::RangeRequest::prefix(berth_records::keys::PENDING))
        .await
        .unwrap();
    assert_eq!(pending.kvs.len(), 3);
    for kv in &pending.kvs {
        let task_key = kv.value.clone();
        let task = s.store.get(&task_key).await.unwrap().expect("pending points at a task");
        let t: berth_model::Task = serde_json::from_slice(&task.value).unwrap();
        assert_eq!(t.last_status, berth_model::TaskStatus::Provisioning);
        assert!(t.container_instance.is_none());
    }
}

/// What registration accepts comes back in DescribeContainerInstances: GPU
/// and NETWORK are listed for instances that registered them, only.
#[tokio::test]
async fn gpu_and_network_resources_are_described_when_registered() {
    let s = start(Auth::Disabled).await;
    s.ok("CreateCluster", json!({"clusterName": "g"})).await;
    let ci = s
        .ok(
            "RegisterContainerInstance",
            json!({"cluster": "g", "totalResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": 2048},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": 4096},
                {"name": "GPU", "type": "INTEGER", "integerValue": 2},
                {"name": "NETWORK", "type": "INTEGER", "integerValue": 1000}]}),
        )
        .await;
    let arn = ci["containerInstance"]["containerInstanceArn"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = cluster_with_instance(&s, "p", 1024, 2048).await;
    let value = |list: &Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["integerValue"].as_u64().unwrap())
    };
    let d = s
        .ok(
            "DescribeContainerInstances",
            json!({"cluster": "g", "containerInstances": [arn]}),
        )
        .await;
    for member in ["registeredResources", "remainingResources"] {
        let r = &d["containerInstances"][0][member];
        assert_eq!(value(r, "GPU"), Some(2), "{member}: {r}");
        assert_eq!(value(r, "NETWORK"), Some(1000), "{member}: {r}");
        assert_eq!(value(r, "CPU"), Some(2048), "{member}: {r}");
    }
    let d = s
        .ok(
            "DescribeContainerInstances",
            json!({"cluster": "p", "containerInstances": [plain]}),
        )
        .await;
    let r = &d["containerInstances"][0]["registeredResources"];
    assert_eq!((value(r, "GPU"), value(r, "NETWORK")), (None, None), "{r}");
}
