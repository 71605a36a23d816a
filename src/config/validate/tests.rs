//! Parse and validation errors: paths, lines, collected together, never echoing values.

use std::time::SystemTime;

use super::*;

fn errors(yaml: &str) -> Vec<ConfigError> {
    parse(yaml, &|v| (v == "SET").then(|| "value".to_string()), SystemTime::now()).expect_err("should fail").0
}

#[test]
fn type_error_has_path_and_line_and_no_value() {
    let e = errors("version: 1\ntools:\n  gh:\n    required: sk-live-SECRETVALUE\n    routes: [{host: a.com}]\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "tools.gh.required");
    assert_eq!(e[0].line, Some(4));
    assert!(!e[0].message.contains("SECRETVALUE"), "{}", e[0].message);
    assert!(e[0].message.contains("expected a boolean"), "{}", e[0].message);
}

#[test]
fn unknown_field_and_duplicate_key() {
    let e = errors("version: 1\ntools:\n  gh:\n    routes: [{host: a.com, hots: b}]\n");
    assert_eq!(e[0].path, "tools.gh.routes[0].hots");
    assert!(e[0].message.contains("unknown field `hots`"));
    let e = errors("version: 1\ntools:\n  gh:\n    routes: [{host: a.com}]\n  gh:\n    routes: [{host: b.com}]\n");
    assert!(e[0].message.contains("duplicate"), "{}", e[0].message);
    assert!(e[0].line.is_some());
}

#[test]
fn semantic_errors_are_all_reported() {
    let e = errors(
        r#"
version: 1
listen: { control: "0.0.0.0:15091" }
tools:
  Bad_Name:
    routes: [{ host: a.com }]
  gh:
    credential: { source: env, var: "${UNSET}" }
    inject: { header: X-Key, value: "{token}{token}" }
    not_before: 2999-01-01T00:00:00Z
    routes:
      - { host: "api.github.com", scheme: http, paths: ["no-slash"] }
  a:
    routes: [{ host: x.com }]
  b:
    routes: [{ host: x.com }]
"#,
    );
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "listen.control",
        "tools.Bad_Name",
        "tools.gh.credential.var",
        "tools.gh.inject.value",
        "tools.gh.not_before",
        "tools.gh.routes[0].paths[0]",
        "tools.b.routes[0]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn cleartext_credential_refused_unless_loopback_or_allowed() {
    let e = errors(
        "version: 1\ntools:\n  t:\n    credential: {source: env, var: X}\n    routes: [{host: a.com, scheme: http}]\n",
    );
    assert_eq!(e[0].path, "tools.t.routes[0].scheme");
    let ok = "version: 1\ntools:\n  t:\n    credential: {source: env, var: X}\n    routes: [{host: 127.0.0.1, scheme: http}]\n";
    assert!(parse(ok, &|_| None, SystemTime::now()).is_ok());
    let ok = "version: 1\ntools:\n  t:\n    allow_insecure_upstream: true\n    credential: {source: env, var: X}\n    routes: [{host: a.com, scheme: http}]\n";
    assert!(parse(ok, &|_| None, SystemTime::now()).is_ok());
}

#[test]
fn limits_nesting_and_size() {
    let deep = format!("version: 1\nresolve: {}{}\n", "[".repeat(40), "]".repeat(40));
    assert!(errors(&deep)[0].message.contains("nested deeper"));
    let big = format!("version: 1\n#{}\n", "x".repeat(MAX_POLICY_BYTES));
    assert!(errors(&big)[0].message.contains("larger than"));
    let e = errors("version: 2\nlimits: { max_header_bytes: 10, connect_timeout: soon }\n");
    assert_eq!(e.len(), 3);
}

#[test]
fn env_expansion() {
    let p = parse("version: 1\ninstance_id: pod-${SET}\n", &|v| (v == "SET").then(|| "x".into()), SystemTime::now())
        .unwrap();
    assert_eq!(p.instance_id, "pod-x");
}

#[test]
fn sanitize_drops_values() {
    assert_eq!(
        sanitize(r#"invalid type: string "sk-1", expected a boolean at line 3 column 5"#),
        "invalid type, expected a boolean"
    );
    assert_eq!(
        sanitize("unknown variant `sk-2`, expected `file` or `env`"),
        "unknown variant, expected `file` or `env`"
    );
    assert!(!sanitize(r#"something "sk-3" odd"#).contains("sk-3"));
}

#[test]
fn a_localhost_name_is_trusted_for_cleartext_only_when_resolve_pins_it() {
    let tool = |host: &str| {
        format!("tools:\n  t:\n    credential: {{ source: env, var: SET }}\n    routes: [{{ scheme: http, host: \"{host}\" }}]\n")
    };
    let ok = |yaml: &str| parse(yaml, &|v| (v == "SET").then(|| "value".to_string()), SystemTime::now());
    // Loopback addresses and localhost itself.
    for host in ["127.0.0.1", "::1", "localhost"] {
        assert!(ok(&format!("version: 1\n{}", tool(host))).is_ok(), "{host}");
    }
    // A *.localhost name: the system resolver may send it anywhere.
    for host in ["api.localhost", "*.localhost", "*.svc.localhost"] {
        let e = errors(&format!("version: 1\n{}", tool(host)));
        assert_eq!(e.len(), 1, "{host}: {e:?}");
        assert_eq!(e[0].path, "tools.t.routes[0].scheme", "{host}");
    }
    // Pinned by resolve to loopback: trusted.
    assert!(ok(&format!("version: 1\nresolve: {{ api.localhost: 127.0.0.1 }}\n{}", tool("api.localhost"))).is_ok());
    assert!(ok(&format!("version: 1\nresolve: {{ \"*.localhost\": 127.0.0.2 }}\n{}", tool("*.svc.localhost"))).is_ok());
    // Pinned elsewhere, or a name under the wildcard pinned elsewhere: refused.
    let e = errors(&format!("version: 1\nresolve: {{ api.localhost: 10.0.0.1 }}\n{}", tool("api.localhost")));
    assert_eq!(e[0].path, "tools.t.routes[0].scheme");
    let e = errors(&format!(
        "version: 1\nresolve: {{ \"*.localhost\": 127.0.0.1, x.svc.localhost: 10.0.0.1 }}\n{}",
        tool("*.svc.localhost")
    ));
    assert_eq!(e[0].path, "tools.t.routes[0].scheme");
}

#[test]
fn a_short_fingerprint_key_is_refused_and_a_long_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    let long = dir.path().join("long.key");
    std::fs::write(&short, "too-short\n").unwrap();
    std::fs::write(&long, "0123456789abcdef0123\n").unwrap();
    let policy =
        |p: &std::path::Path| format!("version: 1\naudit:\n  fingerprint_key_file: \"{}\"\ntools: {{}}\n", p.display());
    let e = errors(&policy(&short));
    assert_eq!((e[0].path.as_str(), e[0].line), ("audit.fingerprint_key_file", Some(3)));
    assert!(e[0].message.contains("at least 16 bytes") && !e[0].message.contains("too-short"), "{}", e[0].message);
    let p = parse(&policy(&long), &|_| None, SystemTime::now()).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(p.audit.fingerprint_key.as_ref().map(|k| k.expose_secret().len()), Some(20));
}
