//! One request, start to end: target -> decision -> strip -> inject -> forward -> response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderMap, HeaderValue, CONNECTION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use secrecy::ExposeSecret;

use super::hop::{to_agent, Outgoing};
use super::inject::{after_401, is_idempotent, scrub_response, strip_and_inject, upstream_uri};
use super::record::{audit_head, audit_request, refusal, AgentCreds, Audited, RequestEvent};
use super::relay::ConnGuard;
use super::target::{Pinned, Target};
use crate::body::{Body, UpstreamBody};
use crate::error::ProxyError;
use crate::metrics::Outcome;
use crate::outbound::Held;
use crate::policy::{Action, AuditRequests, Destination, Inject, Mode};
use crate::state::{Live, Shared};

/// Longest request target accepted.
const MAX_URI_BYTES: usize = 16 * 1024;

pub(super) static TOOL_HEADER: http::HeaderName = http::HeaderName::from_static("credproxy-tool");

/// The tool (for metrics), and the response with its outcome (`None`: not counted, as for the
/// CONNECT that opens an intercepted tunnel, whose inner requests are counted one by one).
pub(super) type Served = (Option<usize>, Result<(Response<Body>, Option<Outcome>), ProxyError>);

/// The agent connection a request came on.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    /// The agent's address.
    pub peer: SocketAddr,
    /// Its hold on the connection limits.
    pub guard: &'a Arc<ConnGuard>,
    /// Set inside an intercepted CONNECT: every request goes to its authority.
    pub pinned: Option<&'a Pinned>,
    /// The upstream connection it keeps between requests (none: the pool, for h2 agents).
    pub held: Option<&'a Held>,
}

/// Serve one request from an agent; never fails (errors become credproxy's own responses).
pub async fn handle(shared: Arc<Shared>, conn: Conn<'_>, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let live = shared.live.load_full();
    // After a refused CONNECT the agent may already have sent tunnel bytes (a TLS ClientHello):
    // never read them as the next request.
    let connect = req.method() == Method::CONNECT;
    let (tool, result) = serve(&shared, &live, conn, req).await;
    let rt = tool.map(|i| &live.tools[i]);
    let metrics = rt.map_or(&shared.no_tool, |t| &t.metrics);
    let elapsed = start.elapsed().as_secs_f64();
    match result {
        Ok((resp, outcome)) => {
            if let Some(outcome) = outcome {
                metrics.count(outcome, elapsed);
            }
            resp
        }
        Err(e) => {
            metrics.count(e.parts().2, elapsed);
            let mut resp = e.into_response(rt.map(|t| &t.name));
            if connect {
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

async fn serve(shared: &Arc<Shared>, live: &Live, conn: Conn<'_>, req: Request<Incoming>) -> Served {
    let Conn { peer, guard, pinned, .. } = conn;
    let policy = &live.policy;
    // Inside an intercepted tunnel the CONNECT that opened it was authenticated.
    if let (Some(secret), None) = (&policy.listen.proxy_auth, pinned) {
        if !proxy_auth_ok(req.headers(), secret.expose_secret()) {
            return (None, Err(ProxyError::ProxyAuthRequired));
        }
    }
    if req.method() == Method::CONNECT {
        if pinned.is_some() {
            return (None, Err(ProxyError::BadRequest("CONNECT inside an intercepted tunnel")));
        }
        // Boxed, as the branches below: each request's future is only as large as its common path.
        return Box::pin(super::connect::handle(shared, live, peer, guard, req)).await;
    }
    // Framing is hyper's: CL+TE is read as chunked, Content-Length dropped and the connection
    // closed after the response; conflicting Content-Lengths get hyper's own 400
    // (tests/proxy.rs, mixed_framing_*).
    let uri = req.uri();
    let uri_len =
        uri.authority().map_or(0, |a| a.as_str().len()) + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return (None, Err(ProxyError::UriTooLong));
    }
    let target = match pinned.map_or_else(|| Target::of(live, &req), |p| Target::pinned(p, &req)) {
        Ok(t) => t,
        Err(e) => {
            if let (ProxyError::Misdirected, Some(pin)) = (&e, pinned) {
                // Probing other hosts through a tunnel leaves a record, as a denial does.
                let t = Target::https(pin.host.clone(), pin.port, req.uri().path().to_string(), None);
                audit_head(shared, live, RequestEvent::Denied("misdirected"), &req, &t, None);
            }
            return (None, Err(e));
        }
    };
    let named = match req.headers().get(&TOOL_HEADER).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(n)) if req.headers().get_all(&TOOL_HEADER).iter().count() == 1 => Some(n),
        Some(_) => return (None, Err(ProxyError::BadRequest("malformed Credproxy-Tool header"))),
    };
    let tool_hint = match (target.base_tool, named) {
        (Some(b), Some(n)) if policy.tools[b].name != n => {
            if policy.mode == Mode::Report {
                let why = ("not_tools_route", "Credproxy-Tool names another tool than the base path");
                return Box::pin(super::report::forward(shared, live, guard, req, target, None, why)).await;
            }
            return deny(
                shared,
                live,
                &req,
                &target,
                None,
                "not_tools_route",
                "Credproxy-Tool names another tool than the base path",
            );
        }
        (Some(b), _) => Some(policy.tools[b].name.as_str()),
        (None, n) => n,
    };
    let dest = Destination {
        scheme: target.scheme,
        host: &target.host,
        port: target.port,
        method: req.method(),
        path: &target.path,
        tool: tool_hint,
        by_path: target.base_tool.is_some(),
    };
    let decision = policy.decide(&dest);
    let Action::Allow { tool, route } = decision.action else {
        let t = target.base_tool.or_else(|| tool_hint.and_then(|n| policy.tool_index(n)));
        if policy.mode == Mode::Report {
            let why = (decision.reason.code(), decision.reason.message());
            return Box::pin(super::report::forward(shared, live, guard, req, target, t, why)).await;
        }
        return deny(shared, live, &req, &target, t, decision.reason.code(), decision.reason.message());
    };
    // Boxed: the forwarding future is large, and hyper moves the request future into place.
    let forwarded = Box::pin(forward(shared, live, conn, req, target, tool, route)).await;
    (Some(tool), forwarded.map(|(resp, outcome)| (resp, Some(outcome))))
}

/// `Proxy-Authorization: Basic base64(any:SECRET)` or `Bearer SECRET`, compared in constant time.
fn proxy_auth_ok(h: &HeaderMap, secret: &str) -> bool {
    use base64::Engine;
    let Some(v) = h.get(http::header::PROXY_AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let (scheme, cred) = v.split_once(' ').unwrap_or((v, ""));
    let presented = if scheme.eq_ignore_ascii_case("bearer") {
        cred.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else { return false };
        match raw.iter().position(|&b| b == b':') {
            Some(i) => raw[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(&presented, secret.as_bytes()).is_ok()
}

fn deny(
    shared: &Shared,
    live: &Live,
    req: &Request<Incoming>,
    target: &Target,
    tool: Option<usize>,
    code: &'static str,
    message: &'static str,
) -> Served {
    let name = tool.map(|t| live.policy.tools[t].name.as_str());
    audit_head(shared, live, RequestEvent::Denied(code), req, target, name);
    (tool, Err(ProxyError::RouteDenied(message)))
}

async fn forward(
    shared: &Shared,
    live: &Live,
    conn: Conn<'_>,
    req: Request<Incoming>,
    target: Target,
    tool: usize,
    route: usize,
) -> Result<(Response<Body>, Outcome), ProxyError> {
    let policy = &live.policy;
    let spec = &policy.tools[tool];
    let rt = &live.tools[tool];
    // Held (without a copy) for the audit event, which names what the agent sent; nothing to
    // hold when no request event can be written.
    let agent = match policy.audited_requests() {
        AuditRequests::None => AgentCreds::default(),
        _ => AgentCreds::capture(req.headers()),
    };
    let Outgoing { mut parts, body, websocket, agent_upgrade, agent_version } = Outgoing::from_agent(req);
    let method = parts.method.clone();
    let credential = rt.slot.as_deref().map(|slot| (slot, &spec.inject));
    let max = policy.limits.max_header_bytes;
    let now = shared.clock.now();
    rt.metrics.routes[route].used(now);
    // A tool with a client certificate goes out only with one (never anonymously in between).
    if rt.client_cert.as_ref().is_some_and(|c| c.usable(now).is_none()) {
        return Err(ProxyError::CredentialUnavailable);
    }
    let token = strip_and_inject(&mut parts.headers, &rt.strip, credential, max, now)?;
    parts.uri = upstream_uri(&target, &spec.inject, token.as_deref())?;
    // A rotating token that meets a 401 is refreshed at once; a bodiless idempotent request is
    // then retried once with the new token, so keep its headers to send it again.
    let retry = (token.is_some()
        && rt.slot.as_ref().is_some_and(|s| s.control().is_some())
        && !websocket
        && http_body::Body::is_end_stream(&body)
        && is_idempotent(&method))
    .then(|| parts.headers.clone());
    let strip_trailers = rt.slot.as_ref().map(|_| rt.strip.clone());
    let upstream_req = Request::from_parts(parts, UpstreamBody::new(body, strip_trailers));
    let client = rt.client(&shared.upstreams, spec, route, websocket, policy.limits.idle_timeout);
    let limit = policy.limits.response_header_timeout;
    // An upgrade takes its connection away for good: it goes through the pool.
    let held = conn.held.filter(|_| !websocket);
    let send = |req| super::hop::send(client, held, req, limit);
    let mut result = send(upstream_req).await;
    let mut token = token;
    let unauthorized = matches!(&result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
    if let (true, Some(slot), Some(used)) = (unauthorized, &rt.slot, &token) {
        let again = after_401(slot, &shared.clock, spec, &target, &method, used, retry).await?;
        if let Some((req, new)) = again {
            // The 401 goes first: its unread body would hold the connection the retry is sent on.
            drop(result);
            result = send(req).await;
            token = Some(new);
        }
    }
    let mut resp = match result {
        Ok(r) => r,
        Err(err) => {
            if let Some(reason) = refusal(&err) {
                let a = Audited {
                    method: &method,
                    target: &target,
                    tool: Some(&spec.name),
                    route: Some(route),
                    agent: &agent,
                };
                audit_request(shared, live, RequestEvent::Denied(reason), a);
            }
            return Err(err);
        }
    };
    to_agent(&mut resp, agent_upgrade, agent_version, conn.guard, policy.limits.idle_timeout);
    if let (Inject::Query { param }, Some(t)) = (&spec.inject, &token) {
        scrub_response(resp.headers_mut(), param, t);
    }
    let credential_id = token.as_ref().map(|t| t.fingerprint.as_str());
    let a = Audited { method: &method, target: &target, tool: Some(&spec.name), route: Some(route), agent: &agent };
    audit_request(shared, live, RequestEvent::Forwarded(credential_id), a);
    tracing::trace!(peer = %conn.peer, tool = %spec.name, status = resp.status().as_u16(), "forwarded");
    let outcome = if rt.slot.is_some() { Outcome::Injected } else { Outcome::Passthrough };
    Ok((resp.map(Body::Upstream), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_auth_forms() {
        let mut h = HeaderMap::new();
        assert!(!proxy_auth_ok(&h, "s3cret"));
        h.insert(http::header::PROXY_AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(proxy_auth_ok(&h, "s3cret"));
        h.insert(http::header::PROXY_AUTHORIZATION, "Basic YWdlbnQ6czNjcmV0".parse().unwrap());
        assert!(proxy_auth_ok(&h, "s3cret"));
        h.insert(http::header::PROXY_AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!proxy_auth_ok(&h, "s3cret"));
    }
}
