//! Report mode's one difference: a request no route allows is forwarded anyway, untouched —
//! the agent's own credentials as it sent them, nothing injected — and audited as
//! `request.would_deny` with the reason enforce mode would give. Everything else stays:
//! proxy authentication, the removal of `Proxy-Authorization`, `Credproxy-Tool` and hop-by-hop
//! fields, and the private-address and own-listener checks on the address connected to (a
//! private address only for an exact host and port whose routes all say `allow_private`).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::hop::{to_agent, Outgoing};
use super::record::{audit_request, refusal, AgentCreds, Audited, RequestEvent};
use super::relay::ConnGuard;
use super::request::{Served, TOOL_HEADER};
use super::target::Target;
use crate::body::{Body, UpstreamBody};
use crate::metrics::Outcome;
use crate::state::{Live, Shared};

/// Forward `req`, which no route allows (`reason`), to its target without touching its
/// credentials. `tool` is the tool the agent named, if any (for metrics and the audit event).
pub(super) async fn forward(
    shared: &Shared,
    live: &Live,
    guard: &Arc<ConnGuard>,
    req: Request<Incoming>,
    target: Target,
    tool: Option<usize>,
    reason: (&'static str, &'static str),
) -> Served {
    let name = tool.map(|t| live.policy.tools[t].name.as_str());
    let agent = AgentCreds::capture(req.headers());
    let Outgoing { mut parts, body, websocket, agent_upgrade, agent_version } = Outgoing::from_agent(req);
    parts.headers.remove(&TOOL_HEADER);
    let method = parts.method.clone();
    parts.uri = match super::inject::target_uri(&target, target.query.as_deref()) {
        Ok(u) => u,
        Err(e) => return (tool, Err(e)),
    };
    let limits = &live.policy.limits;
    let private = live.policy.private_allowed(Some(target.scheme), &target.host, target.port);
    let client = live.unlisted_client(&shared.upstreams, (target.scheme, private), websocket, limits.idle_timeout);
    let req = Request::from_parts(parts, UpstreamBody::new(body, None));
    let sent = super::hop::send(client, None, req, limits.response_header_timeout).await;
    let a = || Audited { method: &method, target: &target, tool: name, route: None, agent: &agent };
    let mut resp: Response<Incoming> = match sent {
        Ok(r) => r,
        Err(err) => {
            // Refused by the address check: a denial. Any other failure is recorded as a
            // would-deny with its error: the request (its body too) may well have gone out.
            let event = match refusal(&err) {
                Some(why) => RequestEvent::Denied(why),
                None => RequestEvent::WouldDeny(reason, Some(err.parts().1)),
            };
            audit_request(shared, live, event, a());
            return (tool, Err(err));
        }
    };
    to_agent(&mut resp, agent_upgrade, agent_version, guard, limits.idle_timeout);
    audit_request(shared, live, RequestEvent::WouldDeny(reason, None), a());
    tracing::debug!(
        tool = name,
        reason = reason.0,
        status = resp.status().as_u16(),
        "report mode: forwarded a request no route allows"
    );
    (tool, Ok((resp.map(Body::Upstream), Some(Outcome::WouldDeny))))
}
