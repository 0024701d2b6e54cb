//! Discovery against a real store and real sockets: records written to a
//! memory store show up in DNS (UDP and TCP) and in the HTTP listing, and
//! task state changes are reflected as soon as the watch delivers them.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_dns::{Answer, Discovery, DnsConfig, DnsServer, RecordType, ResponseCode, Transport, query};
use berth_store::{DynStore, MemoryStore, StoreExt};
use serde_json::{Value, json};

const TD: &str = "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1";
const TD_HC: &str = "arn:aws:ecs:us-east-1:123456789012:task-definition/checked:1";

fn instance(id: &str, ip: &str) -> Value {
    json!({
        "id": id, "cluster": "default", "ec2InstanceId": id, "status": "ACTIVE", "agentConnected": true,
        "registered": {"cpu": 1024, "memoryMib": 1024}, "remaining": {"cpu": 1024, "memoryMib": 1024},
        "portRange": [61000, 62000], "registeredAt": 1.0,
        "attributes": {"berth.host-ip": ip, "ecs.availability-zone": format!("zone-{id}")}
    })
}

fn taskdef(family: &str, arn: &str, health: bool) -> Value {
    let mut c = json!({"name": "app", "image": "x", "portMappings": [{"containerPort": 8080}]});
    if health {
        c["healthCheck"] = json!({"command": ["CMD", "true"]});
    }
    json!({"family": family, "revision": 1, "taskDefinitionArn": arn,
           "containerDefinitions": [{"name": "sidecar", "image": "y", "essential": false,
                                     "portMappings": [{"containerPort": 9}]}, c]})
}

fn service(name: &str, td: &str) -> Value {
    json!({"serviceName": name, "serviceArn": format!("arn:aws:ecs:us-east-1:123456789012:service/default/{name}"),
           "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/default", "status": "ACTIVE",
           "taskDefinition": td, "desiredCount": 2, "createdAt": 1.0})
}

fn task(id: &str, svc: &str, td: &str, ci: &str, port: u16, status: &str, health: &str) -> Value {
    json!({"id": id, "taskArn": format!("arn:aws:ecs:us-east-1:123456789012:task/default/{id}"),
    "cluster": "default", "taskDefinitionArn": td, "containerInstance": ci,
    "lastStatus": status, "desiredStatus": "RUNNING", "healthStatus": health,
    "group": format!("service:{svc}"), "startedBy": "ecs-svc/1", "createdAt": 1.0,
    "demand": {"cpu": 1, "memoryMib": 1},
    "containers": [
        {"name": "sidecar", "lastStatus": status, "networkBindings": [{"containerPort": 9, "hostPort": 1}]},
        {"name": "app", "lastStatus": status, "networkBindings": [{"containerPort": 8080, "hostPort": port}]}
    ]})
}

async fn put(store: &DynStore, key: &str, v: &Value) {
    store.put(key.as_bytes(), v.to_string().as_bytes()).await.unwrap();
}

async fn srv_ports(dns: SocketAddr, name: &str, transport: Transport) -> Option<Vec<u16>> {
    let r = query(dns, name, RecordType::SRV, transport).await.unwrap();
    if r.code != ResponseCode::NoError {
        return None;
    }
    let mut ports: Vec<u16> = r
        .answers
        .iter()
        .filter_map(|a| match a {
            Answer::Srv { port, .. } => Some(*port),
            Answer::Addr(_) => None,
        })
        .collect();
    ports.sort();
    Some(ports)
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dns_and_http_follow_the_store() {
    let store: DynStore = Arc::new(MemoryStore::new());
    put(&store, "/instances/default/i1", &instance("i1", "10.0.0.1")).await;
    put(&store, "/instances/default/i2", &instance("i2", "10.0.0.2")).await;
    put(&store, "/taskdefs/web/0000000001", &taskdef("web", TD, false)).await;
    put(&store, "/taskdefs/checked/0000000001", &taskdef("checked", TD_HC, true)).await;
    put(&store, "/services/default/web", &service("web", TD)).await;
    put(&store, "/services/default/checked", &service("checked", TD_HC)).await;
    put(
        &store,
        "/tasks/default/aaa",
        &task("aaa", "web", TD, "i1", 61001, "RUNNING", "UNKNOWN"),
    )
    .await;
    put(
        &store,
        "/tasks/default/bbb",
        &task("bbb", "web", TD, "i2", 61002, "RUNNING", "UNKNOWN"),
    )
    .await;
    put(
        &store,
        "/tasks/default/ccc",
        &task("ccc", "web", TD, "i2", 61003, "PENDING", "UNKNOWN"),
    )
    .await;
    // With a health check, UNKNOWN is not good enough.
    put(
        &store,
        "/tasks/default/ddd",
        &task("ddd", "checked", TD_HC, "i1", 61004, "RUNNING", "UNKNOWN"),
    )
    .await;

    let discovery = Discovery::new();
    let follower = tokio::spawn(discovery.clone().follow(store.clone(), std::future::pending()));
    let server = DnsServer::start(
        discovery.clone(),
        DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            domain: Some("berth".into()),
        },
    )
    .await
    .unwrap();
    let dns = server.local_addr;
    assert_ne!(dns.port(), 0);

    // SRV for both name forms, over UDP and TCP, with the domain suffix too.
    eventually("the initial load", || async {
        srv_ports(dns, "web.default.", Transport::Udp).await == Some(vec![61001, 61002])
    })
    .await;
    for (name, transport) in [
        ("_web._tcp.default.", Transport::Udp),
        ("web.default.", Transport::Tcp),
        ("_web._tcp.default.berth.", Transport::Tcp),
        ("WEB.Default.berth.", Transport::Udp),
    ] {
        assert_eq!(
            srv_ports(dns, name, transport).await,
            Some(vec![61001, 61002]),
            "{name}"
        );
    }
    let r = query(dns, "web.default.berth.", RecordType::SRV, Transport::Udp)
        .await
        .unwrap();
    assert!(r.ttls.iter().all(|t| *t == 1), "{r:?}");
    let targets: Vec<String> = r
        .answers
        .iter()
        .filter_map(|a| match a {
            Answer::Srv {
                target,
                priority: 0,
                weight: 1,
                ..
            } => Some(target.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, vec!["aaa.web.default.berth.", "bbb.web.default.berth."]);
    assert!(
        r.additional
            .contains(&("aaa.web.default.berth.".into(), "10.0.0.1".parse().unwrap()))
    );

    // A records: one per host; per-task names resolve.
    let r = query(dns, "web.default.", RecordType::A, Transport::Udp).await.unwrap();
    let mut ips = r.answers.clone();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            Answer::Addr("10.0.0.1".parse().unwrap()),
            Answer::Addr("10.0.0.2".parse().unwrap())
        ]
    );
    let r = query(dns, "bbb.web.default.", RecordType::A, Transport::Tcp)
        .await
        .unwrap();
    assert_eq!(r.answers, vec![Answer::Addr("10.0.0.2".parse::<IpAddr>().unwrap())]);

    // Unknown names: NXDOMAIN; known name, other type: empty NOERROR.
    for name in [
        "nope.default.",
        "web.other.",
        "zzz.web.default.",
        "a.b.c.d.",
        "default.",
    ] {
        let r = query(dns, name, RecordType::A, Transport::Udp).await.unwrap();
        assert_eq!(r.code, ResponseCode::NXDomain, "{name}");
    }
    let r = query(dns, "web.default.", RecordType::MX, Transport::Udp)
        .await
        .unwrap();
    assert_eq!((r.code, r.answers.len()), (ResponseCode::NoError, 0));
    // The checked service exists but has no healthy task yet.
    assert_eq!(srv_ports(dns, "checked.default.", Transport::Udp).await, Some(vec![]));

    // Changes show up from the watch: a task turns healthy, one stops, one starts.
    put(
        &store,
        "/tasks/default/ddd",
        &task("ddd", "checked", TD_HC, "i1", 61004, "RUNNING", "HEALTHY"),
    )
    .await;
    put(
        &store,
        "/tasks/default/aaa",
        &task("aaa", "web", TD, "i1", 61001, "STOPPED", "UNKNOWN"),
    )
    .await;
    put(
        &store,
        "/tasks/default/ccc",
        &task("ccc", "web", TD, "i2", 61003, "RUNNING", "UNKNOWN"),
    )
    .await;
    eventually("the changes", || async {
        srv_ports(dns, "web.default.", Transport::Udp).await == Some(vec![61002, 61003])
            && srv_ports(dns, "checked.default.", Transport::Tcp).await == Some(vec![61004])
    })
    .await;
    let r = query(dns, "aaa.web.default.", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(r.code, ResponseCode::NXDomain);

    // The HTTP listing has the same data.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = berth_dns::router(discovery.clone());
    let http = tokio::spawn(async move { axum::serve(listener, app).await });
    let v: Value = reqwest::get(format!("{url}/v1/discovery/default/web"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<(String, String, u64, String)> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["taskArn"].as_str().unwrap().rsplit('/').next().unwrap().to_string(),
                t["ip"].as_str().unwrap().to_string(),
                t["port"].as_u64().unwrap(),
                t["health"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("bbb".into(), "10.0.0.2".into(), 61002, "UNKNOWN".into()),
            ("ccc".into(), "10.0.0.2".into(), 61003, "UNKNOWN".into())
        ]
    );
    let missing = reqwest::get(format!("{url}/v1/discovery/default/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
    // The error type and message; the server's layer renders the JSON body.
    let kind = missing.headers().get("x-amzn-errortype").cloned();
    assert_eq!(
        kind.as_ref().and_then(|v| v.to_str().ok()),
        Some("ServiceNotFoundException")
    );
    let message = missing.text().await.unwrap();
    assert!(message.contains("service nope not found"), "{message}");

    http.abort();
    server.stop();
    follower.abort();
}

/// How long a task state change takes to show in DNS: store write → the
/// UDP answer changes. Printed as JSON (a figure, not asserted).
#[tokio::test]
async fn dns_update_latency() {
    let store: DynStore = Arc::new(MemoryStore::new());
    put(&store, "/instances/default/i1", &instance("i1", "10.0.0.1")).await;
    put(&store, "/taskdefs/web/0000000001", &taskdef("web", TD, false)).await;
    put(&store, "/services/default/web", &service("web", TD)).await;
    let discovery = Discovery::new();
    let follower = tokio::spawn(discovery.clone().follow(store.clone(), std::future::pending()));
    let server = DnsServer::start(
        discovery.clone(),
        DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            domain: None,
        },
    )
    .await
    .unwrap();
    let dns = server.local_addr;
    let mut micros = Vec::new();
    for i in 0..50u16 {
        let status = if i % 2 == 0 { "RUNNING" } else { "STOPPED" };
        let want = if i % 2 == 0 { vec![61000 + i] } else { vec![] };
        let t = task("t", "web", TD, "i1", 61000 + i, status, "UNKNOWN");
        let start = Instant::now();
        put(&store, "/tasks/default/t", &t).await;
        loop {
            if srv_ports(dns, "web.default.", Transport::Udp).await == Some(want.clone()) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "change {i} never showed");
        }
        micros.push(start.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();
    let pct = |p: usize| micros[(micros.len() - 1) * p / 100] as f64 / 1000.0;
    println!(
        "{}",
        json!({"bench": "dns_update_latency", "changes": micros.len(),
               "scope": "memory store put -> UDP SRV answer reflects it (query loop, debug build)",
               "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100)})
    );
    server.stop();
    follower.abort();
}
