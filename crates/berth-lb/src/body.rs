//! The two body types of the proxy, as plain enums rather than boxed trait
//! objects: one allocation less per request each way.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::h1::RawBody;
use crate::pool::Lease;
use crate::proxy::BoxError;
use crate::state::InFlight;

/// A request body on its way to a target.
pub(crate) enum UpstreamBody {
    /// Kept in memory (and so replayable); `None` once sent.
    Full(Option<Bytes>),
    /// Streamed from the client, with the body-size limit.
    Stream(Limited<Incoming>),
}

impl UpstreamBody {
    pub fn full(b: Bytes) -> Self {
        UpstreamBody::Full((!b.is_empty()).then_some(b))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(b) => b.is_none(),
            UpstreamBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Stream(s) => s.size_hint(),
        }
    }
}

/// What a response from a target keeps alive until its body is done: the
/// target's and group's in-flight counts, and the pooled connection.
pub(crate) struct Hold {
    pub _target: InFlight,
    pub _group: crate::proxy::GroupInFlight,
    /// The hyper client's pooled connection (the lean path's connection
    /// lives in its body).
    pub _lease: Option<Lease>,
}

/// A response body on its way to the client.
pub(crate) enum RespBody {
    /// Our own answer (errors, metrics); `None` once sent.
    Full(Option<Bytes>),
    /// A target's answer, streamed.
    Upstream { body: Incoming, _hold: Hold },
    /// A target's answer on the lean path, streamed.
    Raw { body: RawBody, _hold: Hold },
}

impl RespBody {
    pub fn full(b: Bytes) -> Self {
        RespBody::Full((!b.is_empty()).then_some(b))
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RespBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RespBody::Raw { body, .. } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream { body, .. } => body.is_end_stream(),
            RespBody::Raw { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream { body, .. } => body.size_hint(),
            RespBody::Raw { body, .. } => body.size_hint(),
        }
    }
}
