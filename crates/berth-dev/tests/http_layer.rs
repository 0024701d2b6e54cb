//! Every route of the server sits behind one authentication-and-error
//! layer: the ECS API, the load balancer API, the service plan and the
//! discovery listing refuse a bad or missing signature with the same 403
//! and the same `{__type, message}` body, and a route's own error comes back
//! in that shape too. Served exactly as `berth server` composes it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::Arc;

use berth_client::{Client, ClientError, Keys, Settings};
use berth_server::{Auth, Credentials, ServerConfig};
use berth_store::{DynStore, MemoryStore};
use serde_json::{Value, json};

struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start() -> Server {
    let creds =
        Credentials::parse("[default]\naws_access_key_id = AKIDLAYER\naws_secret_access_key = right\n").unwrap();
    let config = ServerConfig {
        auth: Auth::SigV4(creds),
        ..ServerConfig::default()
    };
    let store: DynStore = Arc::new(MemoryStore::new());
    let discovery = berth_dns::Discovery::new();
    let app = berth_dev::server_app(store, config, Default::default(), &discovery);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Server { url, stop: Some(tx) }
}

fn client(url: &str, secret: &str) -> Client {
    Client::new(Settings {
        endpoint: url.to_string(),
        region: "us-east-1".into(),
        cluster: "default".into(),
        keys: Some(Keys {
            access_key_id: "AKIDLAYER".into(),
            secret_access_key: secret.into(),
            source: "test".into(),
        }),
    })
    .unwrap()
}

fn kind_and_status(r: Result<Value, ClientError>) -> (String, u16) {
    match r {
        Err(ClientError::Api { kind, status, .. }) => (kind, status),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Status, `x-amzn-errortype` and the JSON body of an unsigned request.
async fn unsigned(method: reqwest::Method, url: String) -> (u16, String, Value) {
    let resp = reqwest::Client::new()
        .request(method, url)
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, kind, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_bad_signature_gets_the_same_403_on_every_route() {
    let s = start().await;
    let bad = client(&s.url, "wrong");
    let plan = bad
        .extension(
            "/v1/services/plan",
            "service plans",
            &json!({"service": "web", "desiredCount": 3}),
        )
        .await;
    let want = ("InvalidSignatureException".to_string(), 403);
    assert_eq!(kind_and_status(plan), want, "the plan route");
    assert_eq!(
        kind_and_status(bad.call("ListClusters", &json!({})).await),
        want,
        "the ECS API"
    );
    let elb = bad
        .extension("/v1/elb/DescribeTargetGroups", "load balancers", &json!({}))
        .await;
    assert_eq!(kind_and_status(elb), want, "the load balancer API");
}

#[tokio::test]
async fn a_missing_signature_gets_the_same_body_everywhere() {
    let s = start().await;
    let routes = [
        (reqwest::Method::POST, "/v1/services/plan"),
        (reqwest::Method::GET, "/v1/discovery/default/web"),
        (reqwest::Method::GET, "/v1/clusters/default/events"),
        (reqwest::Method::POST, "/v1/elb/DescribeTargetGroups"),
    ];
    for (method, path) in routes {
        let (status, kind, body) = unsigned(method, format!("{}{path}", s.url)).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(kind, "IncompleteSignatureException", "{path}");
        let members: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(members, ["__type", "message"], "{path}: {body}");
        assert_eq!(body["__type"], "IncompleteSignatureException", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("Authorization"),
            "{path}: {body}"
        );
    }
    let health = reqwest::get(format!("{}/healthz", s.url)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "health checks need no signature");
}

#[tokio::test]
async fn a_routes_own_error_comes_back_in_the_api_shape() {
    let s = start().await;
    let good = client(&s.url, "right");
    let plan = good
        .extension(
            "/v1/services/plan",
            "service plans",
            &json!({"cluster": "nope", "service": "web"}),
        )
        .await;
    assert_eq!(
        kind_and_status(plan),
        ("ClusterNotFoundException".to_string(), 400),
        "the plan's refusal, rendered by the layer"
    );
    let (status, kind, body) = {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/services/plan", s.url))
            .body("not json")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let kind = resp.headers().get("x-amzn-errortype").cloned();
        (status, kind, resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 403, "an unsigned request is refused before the route reads it");
    assert!(kind.is_some());
    assert_eq!(body["__type"], "IncompleteSignatureException");
}
