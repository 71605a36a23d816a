//! `credproxy inventory --suggest`: a draft policy from what went out — one tool per destination
//! host, routes narrowed to the methods and path prefixes observed, and where the agents sent
//! keys of their own, a placeholder credential that `credproxy check` refuses until it is filled
//! in. Requests an enforced policy denied are listed, never granted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use super::{printable, Inventory, Kind};
use crate::policy::PathGlob;

/// Folded path -> the methods seen on it.
type Paths<'a> = BTreeMap<String, BTreeSet<&'a str>>;

/// What one host's tool is drafted from.
#[derive(Default)]
struct Host<'a> {
    /// (scheme, port) -> paths and their methods.
    seen: BTreeMap<(&'a str, u16), Paths<'a>>,
    /// Ports CONNECT tunnels went to (their paths unseen unless intercepted).
    tunnels: BTreeSet<u16>,
    /// Agent credential fields -> their fingerprints.
    creds: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Denied requests: (method, path as sent, reason) -> count.
    denied: BTreeMap<(&'a str, &'a str, &'a str), usize>,
    /// Paths that cannot be written literally as a glob (a `*`, a character outside printable ASCII).
    unwritable: BTreeSet<&'a str>,
}

/// The draft policy, YAML with comments.
pub fn suggest(inv: &Inventory) -> String {
    let mut hosts: BTreeMap<&str, Host<'_>> = BTreeMap::new();
    for e in &inv.raw {
        let h = hosts.entry(e.dest.host.as_str()).or_default();
        let path = e.path.as_deref();
        if e.kind == Kind::Denied {
            let key = (e.method.as_str(), path.unwrap_or("(tunnel)"), e.reason.as_deref().unwrap_or("?"));
            *h.denied.entry(key).or_default() += 1;
            continue;
        }
        match path {
            None => {
                h.tunnels.insert(e.dest.port);
            }
            Some(p) if p.contains('*') || !p.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
                h.unwritable.insert(p);
            }
            Some(p) => {
                let methods = h.seen.entry((e.dest.scheme.as_str(), e.dest.port)).or_default();
                methods.entry(super::fold_path(p)).or_default().insert(e.method.as_str());
            }
        }
        for c in &e.creds {
            h.creds.entry(c.field.as_str()).or_default().insert(c.fingerprint.as_str());
        }
    }
    let window = inv.window.as_ref().map_or("no events".into(), |(a, b)| format!("{a} to {b}"));
    let mut out = format!(
        "# Drafted by `credproxy inventory --suggest` from {} request events ({}).\n\
         # One tool per destination host; routes allow only the methods and paths observed (ids\n\
         # folded to *). Fill in every ${{CREDPROXY_FILL_IN_...}} placeholder, then run\n\
         # `credproxy check --lint --config THIS_FILE`. Requests an enforced policy denied are\n\
         # listed in comments, never granted on purpose: a WARNING marks one a folded path covers.\n\
         version: 1\ntools:\n",
        inv.events,
        printable(&window)
    );
    let mut names = BTreeSet::new();
    for (host, h) in &hosts {
        if h.seen.is_empty() && h.tunnels.is_empty() {
            let _ =
                writeln!(out, "  # {}: no tool drafted (nothing but denied or unwritable requests)", printable(host));
            notes(&mut out, h, "  ");
            continue;
        }
        let name = tool_name(host, &mut names);
        let _ = writeln!(out, "  {name}:");
        credential(&mut out, &name, h, host);
        out.push_str("    routes:\n");
        let private = private_host(host, inv);
        for ((scheme, port), paths) in &h.seen {
            // Paths with the same methods share a route.
            let mut by_methods: BTreeMap<&BTreeSet<&str>, Vec<&str>> = BTreeMap::new();
            for (path, methods) in paths {
                by_methods.entry(methods).or_default().push(path);
            }
            for (methods, paths) in by_methods {
                route(&mut out, host, scheme, *port, Some((methods, &paths)), private);
            }
        }
        for port in &h.tunnels {
            if h.seen.contains_key(&("https", *port)) {
                let _ =
                    writeln!(out, "      # CONNECT to port {port} was intercepted: its requests are the routes above");
            } else if !h.creds.is_empty() {
                let _ = writeln!(
                    out,
                    "      # CONNECT tunnels to port {port}: what went inside is unseen, so no route is drafted\n      \
                     # for a credential; record again with interception on to see the requests"
                );
            } else {
                let _ = writeln!(out, "      # CONNECT tunnels to port {port}, relayed untouched (paths unseen)");
                route(&mut out, host, "https", *port, None, private);
            }
        }
        notes(&mut out, h, "    ");
    }
    out
}

/// Denied requests (with a WARNING when a drafted route covers one) and unwritable paths.
fn notes(out: &mut String, h: &Host<'_>, indent: &str) {
    for ((method, path, reason), n) in &h.denied {
        let covered = h.seen.values().any(|paths| {
            paths
                .iter()
                .any(|(glob, methods)| methods.contains(method) && PathGlob::parse(glob).is_ok_and(|g| g.matches(path)))
        });
        let (method, path, reason) = (printable(method), printable(path), printable(reason));
        if covered {
            let _ = writeln!(
                out,
                "{indent}# WARNING: a route above also allows {method} {path}, which the recording policy denied \
                 ({reason}, {n}x): narrow it before use"
            );
        } else {
            let _ = writeln!(
                out,
                "{indent}# not granted, denied by the recording policy: {method} {path} ({reason}, {n}x)"
            );
        }
    }
    for path in &h.unwritable {
        let _ = writeln!(
            out,
            "{indent}# not drafted: {} (a path with `*` or a character outside printable ASCII cannot be written literally)",
            printable(path)
        );
    }
}

fn credential(out: &mut String, name: &str, h: &Host<'_>, host: &str) {
    if h.creds.is_empty() {
        out.push_str("    # The agents sent no credential here: requests pass through untouched.\n");
        return;
    }
    for (field, keys) in &h.creds {
        let (field, keys) = (printable(field), printable(&join(keys)).into_owned());
        let _ = writeln!(
            out,
            "    # The agents sent their own key as {field}: {} distinct ({keys}).",
            keys.split(", ").count()
        );
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
        // A scheme as the audit names it (a word of letters, digits and dashes), Bearer aside.
        (Some("header"), Some("authorization"), Some(s))
            if !s.eq_ignore_ascii_case("bearer")
                && s != "other"
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
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
        out.push_str(
            "    # The agents sent keys over cleartext http. credproxy refuses a credential there unless\n\
             \x20   # you uncomment this (better: move the upstream to https):\n\
             \x20   # allow_insecure_upstream: true\n",
        );
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

    use crate::inventory::{AgentCred, Dest, Event};

    fn ev(kind: Kind, method: &str, host: &str, port: u16, path: Option<&str>, key: bool) -> Event {
        Event {
            kind,
            ts: "2026-12-03T10:00:00.000Z".into(),
            method: method.into(),
            dest: Dest { scheme: "https".into(), host: host.into(), port },
            path: path.map(str::to_owned),
            tool: None,
            route: None,
            reason: (kind != Kind::Forwarded).then(|| "method_or_path_not_allowed".into()),
            creds: key
                .then(|| AgentCred {
                    fingerprint: "hmac:0123456789ab".into(),
                    field: "header authorization Bearer".into(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// The draft's non-comment lines.
    fn draft(events: Vec<Event>) -> (String, String) {
        let out = suggest(&Inventory::build(events, 0, None));
        let yaml = out.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        (out, yaml)
    }

    #[test]
    fn an_intercepted_connect_drafts_its_requests_never_an_open_route() {
        let (out, yaml) = draft(vec![
            ev(Kind::Forwarded, "CONNECT", "api.example", 443, None, false),
            ev(Kind::WouldDeny, "GET", "api.example", 443, Some("/v1/x"), true),
            // A tunnel to a host that gets a credential: no open route for it either.
            ev(Kind::Forwarded, "CONNECT", "api.example", 8443, None, false),
            // A plain tunnel elsewhere is drafted as one.
            ev(Kind::Forwarded, "CONNECT", "pypi.org", 443, None, false),
        ]);
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let routes = v["tools"]["api-example"]["routes"].as_sequence().unwrap();
        assert_eq!(routes.len(), 1, "{out}");
        assert_eq!(routes[0]["paths"][0], "/v1/x");
        assert_eq!(routes[0]["methods"][0], "GET");
        let pypi = v["tools"]["pypi-org"]["routes"].as_sequence().unwrap();
        assert!(pypi.len() == 1 && pypi[0].get("paths").is_none(), "{out}");
        assert!(v["tools"]["pypi-org"].get("credential").is_none());
    }

    #[test]
    fn recorded_wildcards_and_odd_characters_are_never_drafted() {
        let (out, yaml) = draft(vec![
            ev(Kind::WouldDeny, "GET", "api.example", 443, Some("/repos/**"), true),
            ev(Kind::WouldDeny, "GET", "api.example", 443, Some("/a/x*y"), true),
            ev(Kind::WouldDeny, "GET", "api.example", 443, Some("/v1/ok"), true),
            ev(Kind::Denied, "GET", "api.example", 443, Some("/b\u{2028}tools:\n  evil: {}"), true),
        ]);
        assert!(!yaml.contains('*'), "{out}");
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["tools"].as_mapping().unwrap().len(), 1, "{out}");
        assert!(out.contains("# not drafted: /repos/**"), "{out}");
        assert!(out.lines().all(|l| l.is_ascii()), "{out}");
    }

    #[test]
    fn a_denied_request_a_folded_path_covers_is_flagged() {
        let (out, _) = draft(vec![
            ev(Kind::WouldDeny, "GET", "api.example", 443, Some("/v1/items/123"), true),
            ev(Kind::Denied, "GET", "api.example", 443, Some("/v1/items/456"), true),
            ev(Kind::Denied, "DELETE", "api.example", 443, Some("/v1/items/123"), true),
        ]);
        assert!(out.contains("# WARNING: a route above also allows GET /v1/items/456"), "{out}");
        assert!(out.contains("# not granted, denied by the recording policy: DELETE /v1/items/123"), "{out}");
    }

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
