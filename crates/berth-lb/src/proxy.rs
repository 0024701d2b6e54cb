//! Forwarding one request: pick a target, send, classify the outcome, retry
//! on another target within the budget, and stream the answer back.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::balance::{Candidate, pick};
use crate::body::{Hold, RespBody, UpstreamBody};
use crate::budget::{Attempt, is_idempotent, retryable};
use crate::config::ProxySettings;
use crate::h1::{Framing, RawBody, RawPool};
use crate::metrics::ErrorKind;
use crate::outlier::Outcome;
use crate::pool::{Lease, Pool, SendError};
use crate::state::{Group, InFlight, Routing, Target};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The client health checks use.
pub(crate) type UpstreamClient = Client<HttpConnector, UpstreamBody>;

pub(crate) fn empty_upstream() -> UpstreamBody {
    UpstreamBody::Full(None)
}

pub(crate) fn text(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(Bytes::from(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Counts a request against its group while it is outstanding.
pub(crate) struct GroupInFlight(Arc<Group>);

impl GroupInFlight {
    fn new(g: Arc<Group>) -> Self {
        g.shared.in_flight.fetch_add(1, Relaxed);
        Self(g)
    }
}

impl Drop for GroupInFlight {
    fn drop(&mut self) {
        self.0.shared.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The request body as the attempts see it.
enum Payload {
    /// Kept in memory: every attempt sends a copy.
    Replay(Bytes),
    /// Streamed: only the first attempt can send it.
    Stream(Option<Limited<Incoming>>),
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the (few) names is cheaper
    // than a hashed removal per hop-by-hop name.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in listed.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
}

/// The request's host, lowercase, without port.
fn request_host<B>(req: &Request<B>) -> Cow<'_, str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let no_port = if raw.starts_with('[') {
        raw.split(']').next().map(|h| &h[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    if no_port.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(no_port.to_ascii_lowercase())
    } else {
        Cow::Borrowed(no_port)
    }
}

/// The `X-Forwarded-For` entry of a client, computed once per connection.
pub(crate) fn client_ip(remote: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&remote.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn forward_headers(parts: &http::request::Parts, client: &HeaderValue) -> HeaderMap {
    let mut h = parts.headers.clone();
    strip_hop_by_hop(&mut h);
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        h.entry(header::HOST).or_insert(host);
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => client
            .to_str()
            .ok()
            .and_then(|ip| HeaderValue::from_str(&format!("{prev}, {ip}")).ok()),
        None => Some(client.clone()),
    };
    if let Some(v) = value {
        h.insert(xff, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    h
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A target's response head, from either path.
enum Answer {
    Hyper(Response<Incoming>, Lease),
    Raw(http::response::Parts, Framing, crate::h1::Conn),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Hyper(r, _) => r.status(),
            Answer::Raw(p, _, _) => p.status,
        }
    }

    /// Reads a small discarded body so that its connection can be reused.
    async fn discard(self, raw: &Arc<RawPool>, addr: SocketAddr) {
        let limit = std::time::Duration::from_millis(100);
        match self {
            Answer::Hyper(resp, lease) => {
                let _ = tokio::time::timeout(limit, resp.into_body().collect()).await;
                drop(lease);
            }
            Answer::Raw(_, framing, conn) => {
                let body = RawBody::new(conn, framing, raw.clone(), addr);
                let _ = tokio::time::timeout(limit, body.discard(64 * 1024)).await;
            }
        }
    }

    fn into_response(
        self,
        raw: &Arc<RawPool>,
        addr: SocketAddr,
        target: InFlight,
        group: GroupInFlight,
    ) -> Response<RespBody> {
        match self {
            Answer::Hyper(resp, lease) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                let _hold = Hold {
                    _target: target,
                    _group: group,
                    _lease: Some(lease),
                };
                Response::from_parts(rparts, RespBody::Upstream { body: rbody, _hold })
            }
            Answer::Raw(mut p, framing, conn) => {
                let body = RawBody::new(conn, framing, raw.clone(), addr);
                strip_hop_by_hop(&mut p.headers);
                p.version = Version::HTTP_11;
                let _hold = Hold {
                    _target: target,
                    _group: group,
                    _lease: None,
                };
                Response::from_parts(p, RespBody::Raw { body, _hold })
            }
        }
    }
}

/// Serves one client request on `listener`.
pub(crate) async fn handle(
    routing: &RwLock<Arc<Routing>>,
    pool: &Arc<Pool>,
    settings: &ProxySettings,
    listener: &str,
    client: &HeaderValue,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let group = {
        let host = request_host(&req);
        let routing = routing.read().unwrap_or_else(|e| e.into_inner());
        routing.route(listener, &host, req.uri().path()).cloned()
    };
    let Some(group) = group else {
        return text(StatusCode::NOT_FOUND, "berth-lb: no rule matches this request");
    };
    forward(group, pool, settings, client, req).await
}

/// The request as every attempt sends it.
struct Outbound {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    payload: Payload,
    idempotent: bool,
    /// Whether the lean HTTP/1.1 path may carry it: the body is in memory
    /// and the request neither expects an interim 100 (hyper's client
    /// handles those) nor tunnels.
    lean: bool,
}

/// How one attempt ended.
enum Tried {
    Answered(Answer),
    Failed(SendError),
    TimedOut,
    /// A streamed body was spent by an earlier attempt: nothing to resend.
    BodyGone,
    /// The target's address does not make a request URI.
    BadTarget,
}

impl Outbound {
    /// Sends one attempt to `target`, within `timeout`.
    async fn send(&mut self, pool: &Arc<Pool>, target: &Target, timeout: std::time::Duration) -> Tried {
        let sent = match &mut self.payload {
            Payload::Replay(b) if self.lean => {
                let out = crate::h1::Outgoing {
                    resend: self.idempotent,
                    method: &self.method,
                    path: &self.path,
                    headers: &self.headers,
                    body: b,
                };
                tokio::time::timeout(timeout, pool.raw.send(target.addr, &out))
                    .await
                    .map(|r| r.map(|(head, framing, conn)| Answer::Raw(head, framing, conn)))
            }
            payload => {
                let body = match payload {
                    Payload::Replay(b) => UpstreamBody::full(b.clone()),
                    Payload::Stream(s) => match s.take() {
                        Some(s) => UpstreamBody::Stream(s),
                        None => return Tried::BodyGone,
                    },
                };
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(target.authority.clone())
                    .path_and_query(self.path.clone())
                    .build();
                let Ok(uri) = uri else {
                    return Tried::BadTarget;
                };
                let mut up = Request::new(body);
                *up.method_mut() = self.method.clone();
                *up.uri_mut() = uri;
                *up.version_mut() = Version::HTTP_11;
                *up.headers_mut() = self.headers.clone();
                tokio::time::timeout(timeout, pool.send(target.addr, up))
                    .await
                    .map(|r| r.map(|(resp, lease)| Answer::Hyper(resp, lease)))
            }
        };
        match sent {
            Ok(Ok(answer)) => Tried::Answered(answer),
            Ok(Err(e)) => Tried::Failed(e),
            Err(_) => Tried::TimedOut,
        }
    }
}

/// Reads a body small enough to resend into memory; a larger one streams
/// (and so gets one attempt). A refusal is the status and message to answer.
async fn read_payload(
    body: Incoming,
    content_length: Option<u64>,
    settings: &ProxySettings,
) -> Result<Payload, (StatusCode, &'static str)> {
    if content_length.is_some_and(|n| n > settings.max_body_bytes) {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "berth-lb: request body too large"));
    }
    let max_body = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
    if body.is_end_stream() {
        return Ok(Payload::Replay(Bytes::new()));
    }
    if content_length.is_none_or(|n| n > settings.retry_buffer_bytes) {
        return Ok(Payload::Stream(Some(Limited::new(body, max_body))));
    }
    match Limited::new(body, max_body).collect().await {
        Ok(c) => Ok(Payload::Replay(c.to_bytes())),
        Err(e) if is_length_limit(e.as_ref()) => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "berth-lb: request body too large"))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, "berth-lb: could not read the request body")),
    }
}

/// The target for the next attempt, skipping those already `tried`; `Err`
/// says whether some target was left out only for being at capacity.
fn choose_target(group: &Group, tried: &[usize], now: Instant) -> Result<usize, bool> {
    let cfg = &group.cfg;
    let n = group.targets.len();
    // Groups are small: candidates live on the stack unless they are not.
    let mut cand_buf = [Candidate::default(); 32];
    let cand_vec: Vec<Candidate>;
    let cands: &[Candidate] = if n <= cand_buf.len() {
        for (c, t) in cand_buf.iter_mut().zip(&group.targets) {
            *c = t.candidate(now, cfg.max_pending_per_target);
        }
        &cand_buf[..n]
    } else {
        cand_vec = group
            .targets
            .iter()
            .map(|t| t.candidate(now, cfg.max_pending_per_target))
            .collect();
        &cand_vec
    };
    let cursor = group.shared.cursor.fetch_add(1, Relaxed);
    pick(cands, tried, cfg.algorithm, cursor, rand::random(), rand::random())
        .ok_or_else(|| cands.iter().any(|c| c.saturated))
}

/// A failed send as the retry policy sees it, or `None` when the request
/// body turned out too large (no retry can help).
fn classify(e: SendError) -> Option<(Attempt, ErrorKind, String)> {
    match e {
        SendError::NotSent(e) => Some((Attempt::NotSent, ErrorKind::Connect, e)),
        SendError::Broken(e) if is_length_limit(&e) => None,
        SendError::Broken(e) => Some((Attempt::Broken, ErrorKind::Broken, e.to_string())),
        SendError::Failed(e) => Some((Attempt::Broken, ErrorKind::Broken, e)),
    }
}

async fn forward(
    group: Arc<Group>,
    pool: &Arc<Pool>,
    settings: &ProxySettings,
    client: &HeaderValue,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let group_guard = GroupInFlight::new(group);
    let group = &group_guard.0;
    let shared = &group.shared;
    shared.counters.request();
    let finish_err = |status: StatusCode, kind: ErrorKind, msg: &str| {
        shared.counters.error(kind);
        shared.counters.response(status.as_u16(), started.elapsed());
        text(status, msg)
    };
    let refuse = |status: StatusCode, msg: &str| {
        shared.counters.response(status.as_u16(), started.elapsed());
        text(status, msg)
    };

    let (parts, body) = req.into_parts();
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let payload = match read_payload(body, content_length, settings).await {
        Ok(p) => p,
        Err((status, msg)) => return refuse(status, msg),
    };
    let mut out = Outbound {
        idempotent: is_idempotent(&parts.method),
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: forward_headers(&parts, client),
        lean: parts.method != Method::CONNECT && !parts.headers.contains_key(header::EXPECT),
        method: parts.method,
        payload,
    };
    let cfg = &group.cfg;
    // Targets this request failed on; attempts beyond its size are not made.
    let mut tried_buf = [usize::MAX; 16];
    let mut last = (
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::NoTarget,
        "berth-lb: no target available",
    );

    let mut now = started;
    for attempt in 0..cfg.max_attempts.min(tried_buf.len() as u32) {
        let tried = &tried_buf[..attempt as usize];
        let idx = match choose_target(group, tried, now) {
            Ok(idx) => idx,
            Err(saturated) => {
                if saturated && tried.is_empty() {
                    last = (
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorKind::CircuitOpen,
                        "berth-lb: targets at capacity",
                    );
                }
                break;
            }
        };
        tried_buf[attempt as usize] = idx;
        let guard = InFlight::new(group.targets[idx].clone());
        let target = &guard.0;
        target.counters.request();
        let replayable = matches!(out.payload, Payload::Replay(_));
        let sent = now;
        let result = out.send(pool, target, cfg.request_timeout).await;
        now = Instant::now();
        let can_retry = |a: Attempt| attempt + 1 < cfg.max_attempts && retryable(a, out.idempotent, replayable);
        let spend = || {
            let ok = shared.try_retry(now);
            shared.counters.retry(ok);
            ok
        };
        match result {
            Tried::Answered(answer) => {
                let status = answer.status().as_u16();
                target.counters.response(status, now - sent);
                let outcome = if status >= 500 {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                target.record(outcome, now, cfg);
                if status >= 500 && can_retry(Attempt::Status(status)) && spend() {
                    // Read the (small) error body so that the connection
                    // goes back to the pool, then let go of the target.
                    answer.discard(&pool.raw, target.addr).await;
                    drop(guard);
                    continue;
                }
                shared.counters.response(status, started.elapsed());
                return answer.into_response(&pool.raw, target.addr, guard, group_guard);
            }
            Tried::Failed(e) => {
                let Some((a, kind, e)) = classify(e) else {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "berth-lb: request body too large");
                };
                tracing::debug!(target = %target.addr, error = %e, "attempt failed");
                target.counters.error(kind);
                target.record(Outcome::Failure, now, cfg);
                last = (StatusCode::BAD_GATEWAY, kind, "berth-lb: target failed");
                if !(can_retry(a) && spend()) {
                    break;
                }
            }
            Tried::TimedOut => {
                target.counters.error(ErrorKind::Timeout);
                target.record(Outcome::Failure, now, cfg);
                last = (
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::Timeout,
                    "berth-lb: target timed out",
                );
                if !(can_retry(Attempt::TimedOut) && spend()) {
                    break;
                }
            }
            Tried::BodyGone => break,
            Tried::BadTarget => {
                return finish_err(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::Broken,
                    "berth-lb: bad request target",
                );
            }
        }
    }
    finish_err(last.0, last.1, last.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn forwarded_headers_are_added_and_hop_by_hop_ones_removed() {
        let req = Request::get("/a?b=1")
            .header("host", "Shop.Example.com:8080")
            .header("x-forwarded-for", "10.0.0.1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        let remote: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let h = forward_headers(&parts(req), &client_ip(remote));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Shop.Example.com:8080");
        assert_eq!(h["host"], "Shop.Example.com:8080");
        assert_eq!(h["x-kept"], "yes");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn http2_requests_get_a_host_from_the_authority() {
        let req = Request::get("http://api.example.com/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), "api.example.com");
        let h = forward_headers(&parts(req), &client_ip("127.0.0.1:1".parse().unwrap()));
        assert_eq!(h["host"], "api.example.com");
    }

    #[test]
    fn request_host_drops_port_and_case() {
        let with = |host: &str| request_host(&Request::get("/").header("host", host).body(()).unwrap()).into_owned();
        assert_eq!(with("A.Example.COM:80"), "a.example.com");
        assert_eq!(with("[::1]:8080"), "::1");
        assert_eq!(with("plain"), "plain");
    }
}
