//! Request audit events (`request.denied`, `request.forwarded`, `request.would_deny`), each
//! naming the credentials the agent itself sent by field and keyed fingerprint, never by value:
//! so a team learns how many distinct keys its agents hold and where each goes without anyone
//! reading a key.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::Method;
use serde_json::{json, Value};

use super::inject::decode;
use super::target::Target;
use crate::digest::Keyed;
use crate::error::ProxyError;
use crate::fields;
use crate::policy::{AuditRequests, AuditSettings};
use crate::state::{Live, Shared};

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Most credentials one event lists; past it the event says `agent_credentials_truncated`.
pub const MAX_LISTED: usize = 16;

/// Authorization schemes named in events; any other first word (which may be a key sent
/// without a scheme) is named `other`.
const SCHEMES: [&str; 14] = [
    "Basic",
    "Bearer",
    "Digest",
    "Token",
    "Negotiate",
    "NTLM",
    "DPoP",
    "Bot",
    "ApiKey",
    "Key",
    "OAuth",
    "MAC",
    "HOBA",
    "AWS4-HMAC-SHA256",
];

/// The fields that carry an agent's credentials, in the order events list them.
const FIELDS: [(&str, &HeaderName); 4] =
    [("authorization", &AUTHORIZATION), ("x-api-key", &X_API_KEY), ("api-key", &API_KEY), ("cookie", &COOKIE)];

/// The credential-bearing header fields of a request (every copy of each), held from before the
/// strip until its audit event is written: cheap `Bytes` clones, with no heap allocation unless
/// a field comes more than once.
#[derive(Default)]
pub struct AgentCreds {
    first: [Option<HeaderValue>; 4],
    more: Vec<(usize, HeaderValue)>,
}

impl AgentCreds {
    /// Hold the fields as the agent sent them.
    pub fn capture(h: &HeaderMap) -> Self {
        let mut c = AgentCreds::default();
        for (i, (_, name)) in FIELDS.iter().enumerate() {
            let mut values = h.get_all(*name).iter();
            c.first[i] = values.next().cloned();
            c.more.extend(values.map(|v| (i, v.clone())));
        }
        c
    }

    /// One entry per distinct credential seen (`{"in", "name", "scheme"?, "fingerprint"}`), at
    /// most [`MAX_LISTED`], and whether there were more. `query` is the agent's.
    pub fn describe(&self, query: Option<&str>, audit: &AuditSettings, keyed: &Keyed) -> (Vec<Value>, bool) {
        let mut list = Listed::default();
        // Field by field, each in the order its copies came.
        let copies = |i: usize| self.first[i].iter().chain(self.more.iter().filter(move |m| m.0 == i).map(|m| &m.1));
        for (i, v) in (0..FIELDS.len()).flat_map(|i| copies(i).map(move |v| (i, v))) {
            match FIELDS[i].0 {
                "authorization" => {
                    // The scheme is named; the credential after it is what is fingerprinted, so
                    // one key sent as a Bearer token and as X-Api-Key has one fingerprint.
                    let b = v.as_bytes();
                    let (scheme, cred) = match b.iter().position(|&c| c == b' ') {
                        Some(i) => (&b[..i], trim(&b[i + 1..])),
                        None => (&b[..0], b),
                    };
                    let named = SCHEMES.iter().find(|s| s.as_bytes().eq_ignore_ascii_case(scheme));
                    let scheme = named.copied().unwrap_or(if scheme.is_empty() { "" } else { "other" });
                    list.add(json!({"in": "header", "name": "authorization", "scheme": scheme,
                        "fingerprint": keyed.fingerprint(cred)}));
                }
                "cookie" => {
                    for pair in v.as_bytes().split(|&b| b == b';') {
                        let pair = trim(pair);
                        let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
                        if let Some(name) = audit.credential_cookies.iter().find(|n| n.as_bytes() == &pair[..eq]) {
                            if list.full() {
                                list.truncated = true;
                                break;
                            }
                            list.add(json!({"in": "cookie", "name": name, "fingerprint": keyed.fingerprint(&pair[eq + 1..])}));
                        }
                    }
                }
                name => list
                    .add(json!({"in": "header", "name": name, "fingerprint": keyed.fingerprint(trim(v.as_bytes()))})),
            }
        }
        if !audit.credential_query_params.is_empty() {
            for pair in query.unwrap_or("").split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = decode(k);
                if let Some(name) = audit.credential_query_params.iter().find(|n| n.as_bytes() == &*k) {
                    if list.full() {
                        // No more work for a query stuffed with keys.
                        list.truncated = true;
                        break;
                    }
                    list.add(json!({"in": "query", "name": name, "fingerprint": keyed.fingerprint(&decode(v))}));
                }
            }
        }
        (list.out, list.truncated)
    }
}

/// The entries of one event: distinct, at most [`MAX_LISTED`].
#[derive(Default)]
struct Listed {
    out: Vec<Value>,
    truncated: bool,
}

impl Listed {
    fn full(&self) -> bool {
        self.out.len() >= MAX_LISTED
    }

    fn add(&mut self, v: Value) {
        if self.out.contains(&v) {
            return;
        }
        if self.full() {
            self.truncated = true;
        } else {
            self.out.push(v);
        }
    }
}

/// The denial reason of an upstream error that is the address check refusing the connection
/// (credproxy's own listener, or a private address the route does not allow).
pub(super) fn refusal(err: &ProxyError) -> Option<&'static str> {
    match err {
        ProxyError::LoopDetected => Some("loop_detected"),
        ProxyError::RouteDenied(_) => Some("private_address"),
        _ => None,
    }
}

/// A request audit event, with what only that kind carries.
pub(super) enum RequestEvent<'a> {
    /// `request.denied`, with its reason code: audited unless `audit.requests: none`.
    Denied(&'a str),
    /// `request.forwarded`, with the credential fingerprint: audited with `audit.requests: all`.
    Forwarded(Option<&'a str>),
    /// `request.would_deny` (report mode), with the reason (code, sentence) enforce mode would
    /// deny it for, as `explain` gives it, and the error code when the upstream then failed
    /// (the request went out all the same).
    WouldDeny((&'a str, &'a str), Option<&'a str>),
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

/// Emit an event about a request whose head still holds what the agent sent (refused before
/// anything was stripped), naming no route.
pub(super) fn audit_head(
    shared: &Shared,
    live: &Live,
    event: RequestEvent<'_>,
    req: &http::Request<hyper::body::Incoming>,
    target: &Target,
    tool: Option<&str>,
) {
    let agent = AgentCreds::capture(req.headers());
    audit_request(shared, live, event, Audited { method: req.method(), target, tool, route: None, agent: &agent });
}

/// Emit a request audit event if the policy's `audit.requests` level asks for it.
pub(super) fn audit_request(shared: &Shared, live: &Live, event: RequestEvent<'_>, a: Audited<'_>) {
    let (method, t) = (a.method, a.target);
    let level = live.policy.audited_requests();
    let wanted = match event {
        RequestEvent::Denied(_) => level != AuditRequests::None,
        RequestEvent::Forwarded(_) | RequestEvent::WouldDeny(..) => level == AuditRequests::All,
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
        RequestEvent::WouldDeny((code, message), error) => {
            f.insert("reason".into(), code.into());
            f.insert("message".into(), message.into());
            if let Some(e) = error {
                f.insert("error".into(), e.into());
            }
            "request.would_deny"
        }
    };
    let audit = &live.policy.audit;
    let (creds, truncated) = a.agent.describe(t.query.as_deref(), audit, &live.fingerprints);
    f.insert("agent_credentials".into(), creds.into());
    if truncated {
        f.insert("agent_credentials_truncated".into(), true.into());
    }
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
        let (got, truncated) = AgentCreds::capture(&h).describe(Some("q=1&api%5Fkey=sk-two&x=y"), &settings(), &keyed);
        assert!(!truncated);
        let text = serde_json::to_string(&got).unwrap();
        assert!(!text.contains("sk-one") && !text.contains("sk-two") && !text.contains("sess-1"), "{text}");
        let fp = |v: &str| keyed.fingerprint(v.as_bytes());
        assert_eq!(
            got,
            vec![
                json!({"in": "header", "name": "authorization", "scheme": "Bearer", "fingerprint": fp("sk-one")}),
                json!({"in": "header", "name": "x-api-key", "fingerprint": fp("sk-one")}),
                json!({"in": "cookie", "name": "session", "fingerprint": fp("sess-1")}),
                json!({"in": "query", "name": "api_key", "fingerprint": fp("sk-two")}),
            ]
        );
        assert!(AgentCreds::capture(&HeaderMap::new()).describe(Some("a=b"), &settings(), &keyed).0.is_empty());
    }

    #[test]
    fn every_copy_counts_repeats_fold_and_the_list_is_capped() {
        let keyed = Keyed::new(b"0123456789abcdef");
        let mut h = HeaderMap::new();
        // A decoy first, the real key second; a bare key where a scheme would be.
        h.append(AUTHORIZATION, "Bearer decoy".parse().unwrap());
        h.append(AUTHORIZATION, "Bearer real-key".parse().unwrap());
        h.append(AUTHORIZATION, "sk-short-key tail".parse().unwrap());
        h.append(COOKIE, "session=a".parse().unwrap());
        h.append(COOKIE, "session=b".parse().unwrap());
        let (got, truncated) = AgentCreds::capture(&h).describe(None, &settings(), &keyed);
        let text = serde_json::to_string(&got).unwrap();
        assert!(!truncated && !text.contains("sk-short-key"), "{text}");
        let fps: Vec<&str> = got.iter().map(|v| v["fingerprint"].as_str().unwrap()).collect();
        assert!(fps.contains(&keyed.fingerprint(b"real-key").as_str()), "{text}");
        assert_eq!(got.len(), 5, "{text}");
        assert_eq!(got[1]["scheme"], "Bearer");
        assert_eq!(got[2]["scheme"], "other", "an unknown first word is never written");
        // 1,000 query keys: 16 listed, the rest summarised; the same key twice is listed once.
        let many: String = (0..1000).map(|i| format!("api_key=k{i}&")).collect();
        let (got, truncated) = AgentCreds::capture(&HeaderMap::new()).describe(Some(&many), &settings(), &keyed);
        assert_eq!((got.len(), truncated), (MAX_LISTED, true));
        let (got, truncated) =
            AgentCreds::capture(&HeaderMap::new()).describe(Some("api_key=x&api_key=x"), &settings(), &keyed);
        assert_eq!((got.len(), truncated), (1, false));
    }
}
