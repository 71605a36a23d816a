//! The one error enum an agent can see, and its one exhaustive mapping to a response.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::metrics::Outcome;

/// The header on every response credproxy itself produces (and removed from upstream responses).
pub static CREDPROXY_ERROR: HeaderName = HeaderName::from_static("credproxy-error");

/// Every error credproxy answers an agent with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The policy does not allow the request (or the destination address is private).
    #[error("{0}")]
    RouteDenied(&'static str),
    /// The tool has no valid token right now.
    #[error("no valid credential for this tool right now")]
    CredentialUnavailable,
    /// Resolving or connecting to the upstream failed.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream's TLS certificate or handshake failed verification.
    #[error("upstream TLS verification failed: {0}")]
    UpstreamTls(String),
    /// The upstream did not connect or answer in time.
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// A malformed or ambiguous request.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The inner request's authority differs from the tunnel's.
    #[error("request authority does not match the connection")]
    Misdirected,
    /// The request head is too large, or leaves no room for the injected header.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The request target is too long.
    #[error("request URI too long")]
    UriTooLong,
    /// Over `max_connections`.
    #[error("too many connections")]
    TooManyConnections,
    /// `Proxy-Authorization` missing or wrong.
    #[error("proxy authentication required")]
    ProxyAuthRequired,
    /// The request would come back to credproxy itself.
    #[error("request loops back to credproxy")]
    LoopDetected,
}

impl ProxyError {
    /// Status, `credproxy-error` code and request outcome: the one mapping.
    pub fn parts(&self) -> (StatusCode, &'static str, Outcome) {
        use ProxyError::*;
        match self {
            RouteDenied(_) => (StatusCode::FORBIDDEN, "route_denied", Outcome::Denied),
            CredentialUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "credential_unavailable", Outcome::CredentialUnavailable)
            }
            UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable", Outcome::UpstreamError),
            UpstreamTls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls_error", Outcome::UpstreamError),
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", Outcome::UpstreamError),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", Outcome::Denied),
            Misdirected => (StatusCode::MISDIRECTED_REQUEST, "misdirected_request", Outcome::Denied),
            HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", Outcome::Denied),
            UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", Outcome::Denied),
            TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", Outcome::Denied),
            ProxyAuthRequired => (StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy_auth_required", Outcome::Denied),
            LoopDetected => (StatusCode::LOOP_DETECTED, "loop_detected", Outcome::Denied),
        }
    }

    /// The response for the agent; logged here, once.
    pub fn into_response(self, tool: Option<&Arc<str>>) -> Response<Body> {
        let (status, code, _) = self.parts();
        let message = self.to_string();
        match status.as_u16() {
            502..=504 => tracing::warn!(code, tool = tool.map(|t| &**t), "{message}"),
            _ => tracing::debug!(code, tool = tool.map(|t| &**t), "{message}"),
        }
        let body = serde_json::json!({"error": {"code": code, "message": message, "tool": tool.map(|t| &**t)}});
        let mut resp = Response::new(crate::body::full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CREDPROXY_ERROR.clone(), HeaderValue::from_static(code));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ProxyError::CredentialUnavailable | ProxyError::TooManyConnections => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::ProxyAuthRequired => {
                h.insert(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"credproxy\""));
            }
            // Framing we could not trust: do not read another request from this connection.
            ProxyError::BadRequest(_) | ProxyError::HeadersTooLarge | ProxyError::UriTooLong => {
                h.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
