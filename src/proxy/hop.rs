//! What crosses the hop: hop-by-hop fields removed in both directions, the agent's request head
//! made ready for an upstream, and the upstream's answer made ready for the agent.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::relay::{relay, ConnGuard};
use crate::error::CREDPROXY_ERROR;

/// An agent's request on its way out: hop-by-hop fields, `Host` and any `credproxy-error`
/// removed; a WebSocket upgrade kept (and the agent's side of it held).
pub struct Outgoing {
    /// The head, still with the agent's URI and end-to-end fields.
    pub parts: Parts,
    /// The agent's body.
    pub body: Incoming,
    /// The agent asked for a WebSocket upgrade.
    pub websocket: bool,
    /// The agent's side of that upgrade.
    pub agent_upgrade: Option<OnUpgrade>,
    /// The HTTP version the agent spoke (its answer goes back in it).
    pub agent_version: Version,
}

impl Outgoing {
    /// Take the agent's request apart for forwarding.
    pub fn from_agent(mut req: Request<Incoming>) -> Outgoing {
        let websocket = is_websocket(req.headers());
        let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let agent_version = parts.version;
        let upgrade_value = parts.headers.get(UPGRADE).cloned();
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(HOST);
        parts.headers.remove(&CREDPROXY_ERROR);
        if let (true, Some(v)) = (websocket, upgrade_value) {
            parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, v);
        }
        // The upstream hop is HTTP/1.1 (or h2, negotiated by the client).
        parts.version = Version::HTTP_11;
        Outgoing { parts, body, websocket, agent_upgrade, agent_version }
    }
}

fn is_websocket(h: &HeaderMap) -> bool {
    connection_tokens(h).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && h.get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Send a request upstream and wait (at most `limit`) for the response head; a failure is the
/// error credproxy answers with. With `held`, on the upstream connection the agent connection
/// keeps (opening one if need be); without, through the client's pool (upgrades, report mode).
pub async fn send(
    client: &crate::outbound::Client,
    held: Option<&crate::outbound::Held>,
    req: Request<crate::body::UpstreamBody>,
    limit: Duration,
) -> Result<Response<Incoming>, crate::error::ProxyError> {
    let sent = async {
        match held {
            Some(held) => client.send_held(held, req).await,
            None => client.request(req).await.map_err(|e| crate::outbound::client_error(&e)),
        }
    };
    tokio::time::timeout(limit, sent).await.unwrap_or(Err(crate::error::ProxyError::UpstreamTimeout))
}

/// Make an upstream's answer the agent's: relay an accepted upgrade, else drop hop-by-hop
/// fields; never pass on a `credproxy-error` the upstream set; answer in the agent's version.
pub fn to_agent(
    resp: &mut Response<Incoming>,
    agent_upgrade: Option<OnUpgrade>,
    agent_version: Version,
    guard: &Arc<ConnGuard>,
    idle: Duration,
) {
    if let (Some(agent), StatusCode::SWITCHING_PROTOCOLS) = (agent_upgrade, resp.status()) {
        let upstream = hyper::upgrade::on(&mut *resp);
        let guard = guard.clone();
        tokio::spawn(async move {
            if let (Ok(a), Ok(u)) = (agent.await, upstream.await) {
                relay(TokioIo::new(a), TokioIo::new(u), idle, guard).await;
            }
        });
    } else {
        remove_hop_by_hop(resp.headers_mut());
    }
    resp.headers_mut().remove(&CREDPROXY_ERROR);
    // The agent speaks HTTP/1.x with us, whatever the upstream spoke (h2, or 1.0).
    *resp.version_mut() = agent_version;
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the proxy's own, removed in both directions.
/// `Trailer` is end-to-end (it announces the trailer fields; hyper sends only those announced).
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The comma-separated tokens of every `Connection` field, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Remove hop-by-hop fields, including every field named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One look at the names first: most messages carry none, and a removal hashes its name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> =
            connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
        for name in named {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields.iter().map(|&(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn hop_by_hop_fields_go_without_connection_and_the_rest_stays() {
        let mut h = map(&[("te", "trailers"), ("keep-alive", "timeout=5"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = map(&[("x-kept", "1"), ("host", "a")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn hop_by_hop_removes_connection_named_fields() {
        let mut h = map(&[
            ("connection", "close, X-Secret, Upgrade"),
            ("x-secret", "1"),
            ("upgrade", "h2c"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
