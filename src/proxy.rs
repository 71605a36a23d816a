//! The data plane: the proxy listener's accept loop, connection limits, and the request path
//! (`stack.rs` assembles it; `request.rs` and `connect.rs` are its two branches).

pub mod connect;
pub mod hop;
pub mod inject;
pub mod intercept;
mod record;
pub mod relay;
mod report;
pub mod request;
pub mod stack;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::body::Body;
use crate::error::ProxyError;
use crate::outbound::Held;
use crate::policy::Limits;
use crate::state::Shared;

/// The agent-side HTTP/1.1 server settings from the policy's limits.
pub fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .writev(false);
    b
}

/// What the proxy's accept loop hands each connection.
pub struct Accept {
    /// The live state.
    pub shared: Arc<Shared>,
    /// One permit per open connection (`max_connections`).
    pub sem: Arc<Semaphore>,
    /// Counted by every connection; shutdown waits for the count to drop.
    pub connections: relay::Tracker,
    /// Fires at the shutdown deadline: relays still open stop.
    pub stop: watch::Receiver<bool>,
}

/// Accept agents' connections until shutdown, each served by [`stack::proxy_service`].
pub async fn accept(listener: TcpListener, a: Accept, mut shutdown: watch::Receiver<bool>) {
    let Accept { shared, sem, connections, stop } = a;
    let mut max = shared.live.load().policy.limits.max_connections;
    loop {
        let (stream, peer) = tokio::select! {
            x = crate::accept::next(|| listener.accept()) => x,
            _ = shutdown.changed() => return,
        };
        let live = shared.live.load();
        let limits = live.policy.limits;
        if limits.max_connections != max {
            if limits.max_connections > max {
                sem.add_permits(limits.max_connections - max);
            } else {
                sem.forget_permits(max - limits.max_connections);
            }
            max = limits.max_connections;
        }
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            shared.metrics.connections_shed.inc();
            tokio::spawn(shed(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        // Held by the connection and by any relay it upgrades into (WebSocket, CONNECT).
        let guard = Arc::new(
            relay::ConnGuard::new(permit, shared.metrics.connections_active.clone(), connections.clone(), stop.clone())
                .draining_on(shutdown.clone()),
        );
        tokio::spawn(async move {
            // The upstream connections this agent connection opens are driven by this task.
            let held = Arc::new(Held::driven());
            let svc = stack::proxy_service(shared.clone(), peer, guard.clone(), None, Some(held.clone()));
            let conn = http1_builder(&limits).serve_connection(TokioIo::new(stream), svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = held.alongside(conn.as_mut()) => if let Err(e) = r { tracing::debug!(%peer, error = %e, "agent connection ended with an error") },
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = held.alongside(conn.as_mut()).await;
                }
            }
            drop(guard);
        });
    }
}

/// Answer a connection over the limit with 503 `too_many_connections` and close it.
async fn shed(mut stream: TcpStream) {
    // No hyper connection is served here, so the one error mapping's response is written by hand.
    let (parts, body) = ProxyError::TooManyConnections.into_response(None).into_parts();
    let body = match body {
        Body::Full(b) => b.unwrap_or_default(),
        Body::Upstream(_) => bytes::Bytes::new(),
    };
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status);
    for (k, v) in &parts.headers {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
    }
    head.push_str(&format!("connection: close\r\ncontent-length: {}\r\n\r\n", body.len()));
    let mut head = head.into_bytes();
    head.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&head).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
