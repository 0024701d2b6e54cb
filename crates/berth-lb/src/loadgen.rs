//! A closed-loop HTTP/1.1 load generator in the style of wrk and oha: `c`
//! keep-alive connections each send one request at a time, for `n` requests
//! or a duration. Built on hyper's client connection API. Reports
//! throughput, latency percentiles, a status histogram and errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::LbError;

/// What to send and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `http://host:port/path`.
    pub url: String,
    pub connections: usize,
    /// Stop after this many requests (across all connections)...
    pub requests: Option<u64>,
    /// ...or after this long. With neither, 1000 requests.
    pub duration: Option<Duration>,
    pub method: Method,
    /// Per-request limit; a request that takes longer counts as an error.
    pub timeout: Duration,
    /// Stops the run early once set (tests keep load on while they change
    /// things, then stop it).
    pub stop: Option<Arc<AtomicBool>>,
}

impl LoadSpec {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections: 50,
            requests: None,
            duration: None,
            method: Method::GET,
            timeout: Duration::from_secs(10),
            stop: None,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests that got a response.
    pub responses: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without a response, by kind (`connect`, `io`, `timeout`).
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latency of answered requests.
    pub latency: Percentiles,
    hist: Histogram,
}

impl LoadReport {
    /// Adds the requests of `other`, a run of the same load against the same
    /// server (the elapsed times add up).
    pub fn merge(&mut self, other: &LoadReport) {
        self.responses += other.responses;
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.elapsed += other.elapsed;
        self.hist.merge(&other.hist);
        self.latency = self.hist.percentiles();
    }

    /// Answered requests per second.
    pub fn rps(&self) -> f64 {
        self.responses as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Requests a client would see fail: no response, or a 5xx.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.statuses.range(500..).map(|(_, n)| n).sum::<u64>()
    }

    /// All requests issued.
    pub fn total(&self) -> u64 {
        self.responses + self.errors.values().sum::<u64>()
    }

    /// Fraction of requests that failed.
    pub fn error_rate(&self) -> f64 {
        self.failed() as f64 / (self.total().max(1)) as f64
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        let statuses: Vec<String> = self.statuses.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let l = &self.latency;
        format!(
            "{{\"requests\":{},\"responses\":{},\"failed\":{},\"error_rate\":{:.6},\"elapsed_s\":{:.3},\"rps\":{:.1},\
             \"latency_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3},\"mean\":{:.3}}},\
             \"statuses\":{{{}}},\"errors\":{{{}}}}}",
            self.total(),
            self.responses,
            self.failed(),
            self.error_rate(),
            self.elapsed.as_secs_f64(),
            self.rps(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean,
            statuses.join(","),
            errors.join(",")
        )
    }

    /// A few human lines.
    pub fn to_text(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "requests: {} in {:.2}s, {:.1} req/s, failed {} ({:.3}%)\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            self.total(),
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.failed(),
            self.error_rate() * 100.0,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean
        );
        for (code, n) in &self.statuses {
            let _ = writeln!(s, "  status {code}: {n}");
        }
        for (kind, n) in &self.errors {
            let _ = writeln!(s, "  error {kind}: {n}");
        }
        s
    }
}

/// A log-linear histogram of microseconds: exact below 128 µs, then 128
/// buckets per power of two (under 1% error).
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let shift = e - SUB_BITS;
        let mantissa = v >> shift;
        ((shift as u64 + 1) * SUB + (mantissa - SUB)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let mantissa = SUB + i % SUB;
        (mantissa << shift) + ((1u64 << shift) >> 1)
    }

    pub fn record(&mut self, micros: u64) {
        let i = Self::index(micros).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.sum += u128::from(micros);
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Value at quantile `q` (0..=1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(self.quantile(0.5)),
            p90: ms(self.quantile(0.9)),
            p99: ms(self.quantile(0.99)),
            p999: ms(self.quantile(0.999)),
            max: ms(self.max),
            mean: if self.total == 0 {
                0.0
            } else {
                self.sum as f64 / self.total as f64 / 1000.0
            },
        }
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_target(url: &str) -> Result<Target, LbError> {
    let bad = |reason: &str| LbError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("host has no address"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target {
        addr,
        host: authority.as_str().to_string(),
        path,
    })
}

struct Tally {
    hist: Histogram,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the load and reports. Connections that fail are reopened.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LbError> {
    let target = Arc::new(parse_target(&spec.url)?);
    let budget = match (spec.requests, spec.duration) {
        (Some(n), _) => Some(n),
        (None, None) => Some(1000),
        (None, Some(_)) => None,
    };
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = spec.duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for _ in 0..spec.connections.max(1) {
        let (target, issued, spec) = (target.clone(), issued.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            worker(&target, &spec, &issued, budget, deadline).await
        }));
    }
    let mut total = Tally {
        hist: Histogram::new(),
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    for t in tasks {
        let tally = t
            .await
            .map_err(|e| LbError::Process(format!("load worker failed: {e}")))?;
        total.hist.merge(&tally.hist);
        for (k, v) in tally.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        for (k, v) in tally.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    Ok(LoadReport {
        responses: total.statuses.values().sum(),
        statuses: total.statuses,
        errors: total.errors,
        elapsed: started.elapsed(),
        latency: total.hist.percentiles(),
        hist: total.hist,
    })
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<http1::SendRequest<Empty<Bytes>>, &'static str> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => return Err("connect"),
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| "connect")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    target: &Target,
    spec: &LoadSpec,
    issued: &AtomicU64,
    budget: Option<u64>,
    deadline: Option<Instant>,
) -> Tally {
    let mut tally = Tally {
        hist: Histogram::new(),
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    let err = |tally: &mut Tally, kind: &str| *tally.errors.entry(kind.to_string()).or_default() += 1;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || spec.stop.as_ref().is_some_and(|s| s.load(Relaxed)) {
            break;
        }
        if let Some(n) = budget
            && issued.fetch_add(1, Relaxed) >= n
        {
            break;
        }
        // A connection the server closed is replaced before the request is
        // sent, so that it does not count as an error.
        let reusable = match sender.take() {
            Some(mut s) if !s.is_closed() => s.ready().await.is_ok().then_some(s),
            _ => None,
        };
        let mut s = match reusable {
            Some(s) => s,
            None => match connect(target.addr, spec.timeout).await {
                Ok(s) => s,
                Err(kind) => {
                    err(&mut tally, kind);
                    // The server is down; don't spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let req = Request::builder()
            .method(spec.method.clone())
            .uri(target.path.as_str())
            .header(header::HOST, target.host.as_str())
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else {
            err(&mut tally, "request");
            break;
        };
        let t0 = Instant::now();
        let exchange = async {
            let resp = s.send_request(req).await.map_err(|_| "io")?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.map_err(|_| "io")?;
            Ok::<u16, &'static str>(status)
        };
        match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(Ok(status)) => {
                tally.hist.record(t0.elapsed().as_micros() as u64);
                *tally.statuses.entry(status).or_default() += 1;
                sender = Some(s);
            }
            Ok(Err(kind)) => err(&mut tally, kind),
            Err(_) => err(&mut tally, "timeout"),
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q={q} got={got} want={want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        let mut small = Histogram::new();
        small.record(7);
        assert_eq!(small.quantile(0.5), 7);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }

    #[test]
    fn histogram_index_and_value_agree() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 123_456, 10_000_000_000] {
            let mid = Histogram::value(Histogram::index(v));
            assert!(
                (mid as f64 - v as f64).abs() <= v as f64 * 0.01 + 1.0,
                "v={v} mid={mid}"
            );
        }
    }

    #[test]
    fn report_counts_5xx_and_errors_as_failed() {
        let mut r = LoadReport {
            responses: 10,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        r.statuses.insert(200, 8);
        r.statuses.insert(503, 2);
        r.errors.insert("io".into(), 2);
        assert_eq!(r.failed(), 4);
        assert_eq!(r.total(), 12);
        assert!((r.rps() - 5.0).abs() < 1e-9);
        assert!(r.to_json().contains("\"statuses\":{\"200\":8,\"503\":2}"));
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_target("https://127.0.0.1/").is_err());
        let t = parse_target("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(t.path, "/a?b=1");
        assert_eq!(t.addr.port(), 8080);
    }
}
