//! Request audit events (`request.denied`, `request.forwarded`, `request.would_deny`), each
//! naming the credentials the agent itself sent by field and keyed fingerprint, never by value:
//! so a team learns how many distinct keys its agents hold and where each goes without anyone
//! reading a key.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::Method;
use serde_json::{json, Value};

use super::target::Target;
use crate::digest::Keyed;
use crate::fields;
use crate::policy::path::percent_decode;
use crate::policy::{AuditRequests, AuditSettings, Mode};
use crate::state::{Live, Shared};

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// The credential-bearing header fields of a request, held (cheap `Bytes` clones, no heap
/// allocation) from before the strip until its audit event is written.
#[derive(Default)]
pub struct AgentCreds {
    authorization: Option<HeaderValue>,
    x_api_key: Option<HeaderValue>,
    api_key: Option<HeaderValue>,
    cookie: Option<HeaderValue>,
}

impl AgentCreds {
    /// Hold the fields as the agent sent them (the first of each).
    pub fn capture(h: &HeaderMap) -> Self {
        AgentCreds {
            authorization: h.get(AUTHORIZATION).cloned(),
            x_api_key: h.get(&X_API_KEY).cloned(),
            api_key: h.get(&API_KEY).cloned(),
            cookie: h.get(COOKIE).cloned(),
        }
    }

    /// One entry per credential seen: `{"in", "name", "scheme"?, "fingerprint"}`; the query is
    /// the agent's (for `audit.credential_query_params`).
    pub fn describe(&self, query: Option<&str>, audit: &AuditSettings, keyed: &Keyed) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(v) = &self.authorization {
            // The scheme is named; the credential after it is what is fingerprinted, so the same
            // key sent as a Bearer token and as X-Api-Key has one fingerprint.
            let b = v.as_bytes();
            let (scheme, cred) = match b.iter().position(|&c| c == b' ') {
                Some(i) => (String::from_utf8_lossy(&b[..i]).into_owned(), trim(&b[i + 1..])),
                None => (String::new(), b),
            };
            let scheme = if scheme.len() <= 20 && scheme.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                scheme
            } else {
                "?".into()
            };
            out.push(json!({"in": "header", "name": "authorization", "scheme": scheme,
                "fingerprint": keyed.fingerprint(cred)}));
        }
        for (name, v) in [("x-api-key", &self.x_api_key), ("api-key", &self.api_key)] {
            if let Some(v) = v {
                out.push(json!({"in": "header", "name": name, "fingerprint": keyed.fingerprint(trim(v.as_bytes()))}));
            }
        }
        if !audit.credential_query_params.is_empty() {
            for pair in query.unwrap_or("").split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(k.replace('+', " ").as_bytes());
                if let Some(name) = audit.credential_query_params.iter().find(|n| n.as_bytes() == k) {
                    let value = percent_decode(v.replace('+', " ").as_bytes());
                    out.push(json!({"in": "query", "name": name, "fingerprint": keyed.fingerprint(&value)}));
                }
            }
        }
        if let (Some(c), false) = (&self.cookie, audit.credential_cookies.is_empty()) {
            for pair in c.as_bytes().split(|&b| b == b';') {
                let pair = trim(pair);
                let (k, v) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => continue,
                };
                if let Some(name) = audit.credential_cookies.iter().find(|n| n.as_bytes() == k) {
                    out.push(json!({"in": "cookie", "name": name, "fingerprint": keyed.fingerprint(v)}));
                }
            }
        }
        out
    }
}

/// A request audit event, with what only that kind carries.
pub(super) enum RequestEvent<'a> {
    /// `request.denied`, with its reason code: audited unless `audit.requests: none`.
    Denied(&'a str),
    /// `request.forwarded`, with the credential fingerprint: audited with `audit.requests: all`.
    Forwarded(Option<&'a str>),
    /// `request.would_deny` (report mode), with the reason (code, sentence) enforce mode would
    /// deny it for, as `explain` gives it.
    WouldDeny((&'a str, &'a str)),
}

/// What every request event says about the request.
pub(super) struct Audited<'a> {
    /// The agent's method.
    pub method: &'a Method,
    /// Where it goes.
    pub target: &'a Target,
    /// The tool that served it, or that the agent named.
    pub tool: Option<&'a str>,
    /// The index of the route that allowed it, in that tool.
    pub route: Option<usize>,
    /// The credentials the agent sent.
    pub agent: &'a AgentCreds,
}

/// Emit a request audit event if the policy's `audit.requests` level asks for it.
pub(super) fn audit_request(shared: &Shared, live: &Live, event: RequestEvent<'_>, a: Audited<'_>) {
    let (method, t) = (a.method, a.target);
    // Report mode records every request: what it would deny is the point of it.
    let level = match live.policy.mode {
        Mode::Report => AuditRequests::All,
        Mode::Enforce => live.policy.audit.requests,
    };
    let wanted = match event {
        RequestEvent::Denied(_) => level != AuditRequests::None,
        RequestEvent::Forwarded(_) | RequestEvent::WouldDeny(_) => level == AuditRequests::All,
    };
    if !wanted {
        return;
    }
    let mut f = fields! {"method" => method.as_str(), "scheme" => t.scheme.as_str(), "host" => &t.host,
    "port" => t.port, "tool" => a.tool, "route" => a.route};
    // A CONNECT has a host and port only (a tunnel's paths stay inside its TLS).
    if method != Method::CONNECT {
        f.insert("path".into(), t.path.as_str().into());
    }
    let name = match event {
        RequestEvent::Denied(reason) => {
            f.insert("reason".into(), reason.into());
            "request.denied"
        }
        RequestEvent::Forwarded(credential_id) => {
            if let Some(c) = credential_id {
                f.insert("credential_id".into(), c.into());
            }
            "request.forwarded"
        }
        RequestEvent::WouldDeny((code, message)) => {
            f.insert("reason".into(), code.into());
            f.insert("message".into(), message.into());
            "request.would_deny"
        }
    };
    let audit = &live.policy.audit;
    f.insert("agent_credentials".into(), a.agent.describe(t.query.as_deref(), audit, &live.fingerprints).into());
    shared.audit.emit(name, f);
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuditSettings {
        AuditSettings {
            file: None,
            requests: crate::policy::AuditRequests::All,
            fingerprint_key: None,
            credential_query_params: vec!["api_key".into()],
            credential_cookies: vec!["session".into()],
        }
    }

    #[test]
    fn names_each_field_with_a_fingerprint_and_never_the_value() {
        let keyed = Keyed::new(b"0123456789abcdef");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer sk-one".parse().unwrap());
        h.insert("x-api-key", "sk-one".parse().unwrap());
        h.insert(COOKIE, "theme=dark; session=sess-1".parse().unwrap());
        let got = AgentCreds::capture(&h).describe(Some("q=1&api%5Fkey=sk-two&x=y"), &settings(), &keyed);
        let text = serde_json::to_string(&got).unwrap();
        assert!(!text.contains("sk-one") && !text.contains("sk-two") && !text.contains("sess-1"), "{text}");
        let fp = |v: &str| keyed.fingerprint(v.as_bytes());
        assert_eq!(
            got,
            vec![
                json!({"in": "header", "name": "authorization", "scheme": "Bearer", "fingerprint": fp("sk-one")}),
                json!({"in": "header", "name": "x-api-key", "fingerprint": fp("sk-one")}),
                json!({"in": "query", "name": "api_key", "fingerprint": fp("sk-two")}),
                json!({"in": "cookie", "name": "session", "fingerprint": fp("sess-1")}),
            ]
        );
        assert!(AgentCreds::capture(&HeaderMap::new()).describe(Some("a=b"), &settings(), &keyed).is_empty());
    }
}
