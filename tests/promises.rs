//! What the README promises and no other test checked: each answer with its error code, each
//! endpoint, each metric, the `env` source and `selected_by_header` end to end.

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "promise-token";

fn policy(up: u16, silent: u16, limits: &str) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
limits: {{ {limits} }}
tools:
  api:
    upstream: http://127.0.0.1:{up}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]
  envtool:
    upstream: http://localhost:{up}/env
    credential: {{ source: env, var: CREDPROXY_PROMISE_KEY }}
    inject: {{ header: X-Api-Key, value: "{{token}}" }}
    routes: [{{ scheme: http, host: localhost, port: {up}, allow_private: true, paths: ["/env/**"] }}]
  open:
    upstream: http://localhost:{up}/open
    routes: [{{ scheme: http, host: localhost, port: {up}, allow_private: true, paths: ["/open/**"] }}]
  silent:
    upstream: https://127.0.0.1:{silent}
    routes: [{{ host: 127.0.0.1, port: {silent}, allow_private: true }}]
  reader:
    selected_by_header: true
    upstream: http://localhost:{up}/shared
    credential: {{ source: file, path: "{{dir}}/reader" }}
    routes: [{{ scheme: http, host: localhost, port: {up}, allow_private: true, paths: ["/shared/**"] }}]
  writer:
    selected_by_header: true
    credential: {{ source: file, path: "{{dir}}/writer" }}
    routes: [{{ scheme: http, host: localhost, port: {up}, allow_private: true, paths: ["/shared/**"] }}]
"#
    )
}

/// A TCP listener that accepts and never says a word (a TLS handshake that never finishes).
async fn silent_listener() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

async fn setup(limits: &str) -> (Upstream, Proxy, tokio::task::JoinHandle<()>) {
    std::env::set_var("CREDPROXY_PROMISE_KEY", "env-source-key");
    let up = Upstream::start().await;
    let (silent, port) = silent_listener().await;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    write_file(&dir, "reader", "reader-token");
    write_file(&dir, "writer", "writer-token");
    let p = Proxy::start_in(dir, &policy(up.port(), port, limits)).await;
    (up, p, hold)
}

#[tokio::test]
async fn error_answers_carry_their_codes() {
    let (up, p, _hold) = setup("connect_timeout: 300ms, max_headers: 20").await;
    // uri_too_long: a request target over 16 KiB.
    let long = format!("/api/{}", "a".repeat(17 * 1024));
    let resp = raw(p.addr, format!("GET {long} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_error(&resp, 414, "uri_too_long");
    // upstream_timeout at connect: the TLS handshake never finishes within connect_timeout.
    let started = std::time::Instant::now();
    let resp = get(p.addr, "/silent/x").await;
    assert_error(&resp, 504, "upstream_timeout");
    // connect_timeout (300 ms), not response_header_timeout (60 s), gave up.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // A malformed Credproxy-Tool: two of them, or not text.
    for bad in ["Credproxy-Tool: api\r\nCredproxy-Tool: api\r\n", "Credproxy-Tool: \u{e9}t\u{e9}\r\n"] {
        let req = format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{bad}Connection: close\r\n\r\n");
        assert_error(&raw(p.addr, req.as_bytes()).await, 400, "bad_request");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // max_headers: hyper's parser refuses the head before credproxy sees it (no credproxy-error).
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp =
        raw(p.addr, format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n").as_bytes()).await;
    assert_eq!((status(&resp), error_code(&resp)), (431, None), "{resp}");
    let few: String = (0..10).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp =
        raw(p.addr, format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{few}Connection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(up.requests().len(), 1);
    p.shutdown().await;
}

#[tokio::test]
async fn env_source_passthrough_and_selected_by_header_end_to_end() {
    let (up, p, _hold) = setup("").await;
    // The env source: the proxy's own variable, injected where the tool says.
    let req = "GET /envtool/v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: agent-key\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(p.addr, req.as_bytes()).await), 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("x-api-key").iter().collect::<Vec<_>>(), ["env-source-key"]);
    assert_eq!(seen.uri, "/env/v1/x");
    // Passthrough: counted as such, the agent's own header untouched.
    let req = "GET /open/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer agent-own\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(p.addr, req.as_bytes()).await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer agent-own");
    let m = p.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="passthrough",tool="open"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="injected",tool="envtool"}"#), Some(1.0), "{m}");

    // selected_by_header: two tools share the routes; the header picks one and is stripped.
    let port = up.port();
    let shared = |tool: Option<&str>| {
        let h = tool.map(|t| format!("Credproxy-Tool: {t}\r\n")).unwrap_or_default();
        format!("GET http://localhost:{port}/shared/doc HTTP/1.1\r\nHost: localhost\r\n{h}Authorization: Bearer agent\r\nConnection: close\r\n\r\n")
    };
    let before = up.requests().len();
    let resp = raw(p.addr, shared(None).as_bytes()).await;
    assert_error(&resp, 403, "route_denied");
    assert_eq!(up.requests().len(), before);
    assert!(p.audit().await.contains(r#""reason":"tool_header_required""#));
    for (tool, token) in [("writer", "writer-token"), ("reader", "reader-token")] {
        assert_eq!(status(&raw(p.addr, shared(Some(tool)).as_bytes()).await), 200, "{tool}");
        let seen = up.last();
        assert_eq!(
            seen.headers.get_all("authorization").iter().collect::<Vec<_>>(),
            [format!("Bearer {token}").as_str()]
        );
        assert!(!seen.headers.contains_key("credproxy-tool"));
    }
    // Base-URL mode: the path names the tool, no header needed.
    assert_eq!(status(&get(p.addr, "/reader/doc").await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer reader-token");
    p.shutdown().await;
}

#[tokio::test]
async fn endpoints_and_metrics_the_readme_names() {
    let (up, p, _hold) = setup("idle_timeout: 300ms").await;
    let live = get(p.admin, "/live").await;
    assert_eq!(status(&live), 200, "{live}");
    assert!(live.ends_with("ok\n"), "{live}");
    let m = p.metrics().await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(metric(&m, &format!(r#"credproxy_build_info{{version="{version}"}}"#)), Some(1.0), "{m}");
    // /v1/policy: the policy in force, without any secret.
    let resp = p.control_get("/v1/policy").await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body: serde_json::Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let names: Vec<&str> = body["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "envtool", "open", "reader", "silent", "writer"]);
    assert_eq!(body["tools"][0]["credential"], "file");
    for secret in [TOKEN, "env-source-key", "reader-token", "writer-token"] {
        assert!(!resp.contains(secret), "{secret} in /v1/policy");
    }
    // Rotating a file credential is refused: it changes when its file does.
    let resp = p.control_post("/v1/credentials/api/rotate").await;
    assert_eq!(status(&resp), 409, "{resp}");
    assert!(resp.contains(r#""code":"not_rotating""#), "{resp}");
    // idle_timeout closes pooled upstream connections that sit unused.
    assert_eq!(status(&get(p.addr, "/api/x").await), 200);
    assert_eq!(up.connection_count(), 1);
    let t0 = std::time::Instant::now();
    eventually(
        async || up.closed.load(std::sync::atomic::Ordering::SeqCst) == 1,
        "the idle upstream connection closed",
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    p.shutdown().await;
}
