//! Body types: what credproxy answers with, and the request body streamed upstream with
//! credential trailers stripped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderName;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: credproxy's own (small, whole) or the upstream's (streamed).
#[derive(Debug)]
pub enum Body {
    /// A complete body credproxy produced; `None` once sent.
    Full(Option<Bytes>),
    /// The upstream's body, passed through frame by frame.
    Upstream(Incoming),
}

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    let b = b.into();
    Body::Full((!b.is_empty()).then_some(b))
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Upstream(inc) => Pin::new(inc).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Upstream(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream(inc) => inc.size_hint(),
        }
    }
}

/// The agent's request body on its way upstream: data as it arrives; trailers without the
/// headers that carry credentials.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None`: no body (a retried bodiless request).
    inner: Option<Incoming>,
    strip: Option<Arc<[HeaderName]>>,
}

impl UpstreamBody {
    /// Wrap `inner`; `strip` names trailer fields to drop (`None` passes trailers untouched).
    pub fn new(inner: Incoming, strip: Option<Arc<[HeaderName]>>) -> Self {
        UpstreamBody { inner: Some(inner), strip }
    }

    /// No body.
    pub fn empty() -> Self {
        UpstreamBody { inner: None, strip: None }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match (frame.into_trailers(), &this.strip) {
                    (Ok(mut trailers), Some(strip)) => {
                        for name in strip.iter() {
                            trailers.remove(name);
                        }
                        Frame::trailers(trailers)
                    }
                    (Ok(trailers), None) => Frame::trailers(trailers),
                    (Err(data), _) => data,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
