//! The proxy's lean HTTP/1.1 path to targets, for the common request: one
//! whose body is already in memory (most are empty). The request is written
//! with one `write`, the response head read and parsed in the request's own
//! task, and the response body streamed to the client straight from the
//! target's socket, without a connection task, channels or wake-ups between
//! tasks. The connection returns to its thread's pool once the body ended
//! cleanly. Requests with streamed bodies go through hyper's client
//! ([`crate::pool`]) instead.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//! 304; `Transfer-Encoding: chunked` (decoded here, re-framed by the server
//! side); `Content-Length`; otherwise the body runs to the end of the
//! connection, which is then not reused.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pool::SendError;
use crate::proxy::BoxError;
use crate::state::lock;

/// Largest response head accepted from a target.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;

/// An idle-able connection to a target.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read but not consumed yet.
    buf: BytesMut,
    /// Whether the last response head left the connection open (HTTP/1.1
    /// without `Connection: close`, and a body with a known end).
    keep_alive: bool,
}

impl Conn {
    /// Whether an idle connection can take a request: a socket that became
    /// readable while idle was closed by the target (or sent garbage).
    fn usable(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `buf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            self.buf.reserve(16 * 1024);
            match self.stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Idle connections per target, one set per listener thread.
#[derive(Debug)]
pub(crate) struct RawPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl RawPool {
    pub fn new(max_idle: usize, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            connect_timeout,
        })
    }

    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.usable() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = lock(&self.idle);
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle {
            list.push(conn);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let stream = crate::pool::connect(addr, self.connect_timeout).await?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            keep_alive: true,
        })
    }

    /// Sends a request with an in-memory body and reads the response head.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: &Outgoing<'_>,
    ) -> Result<(http::response::Parts, Framing, Conn), SendError> {
        let mut wire = Vec::with_capacity(256 + req.body.len());
        req.encode(&mut wire);
        // A pooled connection first; one that fails before any response
        // byte came back had been closed by the target: the request never
        // reached it, so a fresh connection is tried.
        if let Some(mut conn) = self.take(addr)
            && conn.stream.write_all(&wire).await.is_ok()
        {
            match read_head(&mut conn, req.method).await {
                Ok((parts, framing)) => return Ok((parts, framing, conn)),
                Err(HeadError::Closed) if req.resend => {}
                Err(HeadError::Closed) => {
                    return Err(SendError::Failed(format!(
                        "{addr}: connection closed before the response"
                    )));
                }
                Err(HeadError::Failed(e)) => return Err(SendError::Failed(format!("{addr}: {e}"))),
            }
        }
        let mut conn = self.connect(addr).await?;
        if let Err(e) = conn.stream.write_all(&wire).await {
            return Err(SendError::NotSent(format!("{addr}: {e}")));
        }
        match read_head(&mut conn, req.method).await {
            Ok((parts, framing)) => Ok((parts, framing, conn)),
            Err(HeadError::Closed) => Err(SendError::Failed(format!(
                "{addr}: connection closed before the response"
            ))),
            Err(HeadError::Failed(e)) => Err(SendError::Failed(format!("{addr}: {e}"))),
        }
    }
}

/// A request as written to a target.
pub(crate) struct Outgoing<'a> {
    /// Whether the request may be sent again on a fresh connection when a
    /// pooled one ends before any response byte (idempotent requests).
    pub resend: bool,
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Outgoing<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in self.headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let expects_body = matches!(*self.method, Method::POST | Method::PUT | Method::PATCH);
        if !self.body.is_empty() || expects_body {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
    }
}

enum HeadError {
    /// The connection ended before any byte of a response.
    Closed,
    Failed(String),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the target closes the connection.
    Close,
}

async fn read_head(conn: &mut Conn, method: &Method) -> Result<(http::response::Parts, Framing), HeadError> {
    loop {
        if let Some(head) = parse_head(conn, method)? {
            return Ok(head);
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(HeadError::Failed("response head too large".into()));
        }
        let had = conn.buf.len();
        match conn.fill().await {
            Ok(0) if had == 0 => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Failed("connection closed inside the response head".into())),
            Ok(_) => {}
            Err(_) if had == 0 => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Failed(e.to_string())),
        }
    }
}

/// Parses a complete head out of `conn.buf` (skipping 1xx interim
/// responses); `None` when more bytes are needed.
fn parse_head(conn: &mut Conn, method: &Method) -> Result<Option<(http::response::Parts, Framing)>, HeadError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut slots);
        let len = match r.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Failed(format!("bad response head: {e}"))),
        };
        let code = r.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::Failed(format!("bad status {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(HeadError::Failed("unexpected protocol switch".into()));
            }
            conn.buf.advance(len);
            continue;
        }
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut headers = HeaderMap::with_capacity(r.headers.len());
        let mut chunked = false;
        let mut length: Option<u64> = None;
        let mut close = version == Version::HTTP_10;
        for h in r.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| HeadError::Failed(format!("bad header name {:?}", h.name)))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| HeadError::Failed(format!("bad value of header {name}")))?;
            if name == header::TRANSFER_ENCODING {
                chunked = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if name == header::CONTENT_LENGTH {
                let n = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| HeadError::Failed("bad content-length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Failed("conflicting content-length".into()));
                }
                length = Some(n);
            } else if name == header::CONNECTION {
                let v = value.to_str().unwrap_or("");
                if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                    close = true;
                } else if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("keep-alive")) {
                    close = false;
                }
            }
            headers.append(name, value);
        }
        let framing =
            if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Empty
            } else if headers.contains_key(header::TRANSFER_ENCODING) {
                if chunked { Framing::Chunked } else { Framing::Close }
            } else if let Some(n) = length {
                if n == 0 { Framing::Empty } else { Framing::Length(n) }
            } else {
                Framing::Close
            };
        conn.keep_alive = !close && framing != Framing::Close;
        conn.buf.advance(len);
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        return Ok(Some((parts, framing)));
    }
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// A response body read from a target's connection; the connection goes
/// back to the pool when the body ended cleanly and the target keeps it
/// open.
#[derive(Debug)]
pub(crate) struct RawBody {
    conn: Option<Conn>,
    state: State,
    pool: Arc<RawPool>,
    addr: SocketAddr,
}

impl RawBody {
    pub fn new(conn: Conn, framing: Framing, pool: Arc<RawPool>, addr: SocketAddr) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Close => State::Close,
        };
        let mut b = RawBody {
            conn: Some(conn),
            state,
            pool,
            addr,
        };
        if b.state == State::Done {
            b.release();
        }
        b
    }

    /// Reads the rest of a small body and pools the connection, for an
    /// answer that is discarded (a retried 5xx). Gives up (closing the
    /// connection) beyond `limit` bytes.
    pub async fn discard(mut self, limit: usize) {
        let mut seen = 0usize;
        while let Some(Ok(f)) = std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await {
            seen += f.data_ref().map_or(0, Bytes::len);
            if seen > limit {
                self.conn = None;
                return;
            }
        }
    }

    fn release(&mut self) {
        if let Some(c) = self.conn.take()
            && c.keep_alive
            && c.buf.is_empty()
        {
            self.pool.put(self.addr, c);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }

    /// Takes up to `n` buffered bytes.
    fn take(&mut self, n: u64) -> Option<Bytes> {
        let c = self.conn.as_mut()?;
        let k = usize::try_from(n).unwrap_or(usize::MAX).min(c.buf.len());
        (k > 0).then(|| c.buf.split_to(k).freeze())
    }

    /// Takes one CRLF-terminated line (without the CRLF), if complete.
    fn line(&mut self) -> Result<Option<BytesMut>, &'static str> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        match c.buf.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let line = c.buf.split_to(i);
                c.buf.advance(2);
                Ok(Some(line))
            }
            None if c.buf.len() > MAX_LINE => Err("chunk line too long"),
            None => Ok(None),
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(rem) => {
                    if let Some(b) = this.take(rem) {
                        let left = rem - b.len() as u64;
                        this.state = if left == 0 { State::Done } else { State::Length(left) };
                        if left == 0 {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                State::Close => {
                    if let Some(b) = this.take(u64::MAX) {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                State::Chunked(Chunk::Size) => match this.line() {
                    Err(e) => return this.fail(e),
                    Ok(Some(line)) => {
                        let hex = line[..].split(|b: &u8| *b == b';').next().unwrap_or(&[]);
                        let size = std::str::from_utf8(hex)
                            .ok()
                            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
                        match size {
                            None => return this.fail("bad chunk size"),
                            Some(0) => this.state = State::Chunked(Chunk::Trailers),
                            Some(n) => this.state = State::Chunked(Chunk::Data(n)),
                        }
                        continue;
                    }
                    Ok(None) => {}
                },
                State::Chunked(Chunk::Data(rem)) => {
                    if let Some(b) = this.take(rem) {
                        let left = rem - b.len() as u64;
                        this.state = State::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                State::Chunked(Chunk::DataEnd) => match this.line() {
                    Err(e) => return this.fail(e),
                    Ok(Some(l)) if l.is_empty() => {
                        this.state = State::Chunked(Chunk::Size);
                        continue;
                    }
                    Ok(Some(_)) => return this.fail("chunk data longer than its size"),
                    Ok(None) => {}
                },
                State::Chunked(Chunk::Trailers) => match this.line() {
                    Err(e) => return this.fail(e),
                    Ok(Some(l)) if l.is_empty() => {
                        this.state = State::Done;
                        this.release();
                        return Poll::Ready(None);
                    }
                    // Trailers are not forwarded.
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                },
            }
            // Need more bytes.
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(c.poll_fill(cx)) {
                Ok(0) if this.state == State::Close => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("target closed the connection inside the body"),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A target that answers each request with the next canned response.
    async fn target(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for r in responses {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(r).await.unwrap();
            }
        });
        addr
    }

    async fn get(pool: &Arc<RawPool>, addr: SocketAddr, method: Method) -> (u16, HeaderMap, Bytes) {
        let (path, headers, body) = (PathAndQuery::from_static("/x"), HeaderMap::new(), Bytes::new());
        let req = Outgoing {
            resend: true,
            method: &method,
            path: &path,
            headers: &headers,
            body: &body,
        };
        let Ok((parts, framing, conn)) = pool.send(addr, &req).await else {
            panic!("send failed");
        };
        let body = RawBody::new(conn, framing, pool.clone(), addr);
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status.as_u16(), parts.headers, bytes)
    }

    #[tokio::test]
    async fn length_chunked_and_interim_responses_share_one_connection() {
        let addr = target(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let pool = RawPool::new(8, Duration::from_secs(1));
        let (s, h, b) = get(&pool, addr, Method::GET).await;
        assert_eq!((s, &b[..], h["x-a"].as_bytes()), (200, &b"hello"[..], &b"1"[..]));
        let (s, _, b) = get(&pool, addr, Method::GET).await;
        assert_eq!((s, &b[..]), (201, &b"abcde"[..]));
        // HEAD: a content-length but no body.
        let (s, h, b) = get(&pool, addr, Method::HEAD).await;
        assert_eq!((s, b.len(), h["content-length"].as_bytes()), (200, 0, &b"3"[..]));
        let (s, _, b) = get(&pool, addr, Method::GET).await;
        assert_eq!((s, b.len()), (204, 0));
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_is_not_pooled() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it").await.unwrap();
        });
        let pool = RawPool::new(8, Duration::from_secs(1));
        let (s, _, b) = get(&pool, addr, Method::GET).await;
        assert_eq!((s, &b[..]), (200, &b"all of it"[..]));
        assert!(lock(&pool.idle).get(&addr).is_none_or(Vec::is_empty));
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_replaced_without_failing_the_request() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                // Then the target closes the idle connection.
            }
        });
        let pool = RawPool::new(8, Duration::from_secs(1));
        assert_eq!(get(&pool, addr, Method::GET).await.0, 200);
        assert_eq!(get(&pool, addr, Method::GET).await.0, 200);
    }

    #[tokio::test]
    async fn malformed_heads_and_chunks_are_errors() {
        let addr = target(vec![b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"]).await;
        let pool = RawPool::new(8, Duration::from_secs(1));
        let (path, headers, body) = (PathAndQuery::from_static("/"), HeaderMap::new(), Bytes::new());
        let req = Outgoing {
            resend: true,
            method: &Method::GET,
            path: &path,
            headers: &headers,
            body: &body,
        };
        assert!(matches!(pool.send(addr, &req).await, Err(SendError::Failed(_))));

        let addr = target(vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]).await;
        let Ok((_, framing, conn)) = pool.send(addr, &req).await else {
            panic!("head should parse")
        };
        let body = RawBody::new(conn, framing, pool.clone(), addr);
        assert!(body.collect().await.is_err());
    }

    #[test]
    fn requests_are_encoded_with_a_length_when_they_carry_a_body() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.example"));
        h.insert("content-length", HeaderValue::from_static("999"));
        let (path, body) = (PathAndQuery::from_static("/p?q=1"), Bytes::from_static(b"abc"));
        let mut out = Vec::new();
        Outgoing {
            resend: false,
            method: &Method::POST,
            path: &path,
            headers: &h,
            body: &body,
        }
        .encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.example\r\ncontent-length: 3\r\n\r\nabc"
        );
    }
}
