//! Inside an intercepted CONNECT: terminate the agent's TLS with the CONNECT host's leaf, then
//! serve its requests (HTTP/1.1 or h2, by ALPN) on the same request path as plain ones, pinned
//! to the CONNECT authority.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::server::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;

use super::relay::{ConnGuard, Silence};
use super::target::Pinned;
use crate::outbound::Held;
use crate::state::Shared;

/// Concurrent h2 streams one intercepted connection may open.
const MAX_STREAMS: u32 = 100;

/// Handshake with the agent and serve the tunnel's requests until it closes, idles out, or the
/// shutdown deadline passes. The connection's guard is held throughout. Boxed: the inner
/// requests take the same path as the CONNECT that opened the tunnel, so the future's type
/// would otherwise contain itself.
pub fn serve(
    shared: Arc<Shared>,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
    config: Arc<ServerConfig>,
    pinned: Arc<Pinned>,
    agent: Upgraded,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let limits = shared.live.load().policy.limits;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(TokioIo::new(agent))).await;
        let result = |r: &str| shared.metrics.tls_interceptions.with_label_values(&[r]).inc();
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                result("handshake_error");
                // Most often an agent that does not trust the pod CA: say so where an operator looks.
                // Debug, not info: the agent controls how often this happens; the metric counts it.
                tracing::debug!(%peer, host = %pinned.host, error = %e, "agent TLS handshake in an intercepted CONNECT failed (does the agent trust the pod CA?)");
                return;
            }
            Err(_) => {
                result("handshake_error");
                tracing::debug!(%peer, host = %pinned.host, "agent TLS handshake in an intercepted CONNECT timed out");
                return;
            }
        };
        result("ok");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let service = |held| super::stack::proxy_service(shared.clone(), peer, guard.clone(), Some(pinned), held);
        // Like a tunnel, an intercepted connection with no byte either way for idle_timeout closes
        // (h2 has no idle timer of its own; HTTP/1.1's is header_read_timeout, the shorter).
        let silence = Silence::new();
        let io = TokioIo::new(silence.watch(tls));
        // Served until it ends; drained gracefully when a shutdown begins, cut at its deadline.
        macro_rules! drive {
            ($conn:expr) => {{
                let conn = $conn;
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = guard.draining() => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! { r = conn.as_mut() => r, () = guard.stopped() => Ok(()) }
                    }
                    () = silence.lasting(limits.idle_timeout) => {
                        tracing::debug!(%peer, "intercepted connection closed after idle_timeout without traffic");
                        Ok(())
                    }
                    () = guard.stopped() => Ok(()),
                }
            }};
        }
        let result = if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                // One agent connection's share of the upstream: bounded, as its HTTP/1.1 is to one.
                .max_concurrent_streams(MAX_STREAMS);
            // h2 streams run side by side: they go through the pool, not one kept connection.
            drive!(b.serve_connection(io, service(None)))
        } else {
            // An HTTP/1.1 agent keeps one, driven by this task like a plain agent connection's.
            let held = Arc::new(Held::driven());
            let svc = service(Some(held.clone()));
            held.alongside(async { drive!(super::http1_builder(&limits).serve_connection(io, svc).with_upgrades()) })
                .await
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "intercepted connection ended with an error");
        }
    })
}
