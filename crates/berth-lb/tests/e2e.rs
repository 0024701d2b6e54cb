//! End to end: real `berth-testapp` backends behind a real `Lb` on loopback.
//! Build the backend first: `cargo build -p berth-testapp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_lb::harness::{self, Child};
use berth_lb::loadgen::{self, LoadReport, LoadSpec};
use berth_lb::{Config, HealthCheck, Lb, ListenerConfig, OutlierConfig, ProxySettings, TargetGroupConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

struct Setup {
    lb: Lb,
    addr: SocketAddr,
    backends: Vec<Child>,
    group: TargetGroupConfig,
    _stop: oneshot::Sender<()>,
}

fn testapp() -> std::path::PathBuf {
    harness::sibling_binary("berth-testapp").unwrap_or_else(|e| panic!("{e}"))
}

async fn backend(name: &str, extra: &[&str]) -> Child {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    harness::testapp(&testapp(), name, &extra)
        .await
        .expect("start berth-testapp")
}

fn config(group: &TargetGroupConfig) -> Config {
    Config {
        listeners: vec![ListenerConfig {
            bind: None,
            name: "web".into(),
            rules: vec![],
            default_target_group: Some(group.name.clone()),
        }],
        target_groups: vec![group.clone()],
    }
}

fn group(targets: Vec<SocketAddr>) -> TargetGroupConfig {
    let mut g = TargetGroupConfig::new("app", targets);
    g.health_check = Some(HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        healthy_threshold: 1,
        unhealthy_threshold: 2,
        ..HealthCheck::default()
    });
    g.deregistration_delay = Duration::from_secs(5);
    g
}

async fn start(backends: Vec<Child>, tweak: impl FnOnce(&mut TargetGroupConfig)) -> Setup {
    let settings = ProxySettings {
        max_body_bytes: 4096,
        retry_buffer_bytes: 1024,
        ..ProxySettings::default()
    };
    let lb = Lb::new(settings);
    let mut g = group(backends.iter().map(|b| b.addr).collect());
    tweak(&mut g);
    lb.apply(config(&g)).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = lb.clone();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, "web", async move {
                let _ = stopped.await;
            })
            .await;
    });
    let setup = Setup {
        lb,
        addr,
        backends,
        group: g,
        _stop: stop,
    };
    let want = setup.backends.len();
    wait_until("all targets healthy", Duration::from_secs(10), || {
        healthy(&setup.lb) == want
    })
    .await;
    setup
}

fn healthy(lb: &Lb) -> usize {
    lb.status().iter().filter(|t| t.state == "healthy").count()
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Load that runs until `stop` is set (or a minute has passed).
fn load(addr: SocketAddr, path: &str, connections: usize, stop: &Arc<AtomicBool>) -> LoadSpec {
    let mut s = LoadSpec::new(format!("http://{addr}{path}"));
    s.connections = connections;
    s.duration = Some(Duration::from_secs(60));
    s.timeout = Duration::from_secs(5);
    s.stop = Some(stop.clone());
    s
}

fn stop_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn attempts(lb: &Lb, addr: SocketAddr) -> u64 {
    lb.status().iter().filter(|t| t.addr == addr).map(|t| t.requests).sum()
}

fn assert_clean(r: &LoadReport, what: &str) {
    assert!(r.responses > 0, "{what}: no responses");
    assert_eq!(r.failed(), 0, "{what}: {}", r.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_to_every_backend() {
    let backends = vec![
        backend("a", &[]).await,
        backend("b", &[]).await,
        backend("c", &[]).await,
    ];
    let s = start(backends, |_| {}).await;
    let mut spec = LoadSpec::new(format!("http://{}/hello", s.addr));
    spec.connections = 6;
    spec.requests = Some(600);
    let r = loadgen::run(&spec).await.expect("load");
    assert_clean(&r, "healthy group");
    assert_eq!(r.responses, 600);
    for b in &s.backends {
        assert!(attempts(&s.lb, b.addr) > 0, "backend {} got no traffic", b.name);
    }
    let metrics = s.lb.metrics_text();
    assert!(
        metrics.contains("berth_lb_requests_total{group=\"app\"} 600"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_lb_response_seconds_bucket{group=\"app\",le=\"+Inf\"} 600"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_is_invisible_to_idempotent_clients() {
    let backends = vec![
        backend("a", &[]).await,
        backend("b", &[]).await,
        backend("c", &[]).await,
    ];
    let mut s = start(backends, |_| {}).await;
    let stop = stop_flag();
    let running = {
        let spec = load(s.addr, "/", 8, &stop);
        tokio::spawn(async move { loadgen::run(&spec).await })
    };
    let victim = s.backends[0].addr;
    wait_until("traffic on the victim", Duration::from_secs(5), || {
        attempts(&s.lb, victim) > 200
    })
    .await;
    s.backends[0].kill().await;
    let lb = s.lb.clone();
    wait_until("victim taken out", Duration::from_secs(5), || {
        lb.status()
            .iter()
            .any(|t| t.addr == victim && (t.state == "unhealthy" || t.state == "ejected"))
    })
    .await;
    let survivors = |lb: &Lb| attempts(lb, s.backends[1].addr) + attempts(lb, s.backends[2].addr);
    let after_kill = survivors(&lb);
    wait_until("traffic continues on the survivors", Duration::from_secs(10), || {
        survivors(&lb) > after_kill + 300
    })
    .await;
    let dead = attempts(&lb, victim);
    let before = survivors(&lb);
    wait_until("more traffic", Duration::from_secs(10), || {
        survivors(&lb) > before + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let r = running.await.expect("join").expect("load");
    assert_clean(&r, "a backend killed under load");
    assert_eq!(attempts(&lb, victim), dead, "requests still went to the dead backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_added_and_removed_under_load_fail_nothing() {
    let backends = vec![
        backend("a", &[]).await,
        backend("b", &[]).await,
        backend("c", &[]).await,
    ];
    let mut s = start(backends, |_| {}).await;
    let stop = stop_flag();
    let running = {
        let spec = load(s.addr, "/", 8, &stop);
        tokio::spawn(async move { loadgen::run(&spec).await })
    };
    let lb = s.lb.clone();
    let [a, b, c] = [s.backends[0].addr, s.backends[1].addr, s.backends[2].addr];
    wait_until("traffic", Duration::from_secs(5), || attempts(&lb, a) > 100).await;

    // A rolling replacement: add d, drain a; add e, drain b.
    let d = backend("d", &[]).await;
    let e = backend("e", &[]).await;
    let mut g = s.group.clone();
    for (add, remove) in [(d.addr, a), (e.addr, b)] {
        g.targets.push(add);
        lb.apply(config(&g)).expect("apply");
        wait_until("new target healthy", Duration::from_secs(5), || {
            lb.status().iter().any(|t| t.addr == add && t.state == "healthy")
        })
        .await;
        g.targets.retain(|t| *t != remove);
        lb.apply(config(&g)).expect("apply");
        let before = attempts(&lb, add);
        wait_until("new target serving", Duration::from_secs(5), || {
            attempts(&lb, add) > before + 50
        })
        .await;
    }
    let drained = attempts(&lb, a);
    stop.store(true, Ordering::Relaxed);
    let r = running.await.expect("join").expect("load");
    assert_clean(&r, "targets replaced under load");
    assert_eq!(attempts(&lb, a), drained, "a drained target kept getting requests");
    assert!(lb.status().iter().all(|t| t.addr != a || t.state == "draining"));
    assert!(attempts(&lb, c) > 0);
    s.backends.push(d);
    s.backends.push(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_times_out_and_is_ejected() {
    let backends = vec![
        backend("hang", &["--latency-ms", "3000"]).await,
        backend("b", &[]).await,
        backend("c", &[]).await,
    ];
    let s = start(backends, |g| {
        g.request_timeout = Duration::from_millis(1000);
        g.algorithm = berth_lb::Algorithm::RoundRobin;
        g.outlier = OutlierConfig {
            consecutive_errors: 2,
            base_ejection: Duration::from_secs(30),
            ..OutlierConfig::default()
        };
    })
    .await;
    let hang = s.backends[0].addr;
    let mut spec = LoadSpec::new(format!("http://{}/", s.addr));
    spec.connections = 4;
    spec.requests = Some(40);
    let r = loadgen::run(&spec).await.expect("load");
    // Each request that met the hanging backend was retried elsewhere.
    assert_clean(&r, "one backend hangs");
    let st = s.lb.status();
    let h = st.iter().find(|t| t.addr == hang).expect("hanging target listed");
    assert_eq!(h.state, "ejected", "{st:?}");
    assert!(h.ejections >= 1);
    let metrics = s.lb.metrics_text();
    let timeouts = format!("berth_lb_errors_total{{group=\"app\",target=\"{hang}\",kind=\"timeout\"}} ");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&timeouts))
        .expect("timeout series");
    let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("count");
    assert!(n >= 2, "{line}");
    // While ejected, it gets nothing more.
    let before = attempts(&s.lb, hang);
    let r = loadgen::run(&spec).await.expect("load");
    assert_clean(&r, "after ejection");
    assert_eq!(attempts(&s.lb, hang), before);
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_others_are_unaffected() {
    let backends = vec![
        backend("a", &[]).await,
        backend("b", &[]).await,
        backend("c", &[]).await,
    ];
    let s = start(backends, |_| {}).await;
    let stop = stop_flag();
    let running = {
        let spec = load(s.addr, "/", 4, &stop);
        tokio::spawn(async move { loadgen::run(&spec).await })
    };
    for _ in 0..20 {
        let resp = raw(s.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        let resp = raw(s.addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    }
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let resp = raw(s.addr, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let resp = raw(
        s.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let resp = raw(
        s.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("body=5"), "{resp}");
    stop.store(true, Ordering::Relaxed);
    let r = running.await.expect("join").expect("load");
    assert_clean(&r, "concurrent well-formed clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_sheds_requests_beyond_max_pending() {
    let s = start(vec![backend("slow", &["--latency-ms", "5000"]).await], |g| {
        g.max_pending_per_target = 2;
        g.max_attempts = 1;
    })
    .await;
    let mut spec = LoadSpec::new(format!("http://{}/", s.addr));
    spec.connections = 6;
    spec.requests = Some(6);
    let r = loadgen::run(&spec).await.expect("load");
    let ok = r.statuses.get(&200).copied().unwrap_or(0);
    let shed = r.statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(ok + shed, 6, "{}", r.to_text());
    assert!((1..=2).contains(&ok), "{}", r.to_text());
    assert!(
        s.lb.metrics_text()
            .contains("berth_lb_errors_total{group=\"app\",kind=\"circuit_open\"} ")
    );
    assert!(
        !s.lb
            .metrics_text()
            .contains("berth_lb_errors_total{group=\"app\",kind=\"circuit_open\"} 0\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text_format() {
    let s = start(vec![backend("a", &[]).await], |_| {}).await;
    let mut spec = LoadSpec::new(format!("http://{}/", s.addr));
    spec.requests = Some(10);
    spec.connections = 2;
    assert_clean(&loadgen::run(&spec).await.expect("load"), "warm-up");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let maddr = listener.local_addr().expect("addr");
    let lb = s.lb.clone();
    tokio::spawn(async move { lb.serve_metrics(listener, std::future::pending()).await });
    let text = raw(maddr, b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("# TYPE berth_lb_requests_total counter"));
    assert!(text.contains("berth_lb_requests_total{group=\"app\"} 10"), "{text}");
    assert!(text.contains("berth_lb_target_state{group=\"app\",target=\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_proxied() {
    use http_body_util::{BodyExt, Empty};
    let s = start(vec![backend("a", &[]).await], |_| {}).await;
    let stream = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for i in 0..5 {
        let req = http::Request::get(format!("http://{}/h2/{i}", s.addr))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(&format!("GET /h2/{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_binds_and_unbinds_listeners_from_the_config() {
    let a = backend("a", &[]).await;
    let lb = Lb::new(ProxySettings::default());
    let g = group(vec![a.addr]);
    let mut cfg = config(&g);
    cfg.listeners[0].bind = Some("127.0.0.1:0".parse().unwrap());
    let (tx, rx) = tokio::sync::watch::channel(cfg.clone());
    let runner = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.run(rx, 2).await })
    };
    wait_until("listener bound", Duration::from_secs(5), || {
        lb.listener_addr("web").is_some()
    })
    .await;
    let addr = lb.listener_addr("web").unwrap();
    wait_until("target healthy", Duration::from_secs(5), || healthy(&lb) == 1).await;
    let mut spec = LoadSpec::new(format!("http://{addr}/"));
    spec.connections = 4;
    spec.requests = Some(100);
    assert_clean(&loadgen::run(&spec).await.expect("load"), "listener from config");

    cfg.listeners.clear();
    tx.send(cfg).expect("runner alive");
    wait_until("listener unbound", Duration::from_secs(5), || {
        lb.listener_addr("web").is_none()
    })
    .await;
    // The socket closes once the accept loop has seen the new config; wait
    // for that with a deadline rather than racing it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "a removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("run returns")
        .expect("join");
}
