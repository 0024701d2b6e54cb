//! Request metrics per target group and per target, rendered in the
//! Prometheus text format. Counters are atomics updated on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a request or attempt failed without a response from a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    Broken,
    NoTarget,
    CircuitOpen,
}

const ERROR_KINDS: [(ErrorKind, &str); 5] = [
    (ErrorKind::Connect, "connect"),
    (ErrorKind::Timeout, "timeout"),
    (ErrorKind::Broken, "broken"),
    (ErrorKind::NoTarget, "no_target"),
    (ErrorKind::CircuitOpen, "circuit_open"),
];

/// Counters of one shard: one cache line pair per shard so that listener
/// threads do not fight over them.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    errors: [AtomicU64; 5],
    retries: AtomicU64,
    retries_denied: AtomicU64,
    ejections: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_us: AtomicU64,
}

const SHARDS: usize = 8;

/// Each thread writes to its own shard (threads are numbered on first use).
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// Counters for one group or one target, sharded by thread; read them
/// through [`Counters::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    shards: [Shard; SHARDS],
}

/// The sums of all shards at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub requests: u64,
    /// Responses by class: 1xx..5xx at index 0..4.
    pub responses: [u64; 5],
    pub errors: [u64; 5],
    pub retries: u64,
    pub retries_denied: u64,
    pub ejections: u64,
    pub latency: [u64; LATENCY_BOUNDS.len() + 1],
    pub latency_sum_us: u64,
}

impl Counters {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    pub fn request(&self) {
        self.shard().requests.fetch_add(1, Relaxed);
    }

    pub fn response(&self, status: u16, latency: Duration) {
        let sh = self.shard();
        let class = (status / 100).clamp(1, 5) as usize - 1;
        sh.responses[class].fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        let idx = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        sh.latency[idx].fetch_add(1, Relaxed);
        sh.latency_sum_us.fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        let idx = ERROR_KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.shard().errors[idx].fetch_add(1, Relaxed);
    }

    pub fn retry(&self, sent: bool) {
        let sh = self.shard();
        if sent { &sh.retries } else { &sh.retries_denied }.fetch_add(1, Relaxed);
    }

    pub fn ejection(&self) {
        self.shard().ejections.fetch_add(1, Relaxed);
    }

    /// Requests so far (cheaper than a whole snapshot).
    pub fn requests(&self) -> u64 {
        self.shards.iter().map(|s| s.requests.load(Relaxed)).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::default();
        let add = |acc: &mut [u64], src: &[AtomicU64]| {
            for (a, s) in acc.iter_mut().zip(src) {
                *a += s.load(Relaxed);
            }
        };
        for sh in &self.shards {
            out.requests += sh.requests.load(Relaxed);
            add(&mut out.responses, &sh.responses);
            add(&mut out.errors, &sh.errors);
            out.retries += sh.retries.load(Relaxed);
            out.retries_denied += sh.retries_denied.load(Relaxed);
            out.ejections += sh.ejections.load(Relaxed);
            add(&mut out.latency, &sh.latency);
            out.latency_sum_us += sh.latency_sum_us.load(Relaxed);
        }
        out
    }
}

/// Label set of one series: `group` and, for target series, `target`.
pub(crate) struct Series<'a> {
    pub group: &'a str,
    pub target: Option<String>,
    pub counters: Snapshot,
    pub in_flight: u64,
    pub state: Option<&'static str>,
}

fn labels(s: &Series<'_>, extra: &str) -> String {
    let mut out = format!("group=\"{}\"", escape(s.group));
    if let Some(t) = &s.target {
        let _ = write!(out, ",target=\"{}\"", escape(t));
    }
    if !extra.is_empty() {
        out.push(',');
        out.push_str(extra);
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every series in the Prometheus text exposition format.
pub(crate) fn render(series: &[Series<'_>]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&Series<'_>, &mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in series {
            f(s, &mut out);
        }
    };
    family(
        "berth_lb_requests_total",
        "counter",
        "Requests (groups) or attempts (targets).",
        &|s, o| {
            let _ = writeln!(
                o,
                "berth_lb_requests_total{{{}}} {}",
                labels(s, ""),
                s.counters.requests
            );
        },
    );
    family(
        "berth_lb_responses_total",
        "counter",
        "Responses by status class.",
        &|s, o| {
            for (i, c) in s.counters.responses.iter().enumerate() {
                let l = labels(s, &format!("class=\"{}xx\"", i + 1));
                let _ = writeln!(o, "berth_lb_responses_total{{{l}}} {c}");
            }
        },
    );
    family(
        "berth_lb_errors_total",
        "counter",
        "Failures without a response, by kind.",
        &|s, o| {
            for (i, (_, name)) in ERROR_KINDS.iter().enumerate() {
                let l = labels(s, &format!("kind=\"{name}\""));
                let _ = writeln!(o, "berth_lb_errors_total{{{l}}} {}", s.counters.errors[i]);
            }
        },
    );
    family(
        "berth_lb_retries_total",
        "counter",
        "Retries sent, and retries the budget denied.",
        &|s, o| {
            let c = &s.counters;
            let _ = writeln!(
                o,
                "berth_lb_retries_total{{{}}} {}",
                labels(s, "result=\"sent\""),
                c.retries
            );
            let denied = c.retries_denied;
            let _ = writeln!(
                o,
                "berth_lb_retries_total{{{}}} {denied}",
                labels(s, "result=\"denied\"")
            );
        },
    );
    family("berth_lb_ejections_total", "counter", "Outlier ejections.", &|s, o| {
        let _ = writeln!(
            o,
            "berth_lb_ejections_total{{{}}} {}",
            labels(s, ""),
            s.counters.ejections
        );
    });
    family("berth_lb_in_flight", "gauge", "Requests outstanding.", &|s, o| {
        let _ = writeln!(o, "berth_lb_in_flight{{{}}} {}", labels(s, ""), s.in_flight);
    });
    family(
        "berth_lb_target_state",
        "gauge",
        "1 for the target's current state.",
        &|s, o| {
            if let Some(state) = s.state {
                let l = labels(s, &format!("state=\"{state}\""));
                let _ = writeln!(o, "berth_lb_target_state{{{l}}} 1");
            }
        },
    );
    family(
        "berth_lb_response_seconds",
        "histogram",
        "Time to the response head.",
        &|s, o| {
            let mut cum = 0;
            for (i, b) in LATENCY_BOUNDS.iter().enumerate() {
                cum += s.counters.latency[i];
                let _ = writeln!(
                    o,
                    "berth_lb_response_seconds_bucket{{{}}} {cum}",
                    labels(s, &format!("le=\"{b}\""))
                );
            }
            cum += s.counters.latency[LATENCY_BOUNDS.len()];
            let _ = writeln!(
                o,
                "berth_lb_response_seconds_bucket{{{}}} {cum}",
                labels(s, "le=\"+Inf\"")
            );
            let sum = s.counters.latency_sum_us as f64 / 1e6;
            let _ = writeln!(o, "berth_lb_response_seconds_sum{{{}}} {sum}", labels(s, ""));
            let _ = writeln!(o, "berth_lb_response_seconds_count{{{}}} {cum}", labels(s, ""));
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_histogram_and_labels() {
        let c = Counters::default();
        for _ in 0..3 {
            c.request();
        }
        c.response(200, Duration::from_micros(300));
        c.response(503, Duration::from_millis(30));
        c.response(200, Duration::from_secs(20));
        c.error(ErrorKind::Timeout);
        let text = render(&[Series {
            group: "web",
            target: Some("127.0.0.1:1".into()),
            counters: c.snapshot(),
            in_flight: 2,
            state: Some("healthy"),
        }]);
        assert!(text.contains("berth_lb_requests_total{group=\"web\",target=\"127.0.0.1:1\"} 3"));
        assert!(text.contains("berth_lb_responses_total{group=\"web\",target=\"127.0.0.1:1\",class=\"5xx\"} 1"));
        assert!(text.contains("berth_lb_errors_total{group=\"web\",target=\"127.0.0.1:1\",kind=\"timeout\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("le=\"10\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 3"));
        assert!(text.contains("berth_lb_in_flight{group=\"web\",target=\"127.0.0.1:1\"} 2"));
        assert!(text.contains("state=\"healthy\"} 1"));
        assert_eq!(c.snapshot().responses[1], 2);
    }
}
