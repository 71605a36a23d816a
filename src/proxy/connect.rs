//! CONNECT, decided on its target before any byte is relayed: intercept (a route for the host
//! needs a credential or a method/path check), tunnel byte for byte (every route for the host
//! is unrestricted and carries no credential), or refuse with 403.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::record::{audit_head, audit_request, AgentCreds, Audited, RequestEvent};
use super::relay::{relay, ConnGuard};
use super::request::Served;
use super::target::{Pinned, Target};
use crate::body::full;
use crate::error::ProxyError;
use crate::metrics::Outcome;
use crate::outbound::{connect_guarded, ConnectError};
use crate::policy::{normalize_host, ConnectDecision, ConnectDenial, Mode};
use crate::state::{Live, Shared};

/// Serve a CONNECT request.
pub async fn handle(
    shared: &Arc<Shared>,
    live: &Live,
    peer: SocketAddr,
    guard: &Arc<ConnGuard>,
    req: Request<Incoming>,
) -> Served {
    let Some(auth) = req.uri().authority().filter(|_| req.uri().scheme().is_none()) else {
        return (None, Err(ProxyError::BadRequest("CONNECT needs host:port")));
    };
    if auth.as_str().contains('@') {
        return (None, Err(ProxyError::BadRequest("userinfo in a CONNECT target is refused")));
    }
    let host = normalize_host(auth.host());
    let Some(port) = auth.port_u16() else {
        return (None, Err(ProxyError::BadRequest("CONNECT needs host:port")));
    };
    if !plausible_host(&host) {
        return (None, Err(ProxyError::BadRequest("CONNECT host is not a DNS name or an IP address")));
    }
    let policy = &live.policy;
    let target = Target::https(host, port, String::new(), None);
    match policy.decide_connect(&target.host, port) {
        ConnectDecision::Tunnel { tool, route, allow_private } => {
            live.tools[tool].metrics.routes[route].used(shared.clock.now());
            let used = Some((tool, route));
            tunnel(shared, live, guard, req, target, used, allow_private, RequestEvent::Forwarded(None)).await
        }
        ConnectDecision::Intercept => intercept(shared, live, peer, guard, req, target).await,
        ConnectDecision::Deny(why) => {
            let msg = match why {
                ConnectDenial::UnknownHost => "no route names this host and port (deny by default)",
                ConnectDenial::NeedsInterception => {
                    "this host's routes need a credential or a method/path check, which a blind tunnel cannot give"
                }
            };
            if policy.mode == Mode::Report {
                // Its paths and keys stay inside the agent's TLS: host and port are all there is to record.
                let event = RequestEvent::WouldDeny((why.code(), msg), None);
                let private = policy.private_allowed(None, &target.host, target.port);
                return tunnel(shared, live, guard, req, target, None, private, event).await;
            }
            audit_head(shared, live, RequestEvent::Denied(why.code()), &req, &target, None);
            (None, Err(ProxyError::RouteDenied(msg)))
        }
    }
}

/// Connect to the CONNECT target (through the address check), answer 200 and relay bytes.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    shared: &Arc<Shared>,
    live: &Live,
    guard: &Arc<ConnGuard>,
    req: Request<Incoming>,
    target: Target,
    used: Option<(usize, usize)>,
    allow_private: bool,
    event: RequestEvent<'_>,
) -> Served {
    let (tool, route) = (used.map(|u| u.0), used.map(|u| u.1));
    let agent = AgentCreds::capture(req.headers());
    let settings = shared.upstreams.settings();
    let connected = tokio::time::timeout(
        settings.connect_timeout,
        connect_guarded(&settings, &target.host, target.port, allow_private),
    )
    .await;
    let name = tool.map(|t| live.policy.tools[t].name.as_str());
    let upstream = match connected {
        Err(_) => return (tool, Err(ProxyError::UpstreamTimeout)),
        Ok(Err(e)) => {
            if matches!(e, ConnectError::Private) {
                let a = Audited { method: req.method(), target: &target, tool: name, route, agent: &agent };
                audit_request(shared, live, RequestEvent::Denied("private_address"), a);
            }
            return (tool, Err((&e).into()));
        }
        Ok(Ok(s)) => s,
    };
    let outcome = match event {
        RequestEvent::WouldDeny(..) => Outcome::WouldDeny,
        _ => Outcome::Passthrough,
    };
    let a = Audited { method: req.method(), target: &target, tool: name, route, agent: &agent };
    audit_request(shared, live, event, a);
    let (guard, idle) = (guard.clone(), live.policy.limits.idle_timeout);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(agent) => relay(TokioIo::new(agent), upstream, idle, guard).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    (tool, Ok((resp, Some(outcome))))
}

/// Mint (or find) the host's leaf, answer 200, and serve the tunnel's requests behind TLS.
async fn intercept(
    shared: &Arc<Shared>,
    live: &Live,
    peer: SocketAddr,
    guard: &Arc<ConnGuard>,
    req: Request<Incoming>,
    target: Target,
) -> Served {
    // Interception is on whenever the policy decides to intercept (a reload cannot turn it on).
    let Some(tls) = shared.tls.get() else {
        return (None, Err(ProxyError::RouteDenied("interception is off")));
    };
    let config = match tls.server_config(&target.host).await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.tls_interceptions.with_label_values(&["mint_error"]).inc();
            tracing::error!(host = %target.host, error = %e, "no leaf certificate for an intercepted host");
            audit_head(shared, live, RequestEvent::Denied("no_certificate"), &req, &target, None);
            return (None, Err(ProxyError::RouteDenied("no certificate can be made for this host")));
        }
    };
    audit_head(shared, live, RequestEvent::Forwarded(None), &req, &target, None);
    let pinned = Arc::new(Pinned { host: target.host, port: target.port });
    let (shared, guard) = (shared.clone(), guard.clone());
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(agent) => super::intercept::serve(shared, peer, guard, config, pinned, agent).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    (None, Ok((resp, None)))
}

/// A host a certificate may name: an IP literal, or DNS labels of letters, digits, `-` and `_`
/// (no `*`, so no wildcard leaf is ever minted for what an agent sends) whose last label is not
/// numeric (`127.1` and `0x7f.1` are addresses to a resolver, not names).
fn plausible_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x");
    labels_ok && !numeric
}

#[cfg(test)]
mod tests {
    use super::plausible_host;

    #[test]
    fn connect_hosts_are_names_or_addresses() {
        for ok in ["api.example.com", "a-b_c.example", "localhost", "10.1.2.3", "[::1]", "::1", "x1.y2"] {
            assert!(plausible_host(ok), "{ok}");
        }
        for bad in ["*.example.com", "a..b", "", "127.1", "2130706433", "0x7f.1", "a.0x7f", "é.example", "a b", "x%2e"]
        {
            assert!(!plausible_host(bad), "{bad}");
        }
        assert!(!plausible_host(&format!("{}.example", "a".repeat(64))));
    }
}
