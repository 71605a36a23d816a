//! Decision tests on small policies parsed from YAML.

use std::time::SystemTime;

use super::*;

fn policy(yaml: &str) -> Policy {
    crate::config::parse(yaml, &|_| None, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"))
}

fn decide(p: &Policy, method: &str, url: &str, tool: Option<&str>) -> Decision {
    let uri: http::Uri = url.parse().unwrap();
    let scheme = if uri.scheme_str() == Some("http") { Scheme::Http } else { Scheme::Https };
    let host = normalize_host(uri.host().unwrap());
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let path = normalize(uri.path()).unwrap();
    let m = http::Method::from_bytes(method.as_bytes()).unwrap();
    p.decide(&Destination { scheme, host: &host, port, method: &m, path: &path, tool })
}

fn allowed_tool(p: &Policy, d: Decision) -> Option<&str> {
    match d.action {
        Action::Allow { tool, .. } => Some(p.tools[tool].name.as_str()),
        Action::Deny => None,
    }
}

const BASE: &str = r#"
version: 1
tools:
  github:
    credential: { source: env, var: GH }
    routes:
      - host: api.github.com
        methods: [GET]
        paths: ["/repos/acme/*/issues", "/repos/acme/*/issues/**"]
  github-admin:
    credential: { source: env, var: GH2 }
    routes:
      - host: api.github.com
        paths: ["/repos/acme/admin/**"]
  wild:
    routes: [{ host: "*.example.com" }]
  wilder:
    routes: [{ host: "*.deep.example.com" }]
  plain:
    routes: [{ host: "localhost", scheme: http, port: 8080 }]
"#;

#[test]
fn deny_by_default() {
    let p = policy(BASE);
    let d = decide(&p, "GET", "https://evil.example.org/", None);
    assert_eq!(d, Decision { action: Action::Deny, reason: Reason::NoRouteForHost });
    let d = decide(&p, "DELETE", "https://api.github.com/repos/acme/x/issues", None);
    assert_eq!(d.reason, Reason::MethodOrPathNotAllowed);
    let d = decide(&p, "GET", "https://api.github.com/user", None);
    assert_eq!(d.reason, Reason::MethodOrPathNotAllowed);
    // Scheme and port are part of the match.
    assert_eq!(decide(&p, "GET", "http://api.github.com/repos/acme/x/issues", None).reason, Reason::NoRouteForHost);
    assert_eq!(
        decide(&p, "GET", "https://api.github.com:8443/repos/acme/x/issues", None).reason,
        Reason::NoRouteForHost
    );
}

#[test]
fn most_specific_route_wins() {
    let p = policy(BASE);
    assert_eq!(
        allowed_tool(&p, decide(&p, "GET", "https://api.github.com/repos/acme/x/issues/3", None)),
        Some("github")
    );
    // Longer literal prefix beats the method list.
    assert_eq!(
        allowed_tool(&p, decide(&p, "GET", "https://api.github.com/repos/acme/admin/issues", None)),
        Some("github-admin")
    );
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://a.example.com/", None)), Some("wild"));
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://x.deep.example.com/", None)), Some("wilder"));
    // A wildcard never matches the apex.
    assert_eq!(decide(&p, "GET", "https://example.com/", None).reason, Reason::NoRouteForHost);
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "http://LOCALHOST.:8080/x", None)), Some("plain"));
}

#[test]
fn named_tool_must_own_the_route() {
    let p = policy(BASE);
    assert_eq!(
        allowed_tool(&p, decide(&p, "GET", "https://api.github.com/repos/acme/x/issues", Some("github"))),
        Some("github")
    );
    assert_eq!(
        decide(&p, "GET", "https://api.github.com/repos/acme/x/issues", Some("wild")).reason,
        Reason::NotToolsRoute
    );
    assert_eq!(decide(&p, "GET", "https://api.github.com/", Some("nope")).reason, Reason::UnknownTool);
}

#[test]
fn selected_by_header_tools() {
    let p = policy(
        r#"
version: 1
tools:
  gh-reader:
    selected_by_header: true
    credential: { source: env, var: A }
    routes: [{ host: api.github.com }]
  gh-writer:
    selected_by_header: true
    credential: { source: env, var: B }
    routes: [{ host: api.github.com }]
"#,
    );
    assert_eq!(decide(&p, "GET", "https://api.github.com/x", None).reason, Reason::ToolHeaderRequired);
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://api.github.com/x", Some("gh-writer"))), Some("gh-writer"));
}

#[test]
fn connect_decisions() {
    let p = policy(BASE);
    assert_eq!(p.decide_connect("evil.org", 443), ConnectDecision::Deny(ConnectDenial::UnknownHost));
    assert_eq!(p.decide_connect("api.github.com", 443), ConnectDecision::Deny(ConnectDenial::NeedsInterception));
    assert!(matches!(p.decide_connect("a.example.com", 443), ConnectDecision::Tunnel { allow_private: false, .. }));
    assert_eq!(p.decide_connect("a.example.com", 8443), ConnectDecision::Deny(ConnectDenial::UnknownHost));
}
