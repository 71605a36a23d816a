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
    p.decide(&Destination { scheme, host: &host, port, method: &m, path: &path, tool, by_path: false })
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

#[test]
fn connect_is_intercepted_only_with_interception_on_and_never_tunnelled_past_a_check() {
    let tools = r#"
tools:
  gh:
    credential: { source: env, var: HOME }
    allow_insecure_upstream: true
    routes: [{ host: api.github.com }, { scheme: http, host: plain.example, port: 8080 }]
  ro:
    routes: [{ host: "*.models.test", methods: [GET] }]
  open:
    routes: [{ host: pypi.org }, { host: 10.0.0.7, allow_private: true }]
"#;
    let off = policy(&format!("version: 1{tools}"));
    assert_eq!(off.decide_connect("api.github.com", 443), ConnectDecision::Deny(ConnectDenial::NeedsInterception));
    // A credentialed http route's port is no tunnel either: it would skip the credential's checks.
    assert_eq!(off.decide_connect("plain.example", 8080), ConnectDecision::Deny(ConnectDenial::NeedsInterception));
    let on =
        policy(&format!("version: 1\ninterception: {{ ca_cert_out: /tmp/a.crt, ca_bundle_out: /tmp/b.crt }}{tools}"));
    assert_eq!(on.decide_connect("api.github.com", 443), ConnectDecision::Intercept);
    assert_eq!(on.decide_connect("eu.models.test", 443), ConnectDecision::Intercept);
    assert!(matches!(on.decide_connect("pypi.org", 443), ConnectDecision::Tunnel { .. }));
    assert_eq!(on.decide_connect("evil.org", 443), ConnectDecision::Deny(ConnectDenial::UnknownHost));
    // Requests inside a tunnel are https: an http route's checks could never pass there.
    assert_eq!(on.decide_connect("plain.example", 8080), ConnectDecision::Deny(ConnectDenial::NeedsInterception));
    let hosts: Vec<String> = on.intercepted_hosts().iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["*.models.test", "api.github.com"]);
}

/// The review's case: a credentialed wildcard tool must not be named onto a more specific host.
const CORP: &str = r#"
version: 1
tools:
  corp:
    credential: { source: env, var: CORP }
    routes: [{ host: "*.corp.example" }]
  vendor:
    routes: [{ host: vendor.corp.example }]
  helper-a:
    selected_by_header: true
    credential: { source: env, var: A }
    routes: [{ host: tools.corp.example, paths: ["/v1/**"] }]
  helper-b:
    selected_by_header: true
    credential: { source: env, var: B }
    routes: [{ host: tools.corp.example, paths: ["/v1/**"] }]
"#;

#[test]
fn tool_header_never_overrides_specificity() {
    let p = policy(CORP);
    let url = "https://vendor.corp.example/data";
    assert_eq!(allowed_tool(&p, decide(&p, "GET", url, None)), Some("vendor"));
    // Naming the broader, credentialed tool is refused rather than sending its token to vendor.
    let d = decide(&p, "GET", url, Some("corp"));
    assert_eq!(d, Decision { action: Action::Deny, reason: Reason::NotToolsRoute });
    assert_eq!(d.reason.code(), "not_tools_route");
    // Naming the tool that wins anyway is fine.
    assert_eq!(allowed_tool(&p, decide(&p, "GET", url, Some("vendor"))), Some("vendor"));
    // Elsewhere under the wildcard, corp is the most specific and serves, named or not.
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://git.corp.example/", Some("corp"))), Some("corp"));
}

#[test]
fn header_tools_at_the_top_need_the_header_and_never_fall_back() {
    let p = policy(CORP);
    let url = "https://tools.corp.example/v1/run";
    // The most specific routes belong only to selected_by_header tools: corp's broader wildcard
    // route is never used instead.
    let d = decide(&p, "GET", url, None);
    assert_eq!(d, Decision { action: Action::Deny, reason: Reason::ToolHeaderRequired });
    assert_eq!(allowed_tool(&p, decide(&p, "GET", url, Some("helper-b"))), Some("helper-b"));
    assert_eq!(allowed_tool(&p, decide(&p, "GET", url, Some("helper-a"))), Some("helper-a"));
    assert_eq!(decide(&p, "GET", url, Some("corp")).reason, Reason::NotToolsRoute);
    // Outside /v1 the helpers do not match; corp is the most specific there.
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://tools.corp.example/v2", None)), Some("corp"));
}

#[test]
fn base_url_path_names_its_tool_whatever_is_more_specific() {
    let p = policy(CORP);
    let m = http::Method::GET;
    let dest = |tool| Destination {
        scheme: Scheme::Https,
        host: "vendor.corp.example",
        port: 443,
        method: &m,
        path: "/data",
        tool,
        by_path: true,
    };
    // In base-URL mode the path names the tool, which serves when one of its routes matches.
    let d = p.decide(&dest(Some("corp")));
    assert_eq!(allowed_tool(&p, d), Some("corp"));
    let d = p.decide(&dest(Some("helper-a")));
    assert_eq!(d.reason, Reason::NotToolsRoute);
}

#[test]
fn trace_and_track_are_refused_where_a_credential_is_injected() {
    let p = policy(CORP);
    for m in ["TRACE", "TRACK", "track", "trace", "Trace"] {
        let d = decide(&p, m, "https://git.corp.example/", None);
        assert_eq!(d, Decision { action: Action::Deny, reason: Reason::MethodEchoesCredential }, "{m}");
        assert_eq!(d.reason.code(), "method_echoes_credential");
    }
    // Even when the route lists TRACE explicitly.
    let p2 = policy(
        "version: 1\ntools:\n  t:\n    credential: { source: env, var: T }\n    routes: [{ host: a.example, methods: [GET, TRACE] }]\n",
    );
    assert_eq!(decide(&p2, "TRACE", "https://a.example/", None).reason, Reason::MethodEchoesCredential);
    assert_eq!(allowed_tool(&p2, decide(&p2, "GET", "https://a.example/", None)), Some("t"));
    // A passthrough tool carries no credential to echo.
    assert_eq!(allowed_tool(&p, decide(&p, "TRACE", "https://vendor.corp.example/", None)), Some("vendor"));
}

#[test]
fn double_encoded_dots_never_match_a_path_glob() {
    let p = policy(
        "version: 1\ntools:\n  t:\n    credential: { source: env, var: T }\n    routes: [{ host: a.example, paths: [\"/v1/public/**\"] }]\n  open:\n    routes: [{ host: b.example }]\n",
    );
    let d = decide(&p, "GET", "https://a.example/v1/public/%252e%252e/admin", None);
    assert_eq!(d.reason, Reason::MethodOrPathNotAllowed);
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://a.example/v1/public/x", None)), Some("t"));
    // A route without paths forwards the bytes as they are.
    assert_eq!(allowed_tool(&p, decide(&p, "GET", "https://b.example/x/%252e%252e/y", None)), Some("open"));
}

#[test]
fn report_mode_reaches_private_addresses_only_at_exact_hosts_whose_routes_all_allow_it() {
    let p = policy(
        "version: 1\ntools:\n  a:\n    routes:\n      - { scheme: http, host: db.internal, port: 80, allow_private: true, paths: [\"/x\"] }\n      - { scheme: http, host: \"*.svc.cluster.local\", port: 80, allow_private: true }\n      - { scheme: http, host: mixed.internal, port: 80, allow_private: true }\n  b:\n    routes: [{ scheme: http, host: mixed.internal, port: 80, paths: [\"/y\"] }]\n",
    );
    assert!(p.private_allowed(Some(Scheme::Http), "db.internal", 80));
    assert!(p.private_allowed(None, "db.internal", 80));
    assert!(!p.private_allowed(Some(Scheme::Https), "db.internal", 80), "scheme");
    assert!(!p.private_allowed(Some(Scheme::Http), "db.internal", 8080), "port");
    assert!(!p.private_allowed(Some(Scheme::Http), "api.svc.cluster.local", 80), "a wildcard names no host");
    assert!(!p.private_allowed(Some(Scheme::Http), "mixed.internal", 80), "one route without allow_private");
    assert!(!p.private_allowed(Some(Scheme::Http), "other.internal", 80), "unnamed");
}
