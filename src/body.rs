//! Body types: what credproxy answers with, and the request body streamed upstream with
//! credential trailers stripped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
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
                        strip_named(&mut trailers, strip);
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

/// Remove every field named in `names` (every copy), and every field whose name equals one of
/// them once `_` is read as `-`: WSGI/CGI stacks and several frameworks merge the two, so
/// `X_Api_Key` would reach the upstream's code as `X-Api-Key`.
pub fn strip_named(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
    let underscore = |n: &str| n.contains('_');
    if !headers.keys().any(|k| underscore(k.as_str())) && !names.iter().any(|n| underscore(n.as_str())) {
        return;
    }
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| names.iter().any(|n| same_but_underscores(k.as_str(), n.as_str())))
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(&name);
    }
}

/// Remove `names` (and their underscore aliases) from a `Trailer` field's list, so trailers that
/// carry credentials are not announced; the field goes when nothing is left.
pub fn strip_announced_trailers(headers: &mut HeaderMap, names: &[HeaderName]) {
    let Some(v) = headers.get(http::header::TRAILER) else { return };
    let kept: Vec<&str> = v
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !names.iter().any(|n| same_but_underscores(&t.to_ascii_lowercase(), n.as_str())))
        .collect();
    match http::HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(http::header::TRAILER, v);
        }
        _ => {
            headers.remove(http::header::TRAILER);
        }
    }
}

/// Equal once `_` is read as `-` on both sides (both already lower-case).
fn same_but_underscores(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_aliases_of_stripped_names_go_too() {
        let mut h = HeaderMap::new();
        for (k, v) in [("x_api_key", "a"), ("X_API-KEY", "b"), ("api_key", "c"), ("x-api-key", "d"), ("x_other", "e")] {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h.append("authorization", "x".parse().unwrap());
        strip_named(
            &mut h,
            &[HeaderName::from_static("x-api-key"), HeaderName::from_static("api-key"), http::header::AUTHORIZATION],
        );
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x_other"]);
        // A configured name with `_` strips the dashed form too.
        let mut h = HeaderMap::new();
        h.append("x-token", "a".parse().unwrap());
        h.append("x_token", "b".parse().unwrap());
        h.append("x-kept", "c".parse().unwrap());
        strip_named(&mut h, &[HeaderName::from_static("x_token")]);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-kept"]);
    }
}
