//! A server on 127.0.0.1:0 over a MemoryStore, and a small JSON 1.1 client.

// Test helpers: a failed setup step should panic the test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use berth_server::{Auth, ServerConfig, TARGET_PREFIX};
use berth_store::{DynStore, MemoryStore};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: DynStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// How a request is signed.
#[derive(Clone)]
pub enum Signing {
    None,
    Key {
        id: String,
        secret: String,
        region: String,
        skew_secs: i64,
    },
}

pub async fn start(auth: Auth) -> TestServer {
    let store: DynStore = Arc::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        auth,
        max_body_bytes: 64 * 1024,
        ..ServerConfig::default()
    };
    let s = store.clone();
    tokio::spawn(async move {
        berth_server::run(listener, s, config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        addr,
        store,
        stop: Some(tx),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    }
}

impl TestServer {
    /// Sends raw bytes; returns status, error type header and JSON body.
    pub async fn raw(&self, op: &str, body: Vec<u8>, signing: &Signing) -> (u16, Option<String>, Value) {
        let mut headers = HeaderMap::new();
        headers.insert("host", self.addr.to_string().parse().unwrap());
        headers.insert("x-amz-target", format!("{TARGET_PREFIX}{op}").parse().unwrap());
        headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
        if let Signing::Key {
            id,
            secret,
            region,
            skew_secs,
        } = signing
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            berth_server::auth::sigv4::sign(&mut headers, &body, id, secret, region, now + skew_secs).unwrap();
        }
        let mut req = http::Request::post(format!("http://{}/", self.addr));
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, kind, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Calls an operation unsigned and expects success.
    pub async fn ok(&self, op: &str, body: Value) -> Value {
        let (status, kind, v) = self.raw(op, body.to_string().into_bytes(), &Signing::None).await;
        assert_eq!(status, 200, "{op} failed: {kind:?} {v}");
        v
    }

    /// Calls an operation unsigned and expects a client error; returns (type, message).
    pub async fn err(&self, op: &str, body: Value) -> (u16, String, String) {
        let (status, kind, v) = self.raw(op, body.to_string().into_bytes(), &Signing::None).await;
        assert_ne!(status, 200, "{op} unexpectedly succeeded: {v}");
        assert_eq!(kind.as_deref(), v["__type"].as_str(), "header and body agree");
        (
            status,
            v["__type"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
        )
    }
}

/// A cluster with one instance of `cpu`/`memory` and a task definition `family`.
pub async fn cluster_with_instance(s: &TestServer, cluster: &str, cpu: u64, memory: u64) -> String {
    s.ok("CreateCluster", serde_json::json!({"clusterName": cluster})).await;
    let ci = s
        .ok(
            "RegisterContainerInstance",
            serde_json::json!({"cluster": cluster, "totalResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": memory}]}),
        )
        .await;
    ci["containerInstance"]["containerInstanceArn"]
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn taskdef(s: &TestServer, family: &str, cpu: u64, memory: u64) {
    s.ok(
        "RegisterTaskDefinition",
        serde_json::json!({"family": family, "containerDefinitions": [
            {"name": "app", "image": "busybox", "cpu": cpu, "memory": memory,
             "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await;
}
