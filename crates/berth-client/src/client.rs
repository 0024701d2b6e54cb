//! The HTTP side: one JSON 1.1 call per operation, signed when keys are set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::ClientError;
use crate::settings::Settings;
use crate::sigv4;

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    /// The endpoint's authority (`host:port`), sent and signed as `host`.
    host: String,
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Environment variable naming a PEM file of extra CA certificates to trust
/// for `https://` endpoints (the CLI's `--ca-cert` overrides it).
pub const CA_CERT_ENV: &str = "BERTH_CA_CERT";

impl Client {
    /// Makes a client. An `https://` endpoint is verified against the
    /// system roots plus the PEM certificates in `$BERTH_CA_CERT`, if set.
    pub fn new(settings: Settings) -> Result<Client, ClientError> {
        let ca = std::env::var_os(CA_CERT_ENV)
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from);
        Self::with_ca_cert(settings, ca.as_deref())
    }

    /// [`Client::new`] trusting the PEM certificates in `ca_cert` (beside
    /// the system roots) instead of `$BERTH_CA_CERT`'s.
    pub fn with_ca_cert(settings: Settings, ca_cert: Option<&std::path::Path>) -> Result<Client, ClientError> {
        let rest = settings
            .endpoint
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or_else(|| ClientError::Settings(format!("endpoint '{}' has no scheme", settings.endpoint)))?;
        let host = rest.split('/').next().unwrap_or_default().to_string();
        if host.is_empty() {
            return Err(ClientError::Settings(format!(
                "endpoint '{}' has no host",
                settings.endpoint
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        // An https:// endpoint with a private CA (e.g. a self-signed
        // `berth server --tls-cert`): trusted beside the system roots.
        if let Some(path) = ca_cert {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| ClientError::Settings(format!("CA certificate {shown}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ClientError::Settings(format!("CA certificate {shown}: not a PEM certificate file: {e}"))
            })?;
            if certs.is_empty() {
                return Err(ClientError::Settings(format!(
                    "CA certificate {shown}: no CERTIFICATE block found"
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Settings(format!("building the HTTP client: {e}")))?;
        Ok(Client { http, settings, host })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cluster calls default to.
    pub fn cluster(&self) -> &str {
        &self.settings.cluster
    }

    fn connect_error(&self, e: &reqwest::Error) -> ClientError {
        // reqwest nests its causes; the innermost says what happened
        // ("Connection refused"), the outer ones repeat the URL.
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        if e.is_timeout() {
            reason = format!("timed out ({reason})");
        }
        ClientError::Connect {
            endpoint: self.settings.endpoint.clone(),
            reason,
        }
    }

    /// A request with the Berth/ECS headers, signed when keys are set.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &str,
        mut headers: Vec<(String, String)>,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        headers.insert(0, ("host".to_string(), self.host.clone()));
        let url = if query.is_empty() {
            format!("{}{path}", self.settings.endpoint)
        } else {
            format!("{}{path}?{query}", self.settings.endpoint)
        };
        let mut req = self.http.request(method.clone(), url);
        if let Some(k) = &self.settings.keys {
            let target = sigv4::Target {
                method: method.as_str(),
                path,
                query,
                body,
            };
            let (date, auth) = sigv4::sign(
                target,
                &headers,
                &k.access_key_id,
                &k.secret_access_key,
                &self.settings.region,
                now_epoch(),
            );
            req = req.header("x-amz-date", date).header("authorization", auth);
        }
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req
    }

    async fn post(&self, path: &str, target: Option<&str>, body: &Value) -> Result<(u16, Vec<u8>), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            endpoint: self.settings.endpoint.clone(),
            reason: format!("encoding the request: {e}"),
        })?;
        let mut headers = vec![("content-type".to_string(), "application/x-amz-json-1.1".to_string())];
        if let Some(t) = target {
            headers.push(("x-amz-target".to_string(), t.to_string()));
        }
        let req = self.request(reqwest::Method::POST, path, "", headers, &bytes);
        let resp = req.body(bytes).send().await.map_err(|e| self.connect_error(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.connect_error(&e))?;
        Ok((status, body.to_vec()))
    }

    /// Reads a server-sent-events stream at `GET path?query` (a Berth
    /// extension), calling `on_event` with each event's `data` until it
    /// returns false, the server closes the stream, or (with `idle`) nothing
    /// arrives for that long. A server without the extension gives
    /// [`ClientError::NotAvailable`] naming `what`.
    pub async fn events(
        &self,
        path: &str,
        query: &str,
        what: &str,
        idle: Option<Duration>,
        mut on_event: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let headers = vec![("accept".to_string(), "text/event-stream".to_string())];
        let mut resp = self
            .request(reqwest::Method::GET, path, query, headers, b"")
            // A stream may stay open for as long as the user watches.
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| self.connect_error(&e))?;
        let status = resp.status().as_u16();
        let endpoint = format!("GET {}{path}", self.settings.endpoint);
        if !(200..300).contains(&status) {
            let body = resp.bytes().await.map_err(|e| self.connect_error(&e))?;
            return match self.decode(status, &body) {
                Err(ClientError::Api { kind, .. }) if kind == "UnknownOperationException" => {
                    Err(ClientError::NotAvailable {
                        what: what.to_string(),
                        endpoint,
                    })
                }
                Err(ClientError::Protocol { .. }) if status == 404 || status == 405 => Err(ClientError::NotAvailable {
                    what: what.to_string(),
                    endpoint,
                }),
                Err(e) => Err(e),
                Ok(_) => Ok(()),
            };
        }
        let mut buf = String::new();
        loop {
            let next = match idle {
                Some(d) => match tokio::time::timeout(d, resp.chunk()).await {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                },
                None => resp.chunk().await,
            };
            let Some(chunk) = next.map_err(|e| self.connect_error(&e))? else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for data in take_events(&mut buf) {
                if !on_event(&data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn decode(&self, status: u16, body: &[u8]) -> Result<Value, ClientError> {
        let parsed: Result<Value, _> = serde_json::from_slice(body);
        if (200..300).contains(&status) {
            return parsed.map_err(|e| ClientError::Protocol {
                endpoint: self.settings.endpoint.clone(),
                reason: format!("HTTP {status} with a body that is not JSON: {e}"),
            });
        }
        match parsed {
            Ok(v) if v.get("__type").is_some() => {
                let kind = v["__type"].as_str().unwrap_or("UnknownError");
                // `__type` may be namespaced (`com.amazonaws...#ClusterNotFoundException`).
                let kind = kind.rsplit('#').next().unwrap_or(kind).to_string();
                let message = v
                    .get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                Err(ClientError::Api { kind, message, status })
            }
            _ => Err(ClientError::Protocol {
                endpoint: self.settings.endpoint.clone(),
                reason: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(body).chars().take(200).collect::<String>()
                ),
            }),
        }
    }

    /// Calls an ECS operation (`ListClusters`, ...) with a JSON body.
    pub async fn call(&self, operation: &str, body: &Value) -> Result<Value, ClientError> {
        let (status, bytes) = self
            .post("/", Some(&format!("{TARGET_PREFIX}{operation}")), body)
            .await?;
        self.decode(status, &bytes)
    }

    /// Calls a paginated List operation until `nextToken` runs out and
    /// returns every element of `member` (`clusterArns`, `taskArns`, ...).
    pub async fn call_all(&self, operation: &str, body: &Value, member: &str) -> Result<Vec<Value>, ClientError> {
        let mut out = Vec::new();
        let mut body = body.clone();
        loop {
            let resp = self.call(operation, &body).await?;
            if let Some(items) = resp.get(member).and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            match resp.get("nextToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => body["nextToken"] = Value::String(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Calls a Berth extension at `POST path`. A server without it answers
    /// 404 or `UnknownOperationException`: that becomes
    /// [`ClientError::NotAvailable`] naming `what`.
    pub async fn extension(&self, path: &str, what: &str, body: &Value) -> Result<Value, ClientError> {
        let (status, bytes) = self.post(path, None, body).await?;
        match self.decode(status, &bytes) {
            Err(ClientError::Api { kind, .. }) if kind == "UnknownOperationException" => {
                Err(not_available(self, path, what))
            }
            Err(ClientError::Protocol { .. }) if status == 404 || status == 405 => Err(not_available(self, path, what)),
            other => other,
        }
    }
}

/// `GET url` of a JSON document from a host agent's endpoint (unsigned: agent
/// endpoints are not behind SigV4). 404 becomes [`ClientError::NotAvailable`].
pub async fn get_agent_json(url: &str, what: &str) -> Result<Value, ClientError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ClientError::Settings(format!("building the HTTP client: {e}")))?;
    let connect = |e: reqwest::Error| ClientError::Connect {
        endpoint: url.to_string(),
        reason: e.to_string(),
    };
    let resp = http.get(url).send().await.map_err(connect)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(connect)?;
    if status == 404 {
        return Err(ClientError::NotAvailable {
            what: what.to_string(),
            endpoint: format!("GET {url}"),
        });
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
        endpoint: url.to_string(),
        reason: format!("HTTP {status} with a body that is not JSON: {e}"),
    })?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Protocol {
            endpoint: url.to_string(),
            reason: format!(
                "HTTP {status}: {}",
                v.get("error").and_then(Value::as_str).unwrap_or("")
            ),
        });
    }
    Ok(v)
}

/// Removes every complete event (ended by a blank line) from `buf` and
/// returns their `data` (multi-line data joined with newlines; events
/// without data, such as keep-alive comments, are skipped).
fn take_events(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    let normalized = buf.replace("\r\n", "\n");
    let mut rest = normalized.as_str();
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    *buf = rest.to_string();
    out
}

fn not_available(c: &Client, path: &str, what: &str) -> ClientError {
    ClientError::NotAvailable {
        what: what.to_string(),
        endpoint: format!("POST {}{path}", c.settings.endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(Settings {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            cluster: "default".into(),
            keys: None,
        })
        .unwrap()
    }

    #[test]
    fn errors_decode_to_their_ecs_type() {
        let c = client();
        assert_eq!(c.host, "127.0.0.1:9");
        let e = c
            .decode(
                400,
                br#"{"__type": "com.amazonaws.ecs#ClusterNotFoundException", "message": "Cluster not found."}"#,
            )
            .unwrap_err();
        assert_eq!(e.kind(), Some("ClusterNotFoundException"));
        assert_eq!(e.to_string(), "ClusterNotFoundException: Cluster not found.");
        let e = c.decode(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
        assert!(c.decode(200, b"not json").is_err());
        assert_eq!(c.decode(200, br#"{"a": 1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn server_sent_events_split_on_blank_lines() {
        let mut buf =
            String::from(": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\r\n\r\ndata: partial");
        assert_eq!(take_events(&mut buf), ["{\"a\":1}", "one\ntwo"]);
        assert_eq!(buf, "data: partial");
        buf.push_str("\n\n");
        assert_eq!(take_events(&mut buf), ["partial"]);
        assert!(buf.is_empty());
    }

    /// A one-shot HTTP server on loopback answering every connection with `response`.
    async fn canned(response: &'static str) -> Client {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        Client::new(Settings {
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            cluster: "default".into(),
            keys: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn events_stream_and_missing_extensions() {
        let c = canned(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
             data: first\n\n: ping\n\ndata: second\n\ndata: third\n\n",
        )
        .await;
        let mut seen = Vec::new();
        c.events("/v1/events", "cluster=default", "events", None, |d| {
            seen.push(d.to_string());
            seen.len() < 2
        })
        .await
        .unwrap();
        assert_eq!(seen, ["first", "second"], "stops when the callback says so");

        let c = canned("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let e = c
            .events("/v1/events", "", "events stream", None, |_| true)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NotAvailable { .. }), "{e}");
        assert!(e.to_string().contains("no events stream"), "{e}");
        let e = c
            .extension("/v1/services/plan", "plan", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NotAvailable { .. }), "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(Settings {
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            cluster: "default".into(),
            keys: None,
        })
        .unwrap();
        let e = c.call("ListClusters", &serde_json::json!({})).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(
            Client::new(Settings {
                endpoint: "nohost".into(),
                ..c.settings().clone()
            })
            .is_err()
        );
    }
}
