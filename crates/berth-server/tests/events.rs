//! The cluster event stream: every change arrives as a server-sent event
//! whose id is its revision, and a client that reconnects with
//! `Last-Event-ID` gets exactly the changes it missed.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use berth_store::{DynStore, Journal};
use futures::StreamExt;
use serde_json::{Value, json};

async fn call(http: &reqwest::Client, url: &str, op: &str, body: Value) -> Value {
    let resp = http
        .post(url)
        .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    resp.json().await.unwrap()
}

/// Reads SSE frames until one whose data mentions `needle`; returns (id, event, data).
async fn next_matching(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    needle: &str,
) -> (i64, String, Value) {
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (0, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if data.contains(needle) {
                return (id, event, serde_json::from_str(&data).unwrap());
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within the deadline")
            .expect("stream open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_events_stream_and_resume() {
    let store: DynStore = Arc::new(Journal::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(berth_server::run(
        listener,
        store,
        berth_server::ServerConfig::default(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    call(&http, &url, "CreateCluster", json!({"clusterName": "c"})).await;
    call(&http, &url, "CreateCluster", json!({"clusterName": "other"})).await;
    for c in ["c", "other"] {
        call(
            &http,
            &url,
            "RegisterContainerInstance",
            json!({"cluster": c, "totalResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": 1024},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": 1024}]}),
        )
        .await;
    }
    call(
        &http,
        &url,
        "RegisterTaskDefinition",
        json!({"family": "web", "containerDefinitions": [{"name": "a", "image": "i", "memory": 64}]}),
    )
    .await;

    let resp = http.get(format!("{url}/v1/clusters/c/events")).send().await.unwrap();
    assert!(resp.status().is_success());
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    // A task in another cluster is not this stream's business.
    call(
        &http,
        &url,
        "RunTask",
        json!({"cluster": "other", "taskDefinition": "web"}),
    )
    .await;
    let run = call(&http, &url, "RunTask", json!({"cluster": "c", "taskDefinition": "web"})).await;
    let arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_string();
    let id = arn.rsplit('/').next().unwrap().to_string();
    let (rev, event, data) = next_matching(&mut stream, &mut buf, "\"type\":\"task\"").await;
    assert_eq!(event, "task");
    assert_eq!(
        data["record"]["id"],
        id.as_str(),
        "the first task event is this cluster's task: {data}"
    );
    assert_eq!(data["revision"], rev);
    drop(stream);

    // Missed while disconnected: the stop. Resuming from the last id brings it.
    call(&http, &url, "StopTask", json!({"cluster": "c", "task": arn})).await;
    let resp = http
        .get(format!("{url}/v1/clusters/c/events"))
        .header("Last-Event-ID", rev.to_string())
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (rev2, _, data) = next_matching(&mut stream, &mut buf, "\"type\":\"task\"").await;
    assert!(rev2 > rev);
    assert_eq!(data["record"]["desiredStatus"], "STOPPED", "{data}");
}
