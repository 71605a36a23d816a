//! Every connection credproxy opens: the guarded connector (resolve, address check, deadline),
//! rustls client configurations on the system roots plus a tool's CA file, the clients, and the
//! upstream connections agent connections own. Used by `proxy/` (agents' upstreams) and
//! `creds/` (token endpoints), below both.

mod clients;
mod guard;
mod owned;

pub use clients::{Client, ClientCert, ClientOpts, TokenClient, Upstreams};
pub use guard::{connect_guarded, interface_addresses, is_private, ConnectSettings, Deadline, Guarded};
pub use owned::Held;

use crate::error::ProxyError;

/// The error type of connectors and clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection to an upstream was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address is loopback, private or link-local and the route does not allow that.
    #[error("destination resolves only to private, loopback or link-local addresses")]
    Private,
    /// The destination is one of credproxy's own listeners.
    #[error("destination is credproxy itself")]
    Loop,
    /// Name resolution failed.
    #[error("cannot resolve host: {0}")]
    Resolve(std::io::ErrorKind),
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::ErrorKind),
    /// Resolve, connect and TLS handshake took longer than `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
}

impl From<&ConnectError> for ProxyError {
    fn from(e: &ConnectError) -> Self {
        match e {
            ConnectError::Private => {
                ProxyError::RouteDenied("the destination address is private, loopback or link-local")
            }
            ConnectError::Loop => ProxyError::LoopDetected,
            ConnectError::Timeout => ProxyError::UpstreamTimeout,
            other => ProxyError::UpstreamUnreachable(other.to_string()),
        }
    }
}

/// What an upstream client error means: a refused address, a TLS failure, a timeout, or an
/// unreachable upstream (walks the error chain, through `io::Error` wrappers).
pub fn client_error(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let fallback = if e.is_connect() { "connect failed" } else { "the upstream closed the connection" };
    classify(e, fallback)
}

/// A connector's error, read as [`client_error`] reads it.
fn connect_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    classify(e, "connect failed")
}

/// An error on an open upstream connection, read as [`client_error`] reads it.
fn send_error(e: &hyper::Error) -> ProxyError {
    classify(e, "the upstream closed the connection")
}

fn classify(e: &(dyn std::error::Error + 'static), fallback: &str) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return c.into();
        }
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return ProxyError::UpstreamTls(t.to_string());
        }
        // io::Error::source() skips the error it wraps; get_ref() is the next link.
        src = match s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    ProxyError::UpstreamUnreachable(fallback.into())
}
