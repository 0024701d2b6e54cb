//! The [`Lb`] handle: holds the routing snapshot, applies configurations,
//! serves listeners and the metrics endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::RespBody;
use crate::config::{Config, ProxySettings};
use crate::error::LbError;
use crate::metrics::{self, Series};
use crate::pool::Pool;
use crate::proxy::{self, UpstreamClient};
use crate::state::{self, Routing, TargetStatus, lock};

/// The load balancer data plane. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Lb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lb").finish_non_exhaustive()
    }
}

struct Inner {
    routing: RwLock<Arc<Routing>>,
    /// Addresses of the listeners [`Lb::run`] serves.
    bound: Mutex<HashMap<String, SocketAddr>>,
    apply_lock: Mutex<()>,
    client: UpstreamClient,
    settings: ProxySettings,
}

impl Lb {
    /// A load balancer with no listeners and no groups yet. Must be called
    /// inside a tokio runtime.
    pub fn new(settings: ProxySettings) -> Self {
        let client = upstream_client(&settings);
        Self {
            inner: Arc::new(Inner {
                routing: RwLock::new(Arc::new(Routing::default())),
                bound: Mutex::new(HashMap::new()),
                apply_lock: Mutex::new(()),
                client,
                settings,
            }),
        }
    }

    fn routing(&self) -> Arc<Routing> {
        self.inner.routing.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the configuration. Targets that stay keep their health,
    /// outlier state and connections; removed targets drain: they take no new
    /// requests and finish the ones they have. Must be called inside a tokio
    /// runtime (health checkers are spawned).
    pub fn apply(&self, cfg: Config) -> Result<(), LbError> {
        cfg.validate()?;
        let _serial = lock(&self.inner.apply_lock);
        let old = self.routing();
        let (next, fresh) = state::build(&old, cfg, Instant::now());
        *self.inner.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        for t in &fresh {
            crate::checker::spawn(self.inner.client.clone(), t);
        }
        Ok(())
    }

    /// Applies every configuration published on `rx` until its sender is
    /// dropped. Invalid configurations are logged and skipped.
    pub async fn follow(&self, mut rx: watch::Receiver<Config>) {
        loop {
            let cfg = rx.borrow_and_update().clone();
            if let Err(e) = self.apply(cfg) {
                tracing::warn!(error = %e, "load balancer config rejected");
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The address listener `name` is served on by [`Lb::run`], once bound.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.inner.bound).get(name).copied()
    }

    pub(crate) fn set_listener_addr(&self, name: &str, addr: Option<SocketAddr>) {
        let mut b = lock(&self.inner.bound);
        match addr {
            Some(a) => b.insert(name.to_string(), a),
            None => b.remove(name),
        };
    }

    /// Health, ejection and draining state of every target.
    pub fn status(&self) -> Vec<TargetStatus> {
        state::status(&self.routing(), Instant::now())
    }

    /// Metrics of every group and target in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let routing = self.routing();
        let now = Instant::now();
        let mut names: Vec<_> = routing.groups.keys().collect();
        names.sort();
        let mut series = Vec::new();
        for name in names {
            let g = &routing.groups[name];
            series.push(Series {
                group: name,
                target: None,
                counters: g.shared.counters.snapshot(),
                in_flight: g.shared.in_flight.load(Relaxed),
                state: None,
            });
            for t in g.targets.iter().chain(g.draining.iter()) {
                series.push(Series {
                    group: name,
                    target: Some(t.addr.to_string()),
                    counters: t.counters.snapshot(),
                    in_flight: u64::from(t.outstanding.load(Relaxed)),
                    state: Some(t.state_name(now)),
                });
            }
        }
        metrics::render(&series)
    }

    /// Serves listener `name` (rules from the applied config) on `listener`
    /// until `shutdown` resolves; open connections then finish their current
    /// requests and close.
    pub async fn serve(
        &self,
        listener: TcpListener,
        name: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LbError> {
        let s = &self.inner.settings;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(s.max_header_bytes.max(8192))
            .writev(false)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        let builder = Arc::new(builder);
        let pool = Pool::new(s.pool_max_idle_per_target, s.connect_timeout);
        let name: Arc<str> = name.into();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                lb: self.inner.clone(),
                pool: pool.clone(),
                builder: builder.clone(),
                listener: name.clone(),
                remote,
            };
            tokio::spawn(conn.run(stream, stop_rx.clone()));
        }
        let _ = stop_tx.send(true);
        Ok(())
    }

    /// Serves `GET /metrics` (Prometheus text) on `listener` until
    /// `shutdown` resolves.
    pub async fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LbError> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                a = listener.accept() => a.map_err(|e| LbError::io("accepting metrics connection", e))?,
            };
            let lb = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = proxy::text(hyper::StatusCode::OK, lb.metrics_text().trim_end());
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    } else {
                        proxy::text(hyper::StatusCode::NOT_FOUND, "try /metrics")
                    };
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// The pooled client of the health checkers.
fn upstream_client(settings: &ProxySettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(settings.pool_max_idle_per_target)
        .build(connector)
}

/// One client connection.
struct Conn {
    lb: Arc<Inner>,
    pool: Arc<Pool>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    listener: Arc<str>,
    remote: SocketAddr,
}

struct ConnCtx {
    lb: Arc<Inner>,
    pool: Arc<Pool>,
    listener: Arc<str>,
    client: http::HeaderValue,
    activity: Arc<Activity>,
}

/// When a connection last finished a request, and how many it has open.
struct Activity {
    active: AtomicU32,
    last: AtomicU64,
    born: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.active.load(Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis((self.born.elapsed().as_millis() as u64).saturating_sub(self.last.load(Relaxed)))
    }
}

impl Conn {
    async fn run(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let activity = Arc::new(Activity {
            active: AtomicU32::new(0),
            last: AtomicU64::new(0),
            born: Instant::now(),
        });
        let idle_timeout = self.lb.settings.idle_timeout;
        // Everything a request needs, in one per-connection Arc: cloning it
        // per request touches no memory other threads write.
        let ctx = Arc::new(ConnCtx {
            lb: self.lb.clone(),
            pool: self.pool.clone(),
            listener: self.listener.clone(),
            client: proxy::client_ip(self.remote),
            activity: activity.clone(),
        });
        let svc = service_fn(move |req: hyper::Request<Incoming>| {
            let ctx = ctx.clone();
            ctx.activity.active.fetch_add(1, Relaxed);
            async move {
                let lb = &ctx.lb;
                let resp: hyper::Response<RespBody> =
                    proxy::handle(&lb.routing, &ctx.pool, &lb.settings, &ctx.listener, &ctx.client, req).await;
                ctx.activity.active.fetch_sub(1, Relaxed);
                ctx.activity.touch();
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let check_every = (idle_timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(remote = %self.remote, error = %e, "client connection ended");
                    }
                    return;
                }
                _ = stop.changed() => break,
                _ = tokio::time::sleep(check_every) => {
                    if activity.idle_for() >= idle_timeout {
                        break;
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
