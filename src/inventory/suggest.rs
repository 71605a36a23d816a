//! `credproxy inventory --suggest`: a draft policy from what went out — one tool per destination
//! host, routes narrowed to the methods and path prefixes observed, and where the agents sent
//! keys of their own, a placeholder credential that `credproxy check` refuses until it is filled
//! in. Requests an enforced policy denied are listed, never granted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use super::{Inventory, Kind};
use crate::policy::PathGlob;

/// Folded path (`None`: a CONNECT tunnel) -> the methods seen on it.
type Paths<'a> = BTreeMap<Option<String>, BTreeSet<&'a str>>;

/// What one host's tool is drafted from.
#[derive(Default)]
struct Host<'a> {
    /// (scheme, port) -> paths and their methods.
    seen: BTreeMap<(&'a str, u16), Paths<'a>>,
    /// Agent credential fields -> their fingerprints.
    creds: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Denied requests: (method, path, reason) -> count.
    denied: BTreeMap<(&'a str, String, &'a str), usize>,
}

/// The draft policy, YAML with comments.
pub fn suggest(inv: &Inventory) -> String {
    let mut hosts: BTreeMap<&str, Host<'_>> = BTreeMap::new();
    for e in &inv.raw {
        let h = hosts.entry(e.dest.host.as_str()).or_default();
        if e.kind == Kind::Denied {
            let path = e.path.as_deref().map_or("(tunnel)".into(), super::fold_path);
            *h.denied.entry((e.method.as_str(), path, e.reason.as_deref().unwrap_or("?"))).or_default() += 1;
            continue;
        }
        let path = e.path.as_deref().map(glob);
        let methods = h.seen.entry((e.dest.scheme.as_str(), e.dest.port)).or_default().entry(path).or_default();
        methods.insert(e.method.as_str());
        for c in &e.creds {
            h.creds.entry(c.field.as_str()).or_default().insert(c.fingerprint.as_str());
        }
    }
    let window = inv.window.as_ref().map_or("no events".into(), |(a, b)| format!("{a} to {b}"));
    let mut out = format!(
        "# Drafted by `credproxy inventory --suggest` from {} request events ({window}).\n\
         # One tool per destination host; routes allow only the methods and paths observed (ids\n\
         # folded to *). Fill in every ${{CREDPROXY_FILL_IN_...}} placeholder, then run\n\
         # `credproxy check --lint --config THIS_FILE`. Requests an enforced policy denied are\n\
         # listed in comments, never granted.\n\
         version: 1\ntools:\n",
        inv.events
    );
    let mut names = BTreeSet::new();
    for (host, h) in &hosts {
        if h.seen.is_empty() {
            let _ = writeln!(out, "  # {host}: only denied requests, no tool drafted");
            denied_comments(&mut out, h, "  ");
            continue;
        }
        let name = tool_name(host, &mut names);
        let _ = writeln!(out, "  {name}:");
        credential(&mut out, &name, h, host);
        out.push_str("    routes:\n");
        let private = private_host(host, inv);
        for ((scheme, port), paths) in &h.seen {
            // Paths with the same methods share a route; a CONNECT tunnel gets a route of its own.
            let mut by_methods: BTreeMap<&BTreeSet<&str>, Vec<&str>> = BTreeMap::new();
            for (path, methods) in paths {
                match path {
                    Some(p) => by_methods.entry(methods).or_default().push(p),
                    None => {
                        let _ = writeln!(out, "      # CONNECT tunnels: the paths stay inside the agent's TLS");
                        route(&mut out, host, scheme, *port, None, private);
                    }
                }
            }
            for (methods, paths) in by_methods {
                route(&mut out, host, scheme, *port, Some((methods, &paths)), private);
            }
        }
        denied_comments(&mut out, h, "    ");
    }
    out
}

fn credential(out: &mut String, name: &str, h: &Host<'_>, host: &str) {
    if h.creds.is_empty() {
        out.push_str("    # The agents sent no credential here: requests pass through untouched.\n");
        return;
    }
    for (field, keys) in &h.creds {
        let _ =
            writeln!(out, "    # The agents sent their own key as {field}: {} distinct ({}).", keys.len(), join(keys));
    }
    let var = format!("CREDPROXY_FILL_IN_{}", name.to_ascii_uppercase().replace('-', "_"));
    out.push_str(
        "    # Replace them with a credential credproxy holds, best a short-lived one it rotates:\n\
         \x20   #   credential: { source: oauth2_client_credentials, token_url: https://..., client_id: ...,\n",
    );
    let _ =
        writeln!(out, "    #                 client_secret_file: /var/run/secrets/credproxy/{name}-client-secret }}");
    out.push_str("    # or, for a static key, point the placeholder below at the file holding it.\n");
    let _ = writeln!(out, "    credential: {{ source: file, path: \"${{{var}}}\" }}");
    // Attach it where the agents put theirs (the most used field).
    let top = h.creds.iter().max_by_key(|(_, k)| k.len()).map(|(f, _)| *f).unwrap_or("");
    let mut parts = top.split(' ');
    let inject = match (parts.next(), parts.next(), parts.next()) {
        (Some("header"), Some("authorization"), Some(s)) if !s.eq_ignore_ascii_case("bearer") => {
            format!("{{ header: Authorization, value: \"{s} {{token}}\" }}")
        }
        (Some("header"), Some("x-api-key"), _) => "{ header: X-Api-Key, value: \"{token}\" }".into(),
        (Some("header"), Some("api-key"), _) => "{ header: Api-Key, value: \"{token}\" }".into(),
        (Some("query"), Some(p), _) => format!("{{ query: {{ param: {} }} }}", quote(p)),
        _ => String::new(),
    };
    if !inject.is_empty() {
        let _ = writeln!(out, "    inject: {inject}");
    }
    if top.starts_with("cookie ") {
        out.push_str("    # The agents sent a cookie: credproxy injects a header or a query parameter instead.\n");
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && h.seen.keys().any(|(s, _)| *s == "http") {
        out.push_str("    # The agents sent keys over cleartext http; move the upstream to https if it can.\n");
        out.push_str("    allow_insecure_upstream: true\n");
    }
}

fn route(
    out: &mut String,
    host: &str,
    scheme: &str,
    port: u16,
    narrow: Option<(&BTreeSet<&str>, &[&str])>,
    private: bool,
) {
    let _ = writeln!(out, "      - host: {}", quote(host));
    let default_port = if scheme == "http" { 80 } else { 443 };
    if scheme != "https" {
        let _ = writeln!(out, "        scheme: {scheme}");
    }
    if port != default_port {
        let _ = writeln!(out, "        port: {port}");
    }
    if let Some((methods, paths)) = narrow {
        let methods: Vec<String> = methods.iter().map(|m| quote(m)).collect();
        let paths: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        let _ = writeln!(out, "        methods: [{}]", methods.join(", "));
        let _ = writeln!(out, "        paths: [{}]", paths.join(", "));
    }
    if private {
        out.push_str("        allow_private: true\n");
    }
}

fn denied_comments(out: &mut String, h: &Host<'_>, indent: &str) {
    for ((method, path, reason), n) in &h.denied {
        let _ =
            writeln!(out, "{indent}# not granted, denied by the recording policy: {method} {path} ({reason}, {n}x)");
    }
}

/// A folded path as a glob that matches it: a segment the glob syntax would misread is folded.
fn glob(path: &str) -> String {
    let folded = super::fold_path(path);
    if PathGlob::parse(&folded).is_ok() {
        return folded;
    }
    let segs: Vec<&str> = folded.split('/').map(|s| if s.contains('*') { "*" } else { s }).collect();
    segs.join("/")
}

/// A private or loopback IP literal, or a host the recording policy let reach private addresses.
fn private_host(host: &str, inv: &Inventory) -> bool {
    let literal = host.parse::<IpAddr>().is_ok_and(crate::outbound::is_private);
    let routes = inv.routes.as_deref().unwrap_or_default();
    literal || routes.iter().any(|r| r.allow_private && r.host == host)
}

/// `api.github.com` -> `api-github-com`: a valid tool name, unique in the draft.
fn tool_name(host: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("host-{base}");
    }
    base.truncate(56);
    let base = base.trim_end_matches('-').to_string();
    let name = (1..).map(|i| if i == 1 { base.clone() } else { format!("{base}-{i}") }).find(|n| !taken.contains(n));
    let name = name.expect("some suffix is free");
    taken.insert(name.clone());
    name
}

/// A YAML double-quoted scalar (JSON's string syntax is one).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_valid_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(tool_name("api.github.com", &mut taken), "api-github-com");
        assert_eq!(tool_name("API.GitHub.com.", &mut taken), "api-github-com-2");
        assert_eq!(tool_name("127.0.0.1", &mut taken), "host-127-0-0-1");
        assert_eq!(tool_name("::1", &mut taken), "host-1");
        let long = tool_name(&"a".repeat(80), &mut taken);
        assert!(long.len() <= 63, "{long}");
    }
}
