//! Upstream connections owned by one agent connection: taken (or opened through the client's
//! guarded connector) on its first request, kept for its next requests to the same client (tool
//! and TLS settings) and authority, used by no other agent connection meanwhile, and parked
//! with the client when the agent connection ends, for the next agent connection to take (until
//! the idle timeout). Per request: no pool checkout, no lock shared across connections, no
//! connector or executor clone. Only an unsent request is retried (on a fresh connection, when a
//! kept one turns out to be closed).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};

use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use super::clients::{Client, ClientInner};
use crate::body::UpstreamBody;
use crate::error::ProxyError;

/// The upstream connection one agent connection keeps between its requests (at most one);
/// parked with its client when the agent connection ends. The agent connection's own task
/// drives the connection it opens, so it must run in [`Held::alongside`].
pub struct Held(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    owned: Option<Owned>,
    driver: Driver,
}

/// An upstream connection's I/O, polled by the agent connection's task ([`Held::alongside`])
/// rather than by a task of its own: no wakeup and task switch between the two hops.
#[derive(Default)]
struct Driver {
    conn: Option<ConnFuture>,
    waker: Option<Waker>,
}

type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Slot {
    /// The connection this agent connection's task was driving goes to a task of its own.
    fn let_go(&mut self) {
        if let Some(conn) = self.driver.conn.take() {
            spawn(conn);
        }
    }
}

/// Drive a connection in a task of its own, for as long as it stays open (dropped, and so
/// closed, when no runtime is left to run it).
fn spawn(conn: ConnFuture) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(conn);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let slot = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        slot.let_go();
        if let Some(owned) = slot.owned.take() {
            park(owned);
        }
    }
}

/// Connections parked with one client, oldest first, and whether a sweeper is closing them as
/// they reach the idle timeout.
#[derive(Default)]
pub(super) struct Parked {
    conns: VecDeque<ParkedConn>,
    sweeping: bool,
}

struct ParkedConn {
    dest: Dest,
    sender: Sender,
    since: tokio::time::Instant,
}

/// Where a connection goes: only a request to the same scheme and authority may use it.
#[derive(PartialEq)]
struct Dest {
    https: bool,
    authority: Authority,
}

/// Most connections parked per client; the oldest goes first.
const MAX_PARKED: usize = 64;

/// A kept connection and what it may be used for.
struct Owned {
    /// Its client: the tool and TLS settings it was opened with (held, so never confused with
    /// a later client at the same address).
    client: Arc<ClientInner>,
    dest: Dest,
    sender: Sender,
}

enum Sender {
    /// With the `Host` value every request on it carries (its authority is fixed).
    H1(http1::SendRequest<UpstreamBody>, HeaderValue),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Held {
    /// A slot whose connections the agent connection's task drives: it must run its own
    /// connection in [`Held::alongside`].
    pub fn driven() -> Held {
        Held(Mutex::new(Slot::default()))
    }

    /// Run `agent` (the agent connection, or its graceful end) while driving the upstream
    /// connection it opens: the upstream first, so a response it reads is there for the agent's
    /// side in the same poll.
    pub async fn alongside<F: Future>(&self, agent: F) -> F::Output {
        tokio::select! {
            biased;
            never = self.drive() => match never {},
            out = agent => out,
        }
    }

    /// Locked only by the agent connection's own task (its requests take and keep the
    /// connection between the polls of [`Held::drive`]): never contended.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Poll the upstream connection this agent connection opened; never completes.
    fn drive(&self) -> impl Future<Output = std::convert::Infallible> + '_ {
        std::future::poll_fn(move |cx| {
            let mut slot = self.slot();
            let d = &mut slot.driver;
            if !d.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                d.waker = Some(cx.waker().clone());
            }
            if d.conn.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
                d.conn = None;
            }
            Poll::Pending
        })
    }

    /// Have a new connection's I/O driven by this agent connection's task (any connection it
    /// drove before goes to a task of its own).
    fn run(&self, conn: ConnFuture) {
        let mut slot = self.slot();
        slot.let_go();
        let d = &mut slot.driver;
        d.conn = Some(conn);
        if let Some(w) = &d.waker {
            w.wake_by_ref();
        }
    }

    /// The kept connection if it was opened by `client` to `dest`; any other is parked with
    /// its own client (an agent connection keeps the one it used last), and from then on driven
    /// by a task of its own.
    fn take(&self, client: &Client, dest: &Dest) -> Option<Sender> {
        let mut slot = self.slot();
        let owned = slot.owned.take()?;
        if Arc::ptr_eq(&owned.client, &client.0) && owned.dest == *dest {
            return Some(owned.sender);
        }
        slot.let_go();
        park(owned);
        None
    }

    fn keep(&self, owned: Owned) {
        self.slot().owned = Some(owned);
    }
}

impl Client {
    /// Send `req` (absolute URI, no `Host`) on the connection `held` keeps for this agent
    /// connection, opening one when it keeps none for this client and authority. A request a
    /// kept connection closed before taking is sent once more on a new connection; nothing
    /// that may have reached the upstream is ever sent twice.
    pub async fn send_held(
        &self,
        held: &Held,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let uri = req.uri().clone();
        let Some(authority) = uri.authority().cloned() else {
            return Err(ProxyError::BadRequest("no authority in the upstream URI"));
        };
        let dest = Dest { https: uri.scheme() == Some(&http::uri::Scheme::HTTPS), authority };
        let mut reused = held.take(self, &dest).or_else(|| self.unpark(&dest));
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                // Boxed: opening is rare and its future large; the request path's stays small.
                None => Box::pin(self.open(&uri, held)).await?,
            };
            // A kept connection that closed meanwhile has taken nothing: open another.
            if let Err(e) = sender.ready().await {
                if was_reused {
                    continue;
                }
                return Err(super::send_error(&e));
            }
            sender.prepare(&mut req, &uri);
            match sender.try_send(req).await {
                Ok(resp) => {
                    held.keep(Owned { client: self.0.clone(), dest, sender });
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not written to the connection: safe to send on a new one.
                    Some(back) if was_reused => {
                        req = back;
                        *req.uri_mut() = uri.clone();
                        // The next connection may speak h2, which takes the authority from the URI.
                        req.headers_mut().remove(HOST);
                    }
                    _ => return Err(super::send_error(e.error())),
                },
            }
        }
    }

    /// A new connection through the guarded connector (address check, deadline, TLS with ALPN),
    /// driven by the agent connection's task until that lets it go (then by a task of its own).
    async fn open(&self, uri: &Uri, held: &Held) -> Result<Sender, ProxyError> {
        let io = self.0.connector.clone().oneshot(uri.clone()).await.map_err(|e| super::connect_error(&*e))?;
        let h2 = io.connected().is_negotiated_h2();
        let sender = if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| super::send_error(&e))?;
            held.run(logged(conn));
            Sender::H2(sender)
        } else {
            let (sender, conn) =
                http1::Builder::new().writev(false).handshake(io).await.map_err(|e| super::send_error(&e))?;
            held.run(logged(conn));
            Sender::H1(sender, host_value(uri))
        };
        Ok(sender)
    }

    /// The most recently parked connection to `dest`.
    fn unpark(&self, dest: &Dest) -> Option<Sender> {
        let mut parked = self.0.parked.lock().unwrap_or_else(|e| e.into_inner());
        let i = parked.conns.iter().rposition(|p| p.dest == *dest)?;
        parked.conns.remove(i).map(|p| p.sender)
    }
}

/// A connection's I/O, its end logged.
fn logged(conn: impl Future<Output = hyper::Result<()>> + Send + 'static) -> ConnFuture {
    Box::pin(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    })
}

/// Park a connection its agent connection no longer needs (if it is open, and a runtime is
/// there to close it at the idle timeout).
fn park(owned: Owned) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    if owned.sender.is_closed() || owned.client.idle.is_zero() {
        return;
    }
    let Owned { client, dest, sender } = owned;
    let mut parked = client.parked.lock().unwrap_or_else(|e| e.into_inner());
    if parked.conns.len() == MAX_PARKED {
        parked.conns.pop_front();
    }
    parked.conns.push_back(ParkedConn { dest, sender, since: tokio::time::Instant::now() });
    if !parked.sweeping {
        parked.sweeping = true;
        runtime.spawn(sweep(Arc::downgrade(&client)));
    }
}

/// Close parked connections as they reach the idle timeout; ends when none is left (so an idle
/// proxy has no timer armed).
async fn sweep(client: Weak<ClientInner>) {
    loop {
        let Some(c) = client.upgrade() else { return };
        let next = {
            let mut parked = c.parked.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            parked.conns.retain(|p| now.duration_since(p.since) < c.idle && !p.sender.is_closed());
            match parked.conns.front() {
                Some(p) => p.since + c.idle,
                None => {
                    parked.sweeping = false;
                    return;
                }
            }
        };
        drop(c);
        tokio::time::sleep_until(next).await;
    }
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s, _) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s, _) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// HTTP/1.1 wants a `Host` and an origin-form target; h2 takes the absolute URI as is.
    fn prepare(&self, req: &mut Request<UpstreamBody>, uri: &Uri) {
        if let Sender::H1(_, host) = self {
            req.headers_mut().entry(HOST).or_insert_with(|| host.clone());
            // Never a CONNECT: the proxy answers those itself.
            *req.uri_mut() = origin_form(uri);
        }
    }

    async fn try_send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::H1(s, _) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// `host[:port]`, the port left out when it is the scheme's default (never any user-info).
fn host_value(uri: &Uri) -> HeaderValue {
    let host = uri.host().unwrap_or_default();
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
    let value = match uri.port_u16() {
        Some(p) if p != default_port => HeaderValue::try_from(format!("{host}:{p}")),
        _ => HeaderValue::from_str(host),
    };
    // A URI's host is always a valid field value.
    value.unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_field_drops_default_ports_only() {
        let v = |u: &str| host_value(&u.parse().unwrap());
        assert_eq!(v("https://api.example.com/x"), "api.example.com");
        assert_eq!(v("https://api.example.com:443/x"), "api.example.com");
        assert_eq!(v("http://api.example.com:80/x"), "api.example.com");
        assert_eq!(v("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        assert_eq!(v("https://[::1]:8443/x"), "[::1]:8443");
        assert_eq!(v("http://api.example.com:443/x"), "api.example.com:443");
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        assert_eq!(origin_form(&"http://h:1/a/b?c=d".parse().unwrap()), "/a/b?c=d");
        assert_eq!(origin_form(&"http://h:1".parse().unwrap()), "/");
    }
}
