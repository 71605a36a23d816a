//! `credproxy inventory`: what agents really called, and with which keys, read back from audit
//! logs — destinations, methods and path prefixes (ids folded to `*`), the tool that served them
//! or why not, the agents' own credentials by fingerprint, the use of each policy route — and
//! a policy drafted from it (`--suggest`).

pub mod read;
pub mod render;
pub mod suggest;

use std::collections::{BTreeMap, BTreeSet};

pub use read::{read_all, ReadError};

/// What a request event says happened to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `request.forwarded`: a route allowed it.
    Forwarded,
    /// `request.would_deny`: report mode let it through, though no route allows it.
    WouldDeny,
    /// `request.denied`: refused.
    Denied,
}

/// One credential an agent sent, as a request event names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentCred {
    /// `hmac:` + 12 hex.
    pub fingerprint: String,
    /// `header`, `query` or `cookie`, then the field's name, and the scheme (`Authorization`).
    pub field: String,
}

/// One request event, as read from an audit log.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// When (RFC 3339, as written).
    pub ts: String,
    /// The agent's method.
    pub method: String,
    /// Where it went.
    pub dest: Dest,
    /// The normalised path (none for a CONNECT).
    pub path: Option<String>,
    /// The tool that served it (or that the agent named).
    pub tool: Option<String>,
    /// The index of the route that allowed it.
    pub route: Option<usize>,
    /// Why it was (or would have been) denied.
    pub reason: Option<String>,
    /// The credentials the agent sent.
    pub creds: Vec<AgentCred>,
}

/// A destination: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dest {
    /// `http` or `https`.
    pub scheme: String,
    /// Normalised host.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// What happened at one destination.
#[derive(Debug, Default)]
pub struct DestStats {
    /// Requests by kind.
    pub kinds: BTreeMap<Kind, usize>,
    /// (method, folded path or `None` for CONNECT) -> (requests, outcomes: tool or `kind:reason`).
    pub paths: BTreeMap<(String, Option<String>), (usize, BTreeSet<String>)>,
    /// Distinct agent credentials (fingerprints) sent here.
    pub keys: BTreeSet<String>,
}

impl DestStats {
    /// All requests.
    pub fn requests(&self) -> usize {
        self.kinds.values().sum()
    }
}

/// A policy route and how often it allowed a request in the window.
#[derive(Debug, Clone)]
pub struct RouteUse {
    /// The tool.
    pub tool: String,
    /// The route's index in the tool.
    pub index: usize,
    /// `scheme://host:port METHODS PATHS`, as written.
    pub describe: String,
    /// The route's host, as written.
    pub host: String,
    /// The route may reach private addresses.
    pub allow_private: bool,
    /// Requests it allowed.
    pub requests: usize,
}

/// Everything read, aggregated.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Request events read.
    pub events: usize,
    /// Lines that were not JSON objects (a truncated last line, another program's output).
    pub skipped: usize,
    /// The earliest and latest event time.
    pub window: Option<(String, String)>,
    /// Per destination.
    pub destinations: BTreeMap<Dest, DestStats>,
    /// Per agent credential: requests per destination.
    pub credentials: BTreeMap<AgentCred, BTreeMap<Dest, usize>>,
    /// The policy's routes with their use, when `--config` was given.
    pub routes: Option<Vec<RouteUse>>,
    /// Whether the log holds `request.forwarded` events: without them (`audit.requests: denied`)
    /// route use is unknown, not zero.
    pub forwarded_seen: bool,
    /// The events, for `--suggest`.
    pub raw: Vec<Event>,
}

impl Inventory {
    /// Aggregate `events`; `routes` are the policy's (counted from the events' tool and route).
    pub fn build(events: Vec<Event>, skipped: usize, routes: Option<Vec<RouteUse>>) -> Self {
        let mut inv = Inventory { skipped, routes, ..Default::default() };
        for e in &events {
            inv.add(e);
        }
        inv.raw = events;
        inv
    }

    fn add(&mut self, e: &Event) {
        self.events += 1;
        self.window = Some(match self.window.take() {
            None => (e.ts.clone(), e.ts.clone()),
            Some((a, b)) => (a.min(e.ts.clone()), b.max(e.ts.clone())),
        });
        self.forwarded_seen |= e.kind == Kind::Forwarded;
        let d = self.destinations.entry(e.dest.clone()).or_default();
        *d.kinds.entry(e.kind).or_default() += 1;
        let outcome = match (e.kind, &e.tool, &e.reason) {
            (Kind::Forwarded, Some(t), _) => t.clone(),
            (Kind::Forwarded, None, _) => "forwarded".into(),
            (Kind::WouldDeny, _, r) => format!("would_deny:{}", r.as_deref().unwrap_or("?")),
            (Kind::Denied, _, r) => format!("denied:{}", r.as_deref().unwrap_or("?")),
        };
        let row = d.paths.entry((e.method.clone(), e.path.as_deref().map(fold_path))).or_default();
        row.0 += 1;
        row.1.insert(outcome);
        for c in &e.creds {
            d.keys.insert(c.fingerprint.clone());
            *self.credentials.entry(c.clone()).or_default().entry(e.dest.clone()).or_default() += 1;
        }
        if let (Kind::Forwarded, Some(t), Some(r), Some(routes)) = (e.kind, &e.tool, e.route, &mut self.routes) {
            if let Some(u) = routes.iter_mut().find(|u| &u.tool == t && u.index == r) {
                u.requests += 1;
            }
        }
    }

    /// Distinct agent keys seen (by fingerprint).
    pub fn distinct_keys(&self) -> usize {
        self.credentials.keys().map(|c| &c.fingerprint).collect::<BTreeSet<_>>().len()
    }
}

/// The routes of a policy file, read without validating it (its secret files and variables
/// need not exist where the inventory is drawn).
pub fn policy_routes(text: &str) -> Result<Vec<RouteUse>, String> {
    let raw: crate::config::RawPolicy =
        serde_yaml::from_str(text).map_err(|e| crate::config::validate::sanitize(&e.to_string()))?;
    let mut out = Vec::new();
    for (name, tool) in &raw.tools {
        for (index, r) in tool.routes.iter().enumerate() {
            let scheme = r.scheme.as_deref().unwrap_or("https");
            let port =
                r.port.map_or_else(|| if scheme == "http" { "80".into() } else { "443".into() }, |p| p.to_string());
            let methods = r.methods.as_ref().map_or("any".into(), |m| m.join(","));
            let paths = r.paths.as_ref().filter(|p| !p.is_empty()).map_or("any".into(), |p| p.join(" "));
            let describe = format!("{scheme}://{}:{port} {methods} {paths}", r.host);
            let (host, allow_private) = (r.host.clone(), r.allow_private);
            out.push(RouteUse { tool: name.clone(), index, describe, host, allow_private, requests: 0 });
        }
    }
    Ok(out)
}

/// Printable ASCII only (anything else shown as `?`): what goes into a comment or a table cell
/// can never end the line or carry a terminal escape.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(s.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect())
    }
}

/// A path with the segments that look like ids or keys folded to `*`: numbers, UUIDs, long hex,
/// long mixes of letters and (at least three) digits, anything with a `:` (a key in a path, as some webhook and
/// bot APIs take it, is folded away with the ids; shorter ones stay as sent).
pub fn fold_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if looks_like_id(seg) { "*" } else { seg });
    }
    out
}

fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    let digits = !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let uuid = b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() });
    let long_hex = b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit);
    let count = |f: fn(&u8) -> bool| b.iter().filter(|c| f(c)).count();
    let token_like = b.len() >= 20
        && count(u8::is_ascii_digit) >= 3
        && count(u8::is_ascii_alphabetic) >= 3
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.~".contains(c));
    digits || uuid || long_hex || token_like || b.contains(&b':')
}

#[cfg(test)]
mod tests {
    use super::fold_path;

    #[test]
    fn ids_fold_and_words_stay() {
        assert_eq!(fold_path("/repos/acme/web/issues/1234"), "/repos/acme/web/issues/*");
        assert_eq!(fold_path("/v1/users/3f2b8c1e-9a4d-4e5f-8a7b-0c1d2e3f4a5b/keys"), "/v1/users/*/keys");
        assert_eq!(fold_path("/blobs/9f86d081884c7d659a2feaa0c55ad015"), "/blobs/*");
        assert_eq!(fold_path("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(fold_path("/cafe/deadbeef0deadbeef/x"), "/cafe/*/x", "hex with a digit");
        assert_eq!(fold_path("/"), "/");
        assert_eq!(fold_path("/v2/abcdefabcdefabcdef"), "/v2/abcdefabcdefabcdef", "letters only: a word");
        assert_eq!(fold_path("/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage"), "/*/sendMessage");
        assert_eq!(
            fold_path("/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXX1234"),
            "/services/T00000000/B00000000/*"
        );
        assert_eq!(fold_path("/api/webhooks/123/Mk2fS0kE-9x_Q7pZ3vL8wR1t"), "/api/webhooks/*/*");
        assert_eq!(
            fold_path("/v1/chat/completions-streaming-v2"),
            "/v1/chat/completions-streaming-v2",
            "no digit run: words"
        );
    }
}

/// What `credproxy inventory` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Audit files (`-` for stdin).
    pub audit: Vec<std::path::PathBuf>,
    /// The policy the events were recorded under.
    pub config: Option<std::path::PathBuf>,
    /// One JSON document instead of tables.
    pub json: bool,
    /// The draft policy (with `json`: as the field `suggested_policy`).
    pub suggest: bool,
}

/// The command's output, or why there is none.
pub fn run(opts: &Options) -> Result<String, String> {
    let routes = match &opts.config {
        Some(p) => {
            let text = crate::config::validate::read_capped(p)?;
            Some(policy_routes(&text).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let (events, skipped) = read_all(&opts.audit).map_err(|e| e.to_string())?;
    let inv = Inventory::build(events, skipped, routes);
    Ok(match (opts.json, opts.suggest) {
        (false, false) => render::text(&inv),
        (false, true) => suggest::suggest(&inv),
        (true, s) => {
            let mut v = render::json(&inv);
            if s {
                v["suggested_policy"] = suggest::suggest(&inv).into();
            }
            format!("{v:#}\n")
        }
    })
}
