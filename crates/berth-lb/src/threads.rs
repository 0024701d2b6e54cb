//! Thread-per-core serving: each OS thread runs a single-threaded tokio
//! runtime with its own `SO_REUSEPORT` listening socket and its own upstream
//! connection pool (as nginx runs one worker process per core). Requests
//! then never hop between threads, which matters most when the machine is
//! busy. Configuration, health and metrics stay shared.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::LbError;
use crate::lb::Lb;

/// Listener threads started by [`Lb::serve_threads`]; stopped by
/// [`ServerThreads::shutdown`] or on drop.
#[derive(Debug)]
pub struct ServerThreads {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl ServerThreads {
    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open connections finish their current request,
    /// and joins the threads. Blocking: call it outside async code (or from
    /// `spawn_blocking`).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for ServerThreads {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

impl Lb {
    /// Follows `rx` like [`Lb::follow`], and also serves every listener that
    /// has a `bind` address (on `threads` threads each), stopping listeners
    /// that disappear or move. Returns once the sender is dropped, after
    /// stopping its listeners. Listeners that fail to bind are logged and
    /// tried again on the next configuration.
    pub async fn run(&self, mut rx: watch::Receiver<Config>, threads: usize) {
        let mut bound: HashMap<String, (SocketAddr, ServerThreads)> = HashMap::new();
        loop {
            let cfg = rx.borrow_and_update().clone();
            let wanted: HashMap<String, SocketAddr> = cfg
                .listeners
                .iter()
                .filter_map(|l| Some((l.name.clone(), l.bind?)))
                .collect();
            match self.apply(cfg) {
                Err(e) => tracing::warn!(error = %e, "load balancer config rejected"),
                Ok(()) => {
                    let stale: Vec<String> = bound
                        .iter()
                        .filter(|(n, (a, _))| wanted.get(*n) != Some(a))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in stale {
                        if let Some((_, server)) = bound.remove(&name) {
                            self.set_listener_addr(&name, None);
                            let _ = tokio::task::spawn_blocking(move || server.shutdown()).await;
                        }
                    }
                    for (name, addr) in wanted {
                        if bound.contains_key(&name) {
                            continue;
                        }
                        let (lb, n) = (self.clone(), name.clone());
                        match tokio::task::spawn_blocking(move || lb.serve_threads(addr, &n, threads)).await {
                            Ok(Ok(server)) => {
                                self.set_listener_addr(&name, Some(server.local_addr()));
                                bound.insert(name, (addr, server));
                            }
                            Ok(Err(e)) => tracing::warn!(listener = %name, error = %e, "cannot serve listener"),
                            Err(e) => tracing::warn!(listener = %name, error = %e, "listener start panicked"),
                        }
                    }
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        for (name, (_, server)) in bound.drain() {
            self.set_listener_addr(&name, None);
            let _ = tokio::task::spawn_blocking(move || server.shutdown()).await;
        }
    }

    /// Serves listener `name` on `addr` from `threads` threads (see the
    /// module docs). Returns once every thread listens.
    pub fn serve_threads(&self, addr: SocketAddr, name: &str, threads: usize) -> Result<ServerThreads, LbError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        let mut bound = addr;
        for i in 0..threads.max(1) {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, LbError>>();
            let (lb, name, mut stop_rx) = (self.clone(), name.to_string(), stop_rx.clone());
            let target = bound;
            let h = std::thread::Builder::new()
                .name(format!("berth-lb-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(LbError::io("starting a listener runtime", e)));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match rt_bind(target) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let local = listener.local_addr().unwrap_or(target);
                        let _ = ready_tx.send(Ok(local));
                        let shutdown = async move {
                            while !*stop_rx.borrow_and_update() {
                                if stop_rx.changed().await.is_err() {
                                    return;
                                }
                            }
                        };
                        if let Err(e) = lb.serve(listener, &name, shutdown).await {
                            tracing::warn!(error = %e, "listener thread stopped");
                        }
                    });
                })
                .map_err(|e| LbError::io("starting a listener thread", e))?;
            handles.push(h);
            match ready_rx.recv() {
                Ok(Ok(a)) => bound = a,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(LbError::Process("listener thread died while starting".into())),
            }
        }
        Ok(ServerThreads {
            addr: bound,
            stop,
            handles,
        })
    }
}

fn rt_bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, LbError> {
    bind(addr).map_err(|e| LbError::io(format!("binding {addr}"), e))
}
