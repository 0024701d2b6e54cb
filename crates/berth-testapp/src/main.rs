//! `berth-testapp`: the workload Berth's tests, demo and benchmarks run.
//!
//! A small HTTP/1.1 + h2c server that can be told to be slow, fail a fraction
//! of requests, exit after a while with a given code, or hold memory. It
//! depends on nothing of Berth's, and builds as a static binary so that a
//! `FROM scratch` image can carry it.
//!
//! Settings come from flags or the environment (flags win):
//! `--listen ADDR` / `LISTEN` (default `0.0.0.0:$PORT`, `PORT` default 8080),
//! `--latency-ms N` / `LATENCY_MS`, `--fail-rate F` / `FAIL_RATE` (0.0-1.0,
//! answered with 500), `--exit-after-ms N` / `EXIT_AFTER_MS`,
//! `--exit-code N` / `EXIT_CODE`, `--eat-memory-mib N` / `EAT_MEMORY_MIB`,
//! `--name S` / `NAME`. Paths: `/health` (200 "ok"), `/exit/N` (exits with
//! N), `/slow/MS`, anything else echoes the method, path and name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Debug, Clone)]
struct Config {
    listen: SocketAddr,
    latency: Duration,
    fail_rate: f64,
    exit_after: Option<Duration>,
    exit_code: i32,
    eat_memory_mib: usize,
    name: String,
}

fn setting(args: &[String], flag: &str, env: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
}

fn parse<T: std::str::FromStr>(args: &[String], flag: &str, env: &str, default: T) -> Result<T, String> {
    match setting(args, flag, env) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{flag}: cannot parse '{v}'")),
    }
}

fn config() -> Result<Config, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "berth-testapp [--listen ADDR] [--latency-ms N] [--fail-rate F] [--exit-after-ms N] [--exit-code N] [--eat-memory-mib N] [--name S]"
        );
        std::process::exit(0);
    }
    let port: u16 = parse(&args, "--port", "PORT", 8080)?;
    let listen = parse(&args, "--listen", "LISTEN", SocketAddr::from(([0, 0, 0, 0], port)))?;
    let fail_rate: f64 = parse(&args, "--fail-rate", "FAIL_RATE", 0.0)?;
    if !(0.0..=1.0).contains(&fail_rate) {
        return Err(format!("--fail-rate: {fail_rate} is not between 0 and 1"));
    }
    let exit_after: u64 = parse(&args, "--exit-after-ms", "EXIT_AFTER_MS", 0)?;
    Ok(Config {
        listen,
        latency: Duration::from_millis(parse(&args, "--latency-ms", "LATENCY_MS", 0)?),
        fail_rate,
        exit_after: (exit_after > 0).then(|| Duration::from_millis(exit_after)),
        exit_code: parse(&args, "--exit-code", "EXIT_CODE", 0)?,
        eat_memory_mib: parse(&args, "--eat-memory-mib", "EAT_MEMORY_MIB", 0)?,
        name: setting(&args, "--name", "NAME").unwrap_or_else(|| "testapp".to_string()),
    })
}

struct State {
    cfg: Config,
    served: AtomicU64,
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Deterministic failure spread: request n fails when the running fraction
/// of failures is below the configured rate (no RNG dependency, exact rate).
fn should_fail(n: u64, rate: f64) -> bool {
    let before = (n as f64 * rate).floor();
    let after = ((n + 1) as f64 * rate).floor();
    after > before
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    if path == "/health" {
        return Ok(text(StatusCode::OK, "ok\n".into()));
    }
    if let Some(code) = path.strip_prefix("/exit/") {
        let code: i32 = code.parse().unwrap_or(1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::process::exit(code);
        });
        return Ok(text(StatusCode::OK, format!("exiting with {code}\n")));
    }
    let body_len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let mut delay = state.cfg.latency;
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|s| s.parse::<u64>().ok()) {
        delay = Duration::from_millis(ms);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let n = state.served.fetch_add(1, Ordering::Relaxed);
    if should_fail(n, state.cfg.fail_rate) {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} injected failure\n", state.cfg.name),
        ));
    }
    Ok(text(
        StatusCode::OK,
        format!("{} {method} {path} body={body_len} n={n}\n", state.cfg.name),
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-testapp: {e}");
            std::process::exit(2);
        }
    };
    let _hog: Vec<u8> = if cfg.eat_memory_mib > 0 {
        // Touch every page so the memory is really resident.
        vec![1u8; cfg.eat_memory_mib * 1024 * 1024]
    } else {
        Vec::new()
    };
    if let Some(after) = cfg.exit_after {
        let code = cfg.exit_code;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("berth-testapp: exiting with {code} as configured");
            std::process::exit(code);
        });
    }
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-testapp: cannot listen on {}: {e}", cfg.listen);
            std::process::exit(3);
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("berth-testapp {} listening on {local}", cfg.name);
    let state = Arc::new(State {
        cfg,
        served: AtomicU64::new(0),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {
                println!("berth-testapp: SIGTERM, exiting");
                std::process::exit(0);
            }
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::should_fail;

    #[test]
    fn failure_rate_is_exact() {
        let fails = (0..1000).filter(|n| should_fail(*n, 0.1)).count();
        assert_eq!(fails, 100);
        assert_eq!((0..1000).filter(|n| should_fail(*n, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|n| should_fail(*n, 1.0)).count(), 1000);
    }
}
