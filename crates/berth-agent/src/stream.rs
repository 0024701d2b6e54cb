//! The agent's side of the server stream (see `berth_proto` for the
//! conversation): connect with the bearer token, register, re-send every
//! task's state, then apply what the server pushes while sending heartbeats
//! and state changes. Disconnects are retried with capped backoff; tasks keep
//! running meanwhile. A wrong token (HTTP 401/403, or an `Error` frame coded
//! `Unauthorized`/`AccessDenied`) ends the loop with [`AgentError::Refused`];
//! other refusals (e.g. an unknown cluster) are logged and retried.
//!
//! With an `https://` (or `wss://`) server URL the stream runs over TLS
//! (rustls, see [`crate::tls`]): the server's certificate must chain to a
//! system root or to `StreamConfig::tls_ca`. A certificate that is not
//! trusted, or TLS on one side only, ends the loop with [`AgentError::Tls`]
//! saying what to change — retrying cannot fix a configuration.

use std::path::PathBuf;
use std::time::Duration;

use berth_model::Resources;
use berth_proto::{AgentMessage, Heartbeat, PROTOCOL_VERSION, Register, STREAM_PATH, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::TlsError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::driver::now;
use crate::{Agent, AgentError, Result, tls};

/// How the agent reaches the server and what it tells it about itself.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `http://host:port` (or `ws://`, `https://`, `wss://`).
    pub server: String,
    pub token: String,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub port_range: (u16, u16),
    pub ip_addresses: Vec<String>,
    pub metadata_endpoint: Option<String>,
    /// Heartbeat interval until the server says otherwise.
    pub heartbeat: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_max: Duration,
    /// Extra CA certificates (PEM) trusted for `https://` servers, beside
    /// the system roots: `berth agent --tls-ca`.
    pub tls_ca: Option<PathBuf>,
}

enum End {
    Shutdown,
    Disconnected(String),
}

/// The WebSocket URL of the stream for a server URL.
pub fn stream_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        format!("ws://{base}")
    };
    format!("{base}{STREAM_PATH}")
}

/// Runs the stream until `shutdown` turns true or the server refuses.
pub async fn run(
    agent: Agent,
    mut outbox: mpsc::UnboundedReceiver<AgentMessage>,
    cfg: StreamConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    let url = stream_url(&cfg.server);
    // Built once: a CA file that cannot be read is an error now, not later.
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(tls::client_config(cfg.tls_ca.as_deref())?))
    } else {
        if let Some(ca) = &cfg.tls_ca {
            tracing::warn!(
                "--tls-ca {} is ignored: the server URL {} is not https://",
                ca.display(),
                cfg.server
            );
        }
        None
    };
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match session(
            &agent,
            &mut outbox,
            &cfg,
            connector.clone(),
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(End::Shutdown) => return Ok(()),
            Err(e @ AgentError::Tls(_)) => {
                tracing::error!("{e}");
                return Err(e);
            }
            Err(AgentError::Refused { code, message }) if is_auth_failure(&code) => {
                let e = AgentError::Refused { code, message };
                tracing::error!("{e}");
                return Err(e);
            }
            // Anything else the server refuses (an unknown cluster, say) may
            // be fixed on the server side: keep trying, loudly.
            Err(e @ AgentError::Refused { .. }) => tracing::error!("{e}; retrying in {backoff:?}"),
            Ok(End::Disconnected(why)) => tracing::warn!("agent stream closed: {why}; reconnecting"),
            Err(e) => tracing::warn!("agent stream: {e}; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// Refusals that retrying cannot fix: a wrong token.
fn is_auth_failure(code: &str) -> bool {
    matches!(
        code,
        "Unauthorized" | "AccessDenied" | "AccessDeniedException" | "Forbidden"
    )
}

fn register(agent: &Agent, cfg: &StreamConfig) -> Register {
    Register {
        protocol_version: PROTOCOL_VERSION,
        cluster: agent.cluster().to_string(),
        container_instance_arn: agent.identity().container_instance_arn,
        agent_id: agent.agent_id().to_string(),
        hostname: cfg.hostname.clone(),
        resources: cfg.resources.clone(),
        attributes: cfg.attributes.clone(),
        port_range: cfg.port_range,
        ip_addresses: cfg.ip_addresses.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        driver: agent.driver().name().to_string(),
        capabilities: agent.driver().capabilities(),
        metadata_endpoint: cfg.metadata_endpoint.clone(),
    }
}

fn frame(msg: &AgentMessage) -> Result<Message> {
    serde_json::to_string(msg)
        .map(|s| Message::Text(s.into()))
        .map_err(|e| AgentError::Stream(format!("encode: {e}")))
}

fn ws_err(e: WsError) -> AgentError {
    match e {
        WsError::Http(resp) if matches!(resp.status().as_u16(), 401 | 403) => AgentError::Refused {
            code: "Unauthorized".into(),
            message: format!("the server answered {} to the agent token", resp.status()),
        },
        other => AgentError::Stream(other.to_string()),
    }
}

/// Errors of the connection attempt, where TLS problems get plain words.
fn connect_err(url: &str, e: WsError) -> AgentError {
    match e {
        WsError::Tls(TlsError::Rustls(r)) => AgentError::Tls(tls::explain(url, &r)),
        WsError::Tls(TlsError::InvalidDnsName) => {
            AgentError::Tls(format!("{url}: the host is not a valid TLS server name"))
        }
        WsError::Io(io) if tls::rustls_error(&io).is_some() => {
            let why = tls::rustls_error(&io).map(|r| tls::explain(url, r)).unwrap_or_default();
            AgentError::Tls(why)
        }
        // The server answers plain HTTP on its TLS port with 400 and a
        // body that says so (see `berth server --tls-cert`).
        WsError::Http(resp) if resp.status().as_u16() == 400 && url.starts_with("ws://") => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            if body.contains("TLS") {
                AgentError::Tls(format!(
                    "the server at {url} requires TLS: use an https:// --server URL ({body})"
                ))
            } else {
                ws_err(WsError::Http(resp))
            }
        }
        other => ws_err(other),
    }
}

fn parse(msg: Message) -> Result<Option<ServerMessage>> {
    match msg {
        Message::Text(t) => serde_json::from_str(t.as_str())
            .map(Some)
            .map_err(|e| AgentError::Stream(format!("bad frame from server: {e}: {}", t.as_str()))),
        Message::Binary(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AgentError::Stream(format!("bad frame from server: {e}"))),
        _ => Ok(None),
    }
}

async fn session(
    agent: &Agent,
    outbox: &mut mpsc::UnboundedReceiver<AgentMessage>,
    cfg: &StreamConfig,
    connector: Option<Connector>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<End> {
    let url = stream_url(&cfg.server);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| AgentError::Invalid(format!("server URL {url}: {e}")))?;
    let bearer = format!("Bearer {}", cfg.token)
        .parse()
        .map_err(|_| AgentError::Invalid("the token is not a valid header value".into()))?;
    req.headers_mut().insert(http::header::AUTHORIZATION, bearer);
    // Nagle off: state changes are small frames that must not wait for an ACK.
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector)
        .await
        .map_err(|e| connect_err(&url, e))?;
    ws.send(frame(&AgentMessage::Register(register(agent, cfg)))?)
        .await
        .map_err(ws_err)?;

    let ack = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| AgentError::Stream("no RegisterAck within 10 s".into()))?;
        let Some(msg) = next else {
            return Ok(End::Disconnected("closed before RegisterAck".into()));
        };
        match parse(msg.map_err(ws_err)?)? {
            Some(ServerMessage::RegisterAck(a)) => break a,
            Some(ServerMessage::Error(e)) => {
                return Err(AgentError::Refused {
                    code: e.code,
                    message: e.message,
                });
            }
            Some(other) => tracing::warn!("ignoring {other:?} before RegisterAck"),
            None => {}
        }
    };
    agent.set_instance_arn(&ack.container_instance_arn)?;
    tracing::info!(instance = %ack.container_instance_arn, "registered");
    *backoff = Duration::from_millis(100);

    // What queued while disconnected is superseded by the full snapshot.
    while outbox.try_recv().is_ok() {}
    for st in agent.snapshot() {
        ws.send(frame(&AgentMessage::TaskStateChange(st))?)
            .await
            .map_err(ws_err)?;
    }
    let period = if ack.heartbeat_interval_ms > 0 {
        Duration::from_millis(ack.heartbeat_interval_ms)
    } else {
        cfg.heartbeat
    };
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(msg) = incoming else { return Ok(End::Disconnected("server closed the stream".into())) };
                let msg = msg.map_err(ws_err)?;
                if let Message::Close(c) = &msg {
                    return Ok(End::Disconnected(format!("close frame {c:?}")));
                }
                match parse(msg) {
                    Ok(Some(ServerMessage::Error(e))) => {
                        return Err(AgentError::Refused { code: e.code, message: e.message });
                    }
                    Ok(Some(m)) => agent.apply(&m).await,
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Some(out) = outbox.recv() => {
                ws.send(frame(&out)?).await.map_err(ws_err)?;
            }
            _ = heartbeat.tick() => {
                let hb = AgentMessage::Heartbeat(Heartbeat { timestamp: now(), running_tasks: agent.running_tasks() });
                ws.send(frame(&hb)?).await.map_err(ws_err)?;
            }
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return Ok(End::Shutdown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stream_url;

    #[test]
    fn urls() {
        assert_eq!(
            stream_url("http://127.0.0.1:8080/"),
            "ws://127.0.0.1:8080/v1/agent/stream"
        );
        assert_eq!(stream_url("https://h"), "wss://h/v1/agent/stream");
        assert_eq!(stream_url("127.0.0.1:1"), "ws://127.0.0.1:1/v1/agent/stream");
    }
}
