//! `credproxy check --lint`: the policy shapes that grant more than a tool needs, each named by
//! its path and line with the narrowing it suggests. Advice only: a linted policy is valid.

use std::fmt;
use std::time::Duration;

use crate::policy::{CredentialSpec, HostPattern, Policy, Route, Tool};

use super::validate::line_of;

/// Longest token lifetime written in a policy without a warning.
pub const MAX_QUIET_TTL: Duration = Duration::from_secs(3600);

/// One broad grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where in the document: `tools.github.routes[0]`.
    pub path: String,
    /// 1-based line, when found.
    pub line: Option<usize>,
    /// A stable snake_case kind (`credential_any_method`, …).
    pub kind: &'static str,
    /// What is broad and how to narrow it; never a value from the file beyond names and patterns.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (line {l}): {} [{}]", self.path, self.message, self.kind),
            None => write!(f, "{}: {} [{}]", self.path, self.message, self.kind),
        }
    }
}

/// Every broad grant in `policy`, validated from `text`, in document order of tools.
pub fn lint(text: &str, policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |path: String, kind: &'static str, message: String| {
        let line = line_of(text, &path);
        out.push(Warning { path, line, kind, message });
    };
    // The written lifetimes (a default is not a choice the file made).
    let raw: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
    for tool in &policy.tools {
        let t = &tool.name;
        if let Some(c @ (CredentialSpec::File { .. } | CredentialSpec::Env { .. })) = &tool.credential {
            warn(
                format!("tools.{t}.credential.source"),
                "static_credential",
                format!(
                    "`{}` is a static key, never rotated by credproxy; prefer a short-lived source \
                     (oauth2_client_credentials, oauth2_token_exchange, jwt, vault, exec)",
                    c.source()
                ),
            );
        }
        for block in ["credential", "client_certificate"] {
            for field in ["ttl", "default_ttl", "max_ttl"] {
                // Written in the file (a default is not a choice the file made); the value is the
                // validated one, so `${TTL}` counts as what it expanded to.
                if raw["tools"][t.as_str()][block].get(field).is_none() {
                    continue;
                }
                let Some(d) = lifetime(tool, block, field) else { continue };
                if d > MAX_QUIET_TTL {
                    warn(
                        format!("tools.{t}.{block}.{field}"),
                        "long_lifetime",
                        format!(
                            "a token lifetime of {} is above 1h; shorten it step by step, watching \
                             credproxy_credential_lifetime_seconds",
                            humantime::format_duration(d)
                        ),
                    );
                }
            }
        }
        for (i, r) in tool.routes.iter().enumerate() {
            route(tool, i, r, &mut warn);
        }
    }
    overlaps(&policy.tools, &mut warn);
    out
}

/// The validated value of a lifetime field.
fn lifetime(tool: &Tool, block: &str, field: &str) -> Option<Duration> {
    match (block, field) {
        ("client_certificate", "ttl") => tool.client_cert.as_ref().map(|c| c.ttl),
        ("credential", "ttl") => match &tool.credential {
            Some(CredentialSpec::Jwt(j)) => Some(j.ttl),
            _ => None,
        },
        ("credential", "default_ttl") => tool.credential.as_ref()?.lifetime().map(|l| l.default_ttl),
        ("credential", "max_ttl") => tool.credential.as_ref()?.lifetime().map(|l| l.max_ttl),
        _ => None,
    }
}

fn route(tool: &Tool, i: usize, r: &Route, warn: &mut impl FnMut(String, &'static str, String)) {
    let p = format!("tools.{}.routes[{i}]", tool.name);
    let wildcard = matches!(r.host, HostPattern::Suffix(_));
    if r.allow_private && wildcard {
        warn(
            format!("{p}.allow_private"),
            "allow_private_wildcard",
            format!(
                "allow_private on {} lets any name under it reach private addresses; name the \
                 internal hosts exactly",
                r.host
            ),
        );
    }
    if tool.credential.is_none() {
        return;
    }
    if wildcard {
        warn(
            format!("{p}.host"),
            "credential_wildcard_host",
            format!("the credential goes to every host under {}; name the hosts the tool calls", r.host),
        );
    }
    if r.methods.is_none() {
        warn(
            p.clone(),
            "credential_any_method",
            "the credential goes with every method; list the ones the tool uses (methods: [GET])".into(),
        );
    }
    let root = |g: &crate::policy::PathGlob| g.as_str() == "/**";
    match r.paths.iter().position(root) {
        Some(j) => warn(
            format!("{p}.paths[{j}]"),
            "credential_all_paths",
            "`/**` sends the credential to every path of the host; narrow it to the prefixes the tool \
             uses (paths: [\"/v1/things/**\"])"
                .into(),
        ),
        None if r.paths.is_empty() => warn(
            p,
            "credential_all_paths",
            "no paths: the credential goes to every path of the host; list the prefixes the tool uses \
             (paths: [\"/v1/things/**\"])"
                .into(),
        ),
        None => {}
    }
}

/// Tools whose routes can match the same request: the more specific one serves it, so the other
/// holds a grant it does not use there (tools that both need `Credproxy-Tool` share by design).
fn overlaps(tools: &[Tool], warn: &mut impl FnMut(String, &'static str, String)) {
    for ((ta, i, ra), (tb, j, rb)) in crate::policy::cross_tool_route_pairs(tools) {
        if routes_overlap(ra, rb) {
            warn(
                format!("tools.{}.routes[{j}]", tb.name),
                "overlapping_tools",
                format!(
                    "can match the same requests as tools.{}.routes[{i}]; split the hosts, methods or paths \
                     so each request has one tool",
                    ta.name
                ),
            );
        }
    }
}

fn hosts_overlap(a: &HostPattern, b: &HostPattern) -> bool {
    match (a, b) {
        (HostPattern::Exact(x), HostPattern::Exact(y)) => x == y,
        (HostPattern::Exact(h), s @ HostPattern::Suffix(_)) | (s @ HostPattern::Suffix(_), HostPattern::Exact(h)) => {
            s.matches(h)
        }
        (HostPattern::Suffix(x), HostPattern::Suffix(y)) => x.ends_with(y.as_str()) || y.ends_with(x.as_str()),
    }
}

fn routes_overlap(a: &Route, b: &Route) -> bool {
    let methods = match (&a.methods, &b.methods) {
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        _ => true,
    };
    let paths =
        a.paths.is_empty() || b.paths.is_empty() || a.paths.iter().any(|ga| b.paths.iter().any(|gb| ga.overlaps(gb)));
    a.scheme == b.scheme && a.port == b.port && hosts_overlap(&a.host, &b.host) && methods && paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, &'static str)> {
        let p = crate::config::parse(text, &|_| Some("x".into()), std::time::SystemTime::now()).unwrap();
        lint(text, &p).into_iter().map(|w| (w.path, w.kind)).collect()
    }

    #[test]
    fn a_narrow_rotating_policy_is_quiet() {
        let text = "version: 1\ntools:\n  a:\n    credential: { source: exec, command: [/bin/echo], max_ttl: 30m }\n    routes: [{ host: a.example, methods: [GET], paths: [\"/v1/**\"] }]\n  b:\n    routes: [{ host: a.example, methods: [POST], paths: [\"/v1/**\"] }]\n";
        assert_eq!(kinds(text), vec![]);
    }

    #[test]
    fn a_lifetime_written_as_a_variable_is_judged_by_its_value_and_a_default_never() {
        let text = "version: 1\ntools:\n  a:\n    credential: { source: exec, command: [/bin/echo], max_ttl: \"${TTL}\" }\n    routes: [{ host: a.example, methods: [GET], paths: [\"/v1/**\"] }]\n  b:\n    credential: { source: exec, command: [/bin/echo] }\n    routes: [{ host: b.example, methods: [GET], paths: [\"/v1/**\"] }]\n";
        let p = crate::config::parse(text, &|_| Some("2h".into()), std::time::SystemTime::now()).unwrap();
        let got: Vec<(String, &str)> = lint(text, &p).into_iter().map(|w| (w.path, w.kind)).collect();
        // b's max_ttl defaults to 24h: not a choice its author wrote down.
        assert_eq!(got, vec![("tools.a.credential.max_ttl".to_string(), "long_lifetime")]);
    }

    #[test]
    fn overlap_needs_host_method_and_path_in_common() {
        let text = "version: 1\ntools:\n  a:\n    routes: [{ host: \"*.example\", methods: [GET] }]\n  b:\n    routes: [{ host: api.example, paths: [\"/x/*\"] }]\n  c:\n    routes: [{ host: api.example, methods: [POST], paths: [\"/y\"] }]\n";
        assert_eq!(
            kinds(text),
            vec![("tools.b.routes[0]".to_string(), "overlapping_tools")],
            "a∩b on GET /x/*; c shares the host with both but neither method nor path with b, method with nobody"
        );
    }
}
