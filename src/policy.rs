//! The validated policy and its one pure question: which tool and route may take this request, and why.

mod creds;
pub mod path;
mod types;
mod vault;

use std::collections::HashMap;
use std::fmt;

pub use path::{normalize, PathError, PathGlob};
pub use types::*;

/// What a request is going to: the part of it the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// `http` or `https` towards the upstream.
    pub scheme: Scheme,
    /// Lower-case host without a trailing dot (see [`normalize_host`]); IPv6 without brackets.
    pub host: &'a str,
    /// Upstream port.
    pub port: u16,
    /// Request method.
    pub method: &'a http::Method,
    /// Normalised path (see [`normalize`]), without the query.
    pub path: &'a str,
    /// A tool named by the agent (`Credproxy-Tool`) or by base-URL mode; the route must be its.
    pub tool: Option<&'a str>,
    /// The tool was named by the base-URL path (it serves when one of its own routes matches),
    /// not by the `Credproxy-Tool` header (which only breaks ties).
    pub by_path: bool,
}

/// Methods whose response may echo the request head, injected credential included.
fn echoes_request(m: &http::Method) -> bool {
    // Case-insensitive: methods are case-sensitive, but many servers upper-case them first.
    m.as_str().eq_ignore_ascii_case("TRACE") || m.as_str().eq_ignore_ascii_case("TRACK")
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward it under `tool`, matched by `route` of that tool.
    Allow { tool: usize, route: usize },
    /// Refuse it (403 `route_denied`).
    Deny,
}

/// Why the decision came out as it did; `code()` is what audit events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The most specific matching route allowed it.
    Matched,
    /// No route names this scheme, host and port.
    NoRouteForHost,
    /// Routes name the host, but none allows this method and path.
    MethodOrPathNotAllowed,
    /// The named tool does not exist.
    UnknownTool,
    /// The named tool has no route matching this request with the highest specificity.
    NotToolsRoute,
    /// Every matching route belongs to a tool that must be named with `Credproxy-Tool`.
    ToolHeaderRequired,
    /// TRACE or TRACK on a credentialed route: the answer would echo the injected credential.
    MethodEchoesCredential,
}

impl Reason {
    /// A stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Matched => "matched",
            Reason::NoRouteForHost => "no_route_for_host",
            Reason::MethodOrPathNotAllowed => "method_or_path_not_allowed",
            Reason::UnknownTool => "unknown_tool",
            Reason::NotToolsRoute => "not_tools_route",
            Reason::ToolHeaderRequired => "tool_header_required",
            Reason::MethodEchoesCredential => "method_echoes_credential",
        }
    }
}

impl Reason {
    /// A sentence for people (error bodies, `explain`).
    pub fn message(self) -> &'static str {
        match self {
            Reason::Matched => "the most specific matching route allows it",
            Reason::NoRouteForHost => "no route names this scheme, host and port (deny by default)",
            Reason::MethodOrPathNotAllowed => "routes name this host, but none allows this method and path",
            Reason::UnknownTool => "the request names a tool that the policy does not define",
            Reason::NotToolsRoute => "the named tool has no route matching this request",
            Reason::ToolHeaderRequired => "the matching tool requires the Credproxy-Tool header",
            Reason::MethodEchoesCredential => {
                "TRACE and TRACK are refused on routes that carry a credential: the answer would echo it"
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A decision: the action and the reason for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allow (with tool and route) or deny.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    fn deny(reason: Reason) -> Self {
        Decision { action: Action::Deny, reason }
    }
}

/// A CONNECT to this route's host cannot be a blind tunnel: the route needs a credential, or a
/// method or path check, which only interception can give. Whatever the route's scheme: a
/// tunnel to a credentialed `http` route's port would skip its checks just the same.
fn needs_interception(tool: &Tool, route: &Route) -> bool {
    tool.credential.is_some() || route.methods.is_some() || !route.paths.is_empty()
}

/// What to do with a `CONNECT host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Relay bytes untouched; every route for the host is unrestricted and carries no credential.
    Tunnel {
        /// The tool of the first matching route (for metrics).
        tool: usize,
        /// That route's index in the tool.
        route: usize,
        /// Whether the tunnel may reach a private or loopback address.
        allow_private: bool,
    },
    /// Terminate the agent's TLS with a leaf for the host, and decide each inner request.
    Intercept,
    /// Refuse with 403 before relaying anything.
    Deny(ConnectDenial),
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectDenial {
    /// No route names the host and port.
    UnknownHost,
    /// A route for the host needs a credential or a method/path check, which needs interception.
    NeedsInterception,
}

impl ConnectDenial {
    /// A stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            ConnectDenial::UnknownHost => "no_route_for_host",
            ConnectDenial::NeedsInterception => "connect_needs_interception",
        }
    }
}

/// Routes indexed by host, built once per policy load.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: HashMap<String, Vec<(usize, usize)>>,
    /// (suffix including the leading dot, routes), longest suffix first.
    wildcard: Vec<(String, Vec<(usize, usize)>)>,
}

impl RouteIndex {
    pub(crate) fn build(tools: &[Tool]) -> Self {
        let mut index = RouteIndex::default();
        for (t, tool) in tools.iter().enumerate() {
            for (r, route) in tool.routes.iter().enumerate() {
                match &route.host {
                    HostPattern::Exact(h) => index.exact.entry(h.clone()).or_default().push((t, r)),
                    HostPattern::Suffix(s) => match index.wildcard.iter_mut().find(|(k, _)| k == s) {
                        Some((_, v)) => v.push((t, r)),
                        None => index.wildcard.push((s.clone(), vec![(t, r)])),
                    },
                }
            }
        }
        index.wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        index
    }

    fn candidates<'a>(&'a self, host: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
        let exact = self.exact.get(host).into_iter().flatten().copied();
        let wild = self
            .wildcard
            .iter()
            .filter(move |(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .flat_map(|(_, v)| v.iter().copied());
        exact.chain(wild)
    }
}

impl Policy {
    /// The routing decision for one request. Pure: no I/O, no clock, no allocation.
    ///
    /// The most specific matching routes win. `Credproxy-Tool` only chooses among the tools
    /// whose routes match with that same, highest specificity (the tie it exists to break); a
    /// base-URL path names its tool, which serves when one of its own routes matches.
    pub fn decide(&self, dest: &Destination<'_>) -> Decision {
        let named = match dest.tool {
            Some(name) => match self.tool_index(name) {
                Some(i) => Some(i),
                None => return Decision::deny(Reason::UnknownTool),
            },
            None => None,
        };
        let base_path = named.is_some() && dest.by_path;
        // Routes with `paths` never match an encoded `%` (see `path::has_encoded_percent`).
        let encoded_percent = path::has_encoded_percent(dest.path);
        let mut host_known = false;
        // The best match overall, the named tool's best at that level, and whether a tool that
        // needs no header matched at the top.
        let mut best: Option<Specificity> = None;
        let mut chosen: Option<(Specificity, usize, usize)> = None;
        let mut open: Option<(usize, usize)> = None;
        for (t, r) in self.index.candidates(dest.host) {
            let route = &self.tools[t].routes[r];
            if route.scheme != dest.scheme || route.port != dest.port {
                continue;
            }
            host_known = true;
            if (base_path && named != Some(t)) || (encoded_percent && !route.paths.is_empty()) {
                continue;
            }
            let Some(spec) = route.specificity(dest.method, dest.path) else { continue };
            if best.is_none_or(|b| spec > b) {
                best = Some(spec);
                open = None;
            }
            if best == Some(spec) && open.is_none() && !self.tools[t].selected_by_header {
                open = Some((t, r));
            }
            if named == Some(t) && chosen.is_none_or(|(c, _, _)| spec > c) {
                chosen = Some((spec, t, r));
            }
        }
        let allow = |tool: usize, route: usize| {
            if self.tools[tool].credential.is_some() && echoes_request(dest.method) {
                return Decision::deny(Reason::MethodEchoesCredential);
            }
            Decision { action: Action::Allow { tool, route }, reason: Reason::Matched }
        };
        match (best, named) {
            (None, _) if host_known => {
                Decision::deny(if named.is_some() { Reason::NotToolsRoute } else { Reason::MethodOrPathNotAllowed })
            }
            (None, _) => Decision::deny(Reason::NoRouteForHost),
            (Some(b), Some(_)) => match chosen {
                Some((spec, t, r)) if spec == b => allow(t, r),
                _ => Decision::deny(Reason::NotToolsRoute),
            },
            (Some(_), None) => match open {
                Some((t, r)) => allow(t, r),
                None => Decision::deny(Reason::ToolHeaderRequired),
            },
        }
    }

    /// What to do with a CONNECT to `host:port`: tunnel it when every route for the host is
    /// unrestricted and carries no credential, intercept it when one needs a credential or a
    /// method/path check (and interception is on), else refuse it.
    pub fn decide_connect(&self, host: &str, port: u16) -> ConnectDecision {
        let mut first = None;
        let mut allow_private = true;
        for (t, r) in self.index.candidates(host) {
            let tool = &self.tools[t];
            let route = &tool.routes[r];
            if route.port != port {
                continue;
            }
            first.get_or_insert((t, r));
            if needs_interception(tool, route) {
                // Inside the tunnel requests are https: an http route's checks can never pass there.
                return match (&self.interception, route.scheme) {
                    (Some(_), Scheme::Https) => ConnectDecision::Intercept,
                    _ => ConnectDecision::Deny(ConnectDenial::NeedsInterception),
                };
            }
            allow_private &= route.allow_private;
        }
        match first {
            Some((tool, route)) => ConnectDecision::Tunnel { tool, route, allow_private },
            None => ConnectDecision::Deny(ConnectDenial::UnknownHost),
        }
    }

    /// Whether report mode may connect a request no route allows to a private address: only
    /// when routes name this exact host (no wildcard) and port (and scheme, if given) and every
    /// route that could match it says `allow_private`. A host no route names exactly never
    /// reaches inward, so report mode opens nothing internal that enforce mode keeps shut by name.
    pub fn private_allowed(&self, scheme: Option<Scheme>, host: &str, port: u16) -> bool {
        let mut named = false;
        for (t, r) in self.index.candidates(host) {
            let route = &self.tools[t].routes[r];
            if route.port != port || scheme.is_some_and(|s| s != route.scheme) {
                continue;
            }
            if !route.allow_private || !matches!(route.host, HostPattern::Exact(_)) {
                return false;
            }
            named = true;
        }
        named
    }

    /// The host patterns whose CONNECTs are intercepted (on some port): what the pod CA's name
    /// constraints must permit. Sorted, without duplicates.
    pub fn intercepted_hosts(&self) -> Vec<HostPattern> {
        let mut hosts: Vec<HostPattern> = (self.tools.iter())
            .flat_map(|t| {
                let intercepted = move |r: &&Route| r.scheme == Scheme::Https && needs_interception(t, r);
                t.routes.iter().filter(intercepted).map(|r| r.host.clone())
            })
            .collect();
        hosts.sort_by_key(|h| h.to_string());
        hosts.dedup();
        hosts
    }

    /// Which requests are audited: report mode records every one (what it would deny is the
    /// point of it), enforce mode what `audit.requests` says.
    pub fn audited_requests(&self) -> AuditRequests {
        match self.mode {
            Mode::Report => AuditRequests::All,
            Mode::Enforce => self.audit.requests,
        }
    }

    /// The index of the tool with this name.
    pub fn tool_index(&self, name: &str) -> Option<usize> {
        self.tools.iter().position(|t| t.name == name)
    }
}

/// Lower-case a host, drop one trailing dot and IPv6 brackets: the one form policy and upstream share.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
    h.to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
