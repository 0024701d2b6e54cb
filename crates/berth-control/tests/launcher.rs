//! The launcher against the real API over HTTP: tasks run through RunTask
//! get placed within each instance's capacity with distinct host ports; a
//! task that does not fit waits with its reasons and is placed as soon as
//! capacity arrives; two launchers and parallel StartTask callers racing for
//! the same instances never over-commit one; tiers (`berth:tier` tags) and
//! capacity guarantees (`berth:guarantee:GROUP` cluster tags) order what is
//! placed when capacity is short.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_control::{Launcher, LauncherConfig};
use berth_store::{DynStore, Journal};
use serde_json::{Value, json};

struct Api {
    url: String,
    http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Api {
    async fn start(store: DynStore) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(berth_server::run(
            listener,
            store,
            berth_server::ServerConfig::default(),
            async move {
                let _ = rx.await;
            },
        ));
        Api {
            url,
            http: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    async fn call(&self, op: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(&self.url)
            .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{op} failed: {status} {v}");
        v
    }

    async fn try_call(&self, op: &str, body: Value) -> (bool, Value) {
        let resp = self
            .http
            .post(&self.url)
            .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let ok = resp.status().is_success();
        (ok, resp.json().await.unwrap())
    }

    async fn register_instance(&self, cpu: i64, mem: i64, zone: &str) -> String {
        let v = self
            .call(
                "RegisterContainerInstance",
                json!({"cluster": "c",
                       "totalResources": [
                           {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
                           {"name": "MEMORY", "type": "INTEGER", "integerValue": mem}],
                       "attributes": [{"name": "ecs.availability-zone", "value": zone}]}),
            )
            .await;
        v["containerInstance"]["containerInstanceArn"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn tasks(&self) -> Vec<Value> {
        let list = self.call("ListTasks", json!({"cluster": "c", "maxResults": 100})).await;
        let arns = list["taskArns"].as_array().unwrap().clone();
        if arns.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for chunk in arns.chunks(100) {
            let d = self
                .call("DescribeTasks", json!({"cluster": "c", "tasks": chunk}))
                .await;
            out.extend(d["tasks"].as_array().unwrap().iter().cloned());
        }
        out
    }

    async fn wait_placed(&self, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tasks = self.tasks().await;
            let placed = tasks.iter().filter(|t| t["containerInstanceArn"].is_string()).count();
            if placed >= want {
                return tasks;
            }
            assert!(
                Instant::now() < deadline,
                "only {placed} of {want} tasks placed: {tasks:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn spawn_launcher(store: DynStore, seed: u64) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        Launcher::new(store, LauncherConfig { seed })
            .run(async move {
                let _ = rx.await;
            })
            .await
            .expect("launcher");
    });
    tx
}

/// Sum of placed demand per instance never exceeds what it registered, and
/// no host port is handed out twice on one instance.
fn assert_no_overcommit(tasks: &[Value], capacity: &BTreeMap<String, (i64, i64)>) {
    let mut used: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut ports: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for t in tasks {
        let Some(ci) = t["containerInstanceArn"].as_str() else {
            continue;
        };
        let cpu: i64 = t["cpu"].as_str().unwrap().parse().unwrap();
        let mem: i64 = t["memory"].as_str().unwrap().parse().unwrap();
        let e = used.entry(ci.to_string()).or_default();
        e.0 += cpu;
        e.1 += mem;
        for c in t["containers"].as_array().unwrap() {
            for b in c["networkBindings"].as_array().into_iter().flatten() {
                let p = b["hostPort"].as_i64().unwrap();
                assert!(
                    ports.entry(ci.to_string()).or_default().insert(p),
                    "host port {p} given twice on {ci}"
                );
            }
        }
    }
    for (ci, (cpu, mem)) in used {
        let (ccpu, cmem) = capacity[&ci];
        assert!(
            cpu <= ccpu && mem <= cmem,
            "{ci} over-committed: {cpu}/{ccpu} CPU, {mem}/{cmem} MiB"
        );
    }
}

async fn setup(api: &Api) {
    api.call("CreateCluster", json!({"clusterName": "c"})).await;
    api.call(
        "RegisterTaskDefinition",
        json!({"family": "web", "containerDefinitions": [
            {"name": "app", "image": "berth-testapp", "cpu": 512, "memory": 1024,
             "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_within_capacity_and_waits_for_more() {
    let store: DynStore = Arc::new(Journal::new());
    let api = Api::start(store.clone()).await;
    setup(&api).await;
    let mut capacity = BTreeMap::new();
    for zone in ["us-east-1a", "us-east-1b"] {
        capacity.insert(api.register_instance(1024, 2048, zone).await, (1024, 2048));
    }
    let _l = spawn_launcher(store.clone(), 1);
    // 4 fit (2 per instance); the 5th must wait.
    let run = api
        .call("RunTask", json!({"cluster": "c", "taskDefinition": "web", "count": 5}))
        .await;
    assert_eq!(run["tasks"].as_array().unwrap().len(), 5, "{run}");
    let tasks = api.wait_placed(4).await;
    assert_no_overcommit(&tasks, &capacity);
    let waiting: Vec<&Value> = tasks.iter().filter(|t| t["containerInstanceArn"].is_null()).collect();
    assert_eq!(waiting.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = api
            .tasks()
            .await
            .into_iter()
            .find(|t| t["containerInstanceArn"].is_null())
            .unwrap();
        let reasons = t["pendingReasons"].as_array().cloned().unwrap_or_default();
        if !reasons.is_empty() {
            let text = reasons
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join("; ");
            assert!(
                text.contains("RESOURCE:CPU") || text.contains("RESOURCE:MEMORY"),
                "{text}"
            );
            assert!(text.contains("2 instances"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no pending reasons on the waiting task: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New capacity: the waiting task is placed without any other nudge.
    capacity.insert(api.register_instance(1024, 2048, "us-east-1c").await, (1024, 2048));
    let tasks = api.wait_placed(5).await;
    assert_no_overcommit(&tasks, &capacity);
    // The instance records agree with the tasks.
    let d = api
        .call(
            "DescribeContainerInstances",
            json!({"cluster": "c", "containerInstances": capacity.keys().collect::<Vec<_>>()}),
        )
        .await;
    let remaining_cpu: i64 = d["containerInstances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ci| {
            ci["remainingResources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "CPU")
                .unwrap()["integerValue"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(remaining_cpu, 3 * 1024 - 5 * 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_launchers_and_start_task_never_overcommit() {
    let store: DynStore = Arc::new(Journal::new());
    let api = Arc::new(Api::start(store.clone()).await);
    setup(&api).await;
    let mut capacity = BTreeMap::new();
    for i in 0..4 {
        capacity.insert(
            api.register_instance(2048, 4096, &format!("zone-{i}")).await,
            (2048, 4096),
        );
    }
    let instances: Vec<String> = capacity.keys().cloned().collect();
    // 4 instances x 4 slots = 16 slots; two launchers and StartTask callers race for them.
    let _a = spawn_launcher(store.clone(), 11);
    let _b = spawn_launcher(store.clone(), 22);
    let mut callers = Vec::new();
    for i in 0..6 {
        let api = api.clone();
        let target = instances[i % instances.len()].clone();
        callers.push(tokio::spawn(async move {
            if i % 2 == 0 {
                api.call("RunTask", json!({"cluster": "c", "taskDefinition": "web", "count": 2}))
                    .await;
                0
            } else {
                let (ok, v) = api
                    .try_call(
                        "StartTask",
                        json!({"cluster": "c", "taskDefinition": "web", "containerInstances": [target]}),
                    )
                    .await;
                if ok {
                    v["tasks"].as_array().map_or(0, |t| t.len())
                } else {
                    0
                }
            }
        }));
    }
    let mut started = 0;
    for c in callers {
        started += c.await.unwrap();
    }
    let tasks = api.wait_placed(6 + started).await;
    assert_no_overcommit(&tasks, &capacity);
    // Fill the rest of the cluster exactly, then one more must wait.
    let left = 16 - (6 + started);
    if left > 0 {
        api.call(
            "RunTask",
            json!({"cluster": "c", "taskDefinition": "web", "count": left}),
        )
        .await;
    }
    let tasks = api.wait_placed(16).await;
    assert_no_overcommit(&tasks, &capacity);
    assert_eq!(
        tasks.iter().filter(|t| t["containerInstanceArn"].is_string()).count(),
        16
    );
}

/// The groups of the placed tasks, and of the waiting ones.
fn groups(tasks: &[Value]) -> (Vec<String>, Vec<String>) {
    let (mut placed, mut waiting) = (Vec::new(), Vec::new());
    for t in tasks {
        let g = t["group"].as_str().unwrap().to_string();
        if t["containerInstanceArn"].is_string() {
            placed.push(g);
        } else {
            waiting.push(g);
        }
    }
    placed.sort();
    waiting.sort();
    (placed, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_tier_tasks_are_placed_before_flex_ones() {
    let store: DynStore = Arc::new(Journal::new());
    let api = Api::start(store.clone()).await;
    setup(&api).await;
    // A bad tier is refused, naming the tag.
    let (ok, err) = api
        .try_call(
            "RunTask",
            json!({"cluster": "c", "taskDefinition": "web",
                   "tags": [{"key": "team", "value": "x"}, {"key": "berth:tier", "value": "gold"}]}),
        )
        .await;
    assert!(!ok);
    assert_eq!(err["__type"], "InvalidParameterException");
    assert!(err["message"].as_str().unwrap().contains("tags[1].value"), "{err}");
    // Room for two tasks; four queued before the launcher runs: two flex
    // batch tasks, then the two tasks of a critical service (started by the
    // reconciler). The critical ones are placed, the flex ones wait.
    api.register_instance(1024, 2048, "us-east-1a").await;
    api.call(
        "RunTask",
        json!({"cluster": "c", "taskDefinition": "web", "count": 2, "group": "batch",
               "tags": [{"key": "berth:tier", "value": "flex"}]}),
    )
    .await;
    api.call(
        "CreateService",
        json!({"cluster": "c", "serviceName": "web", "taskDefinition": "web", "desiredCount": 2,
               "tags": [{"key": "berth:tier", "value": "critical"}]}),
    )
    .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_control::Reconciler::new(store.clone()).run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.tasks().await.len() < 4 {
        assert!(Instant::now() < deadline, "the service's tasks were not started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _l = spawn_launcher(store.clone(), 1);
    let tasks = api.wait_placed(2).await;
    assert_eq!(
        groups(&tasks),
        (
            vec!["service:web".into(), "service:web".into()],
            vec!["batch".into(), "batch".into()]
        )
    );
    drop(stop_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_under_its_capacity_guarantee_goes_first() {
    let store: DynStore = Arc::new(Journal::new());
    let api = Api::start(store.clone()).await;
    setup(&api).await;
    let cluster = api.call("DescribeClusters", json!({"clusters": ["c"]})).await["clusters"][0]["clusterArn"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, err) = api
        .try_call(
            "TagResource",
            json!({"resourceArn": cluster, "tags": [{"key": "berth:guarantee:b", "value": "cpu=lots"}]}),
        )
        .await;
    assert!(!ok);
    assert!(err["message"].as_str().unwrap().contains("tags[0]"), "{err}");
    api.call(
        "TagResource",
        json!({"resourceArn": cluster,
               "tags": [{"key": "berth:guarantee:b", "value": "tier=1,cpu=1024,memory=2048"}]}),
    )
    .await;
    // Room for two tasks; group a queued first, but b is under its guarantee.
    api.register_instance(1024, 2048, "us-east-1a").await;
    for group in ["a", "b"] {
        api.call(
            "RunTask",
            json!({"cluster": "c", "taskDefinition": "web", "count": 2, "group": group}),
        )
        .await;
    }
    let _l = spawn_launcher(store.clone(), 1);
    let tasks = api.wait_placed(2).await;
    assert_eq!(
        groups(&tasks),
        (vec!["b".into(), "b".into()], vec!["a".into(), "a".into()])
    );
}
