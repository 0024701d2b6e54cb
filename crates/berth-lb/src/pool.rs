//! Keep-alive HTTP/1.1 connections to targets, one pool per listener thread.
//! A connection goes back to the pool when the response body that used it is
//! dropped; one that the target closed meanwhile is noticed and skipped at
//! checkout. A request that no connection accepted comes back unsent, so
//! the caller knows it never reached the target.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::state::lock;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request was never written to a target (connect failed, or every
    /// connection was closed before it could be used).
    NotSent(String),
    /// The connection failed after the request may have been sent.
    Broken(hyper::Error),
    /// The same, on the lean path ([`crate::h1`]).
    Failed(String),
}

type Sender = SendRequest<UpstreamBody>;

#[derive(Debug)]
pub(crate) struct Pool {
    /// The lean path's connections ([`crate::h1`]).
    pub raw: Arc<crate::h1::RawPool>,
    idle: Mutex<HashMap<SocketAddr, Vec<Sender>>>,
    max_idle: usize,
    connect_timeout: Duration,
}

/// A connection lent to one response; returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take()
            && !s.is_closed()
        {
            let mut idle = lock(&self.pool.idle);
            let list = idle.entry(self.addr).or_default();
            if list.len() < self.pool.max_idle {
                list.push(s);
            }
        }
    }
}

/// A new TCP connection to a target, with `TCP_NODELAY`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::NotSent(format!("connect {addr}: {e}"))),
        Err(_) => return Err(SendError::NotSent(format!("connect {addr}: timed out"))),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    pub fn new(max_idle: usize, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            raw: crate::h1::RawPool::new(max_idle, connect_timeout),
            idle: Mutex::new(HashMap::new()),
            max_idle,
            connect_timeout,
        })
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Sender> {
        lock(&self.idle).get_mut(&addr).and_then(Vec::pop)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, SendError> {
        let stream = connect(addr, self.connect_timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::NotSent(format!("handshake {addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` on an idle connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // Idle connections first; a closed one hands the request back.
        while let Some(mut s) = self.take_idle(addr) {
            if s.is_closed() || (!s.is_ready() && s.ready().await.is_err()) {
                continue;
            }
            match s.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, s))),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Broken(e.into_error())),
                },
            }
        }
        let mut s = self.connect(addr).await?;
        match s.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(addr, s))),
            Err(mut e) => match e.take_message() {
                Some(_) => Err(SendError::NotSent(format!("{addr}: {}", e.error()))),
                None => Err(SendError::Broken(e.into_error())),
            },
        }
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr, sender: Sender) -> Lease {
        Lease {
            pool: self.clone(),
            addr,
            sender: Some(sender),
        }
    }
}
