//! The hostile review's findings, one test each: what the upstream received, the error code, and
//! the audit event, for every hole that was closed.

mod common;

use std::time::Duration;

use common::authority::{Authority, Mode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tool-token-123";

/// Finding 1: a reload never weakens what the running listeners enforce.
#[tokio::test]
async fn a_reload_that_drops_proxy_auth_is_rejected_and_auth_stays() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "proxy-auth", "s3cret\n");
    let tool = format!(
        "audit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n  open:\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {}, allow_private: true }}]\n",
        up.port()
    );
    let control = format!("control: \"unix:{}/control.sock\"", dir.path().display());
    let before = format!(
        "version: 1\nlisten: {{ proxy: 0.0.0.0:0, admin: 127.0.0.1:0, {control}, proxy_auth_file: \"{{dir}}/proxy-auth\" }}\n{tool}"
    );
    let p = Proxy::start_in(dir, &before).await;
    let port = p.addr.port();
    let plain = format!("GET http://127.0.0.1:{}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", up.port());
    let resp = raw(([127, 0, 0, 1], port).into(), plain.as_bytes()).await;
    assert_eq!((status(&resp), error_code(&resp).as_deref()), (407, Some("proxy_auth_required")));

    // Exactly the rewrite the review made: loopback, and no auth file.
    p.rewrite(&format!("version: 1\nlisten: {{ proxy: 127.0.0.1:0, admin: 127.0.0.1:0, {control} }}\n{tool}"));
    eventually(
        async || metric(&p.metrics().await, r#"credproxy_config_reloads_total{result="error"}"#) == Some(1.0),
        "the rejected reload",
    )
    .await;
    assert_eq!(metric(&p.metrics().await, "credproxy_config_last_reload_success"), Some(0.0));
    let audit = p.audit().await;
    let rejected = audit.lines().find(|l| l.contains(r#""event":"config.rejected""#)).expect("a config.rejected event");
    let v: serde_json::Value = serde_json::from_str(rejected).unwrap();
    assert_eq!(v["reason"], "restart_required");
    assert_eq!(v["fields"], serde_json::json!(["listen.proxy", "listen.proxy_auth_file"]));
    assert!(!audit.contains(r#""event":"config.reloaded""#), "{audit}");
    // Unauthenticated requests still get 407 and reach nothing.
    let resp = raw(([127, 0, 0, 1], port).into(), plain.as_bytes()).await;
    assert_eq!((status(&resp), error_code(&resp).as_deref()), (407, Some("proxy_auth_required")));
    assert!(up.requests().is_empty());
    // instance_id and audit.output are restart-only too.
    p.rewrite(&format!(
        "version: 1\ninstance_id: other\nlisten: {{ proxy: 0.0.0.0:0, admin: 127.0.0.1:0, {control}, proxy_auth_file: \"{{dir}}/proxy-auth\" }}\n{}",
        tool.replace("audit.log", "audit2.log")
    ));
    eventually(
        async || metric(&p.metrics().await, r#"credproxy_config_reloads_total{result="error"}"#) == Some(2.0),
        "the second rejected reload",
    )
    .await;
    let audit = p.audit().await;
    let last = audit.lines().rfind(|l| l.contains("config.rejected")).unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["fields"], serde_json::json!(["instance_id", "audit.output"]));
    p.shutdown().await;
}

/// Finding 2: a token never survives a change of its credential's settings.
#[tokio::test]
async fn moving_a_tool_to_another_authority_never_sends_the_old_token() {
    let up = Upstream::start().await;
    let a = Authority::start(Mode::Ok).await;
    let b = Authority::start(Mode::Status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let cred = |url: String| {
        format!("{{ source: oauth2_client_credentials, token_url: \"{url}\", client_id: agent, client_secret_file: \"{{dir}}/secret\" }}")
    };
    let p = Proxy::start_in(dir, &api_policy(up.port(), &cred(a.url()))).await;
    eventually(async || status(&get(p.addr, "/api/x").await) == 200, "a token from authority A").await;
    assert_eq!(up.last().headers["authorization"], "Bearer tok-1");
    let seen = up.requests().len();

    p.rewrite(&api_policy(up.port(), &cred(b.url())));
    eventually(
        async || metric(&p.metrics().await, r#"credproxy_config_reloads_total{result="ok"}"#) == Some(2.0),
        "the reload",
    )
    .await;
    // From the reload on: 503 credential_unavailable, never A's still-valid token.
    for _ in 0..20 {
        let resp = get(p.addr, "/api/x").await;
        assert_eq!((status(&resp), error_code(&resp).as_deref()), (503, Some("credential_unavailable")), "{resp}");
        assert!(header(&resp, "retry-after").is_some());
    }
    assert_eq!(up.requests().len(), seen, "the upstream saw a request after the move");
    eventually(async || !b.requests().is_empty(), "authority B asked").await;
    p.shutdown().await;
}

fn query_tool(up: u16) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
tools:
  api:
    upstream: http://127.0.0.1:{up}
    credential: {{ source: file, path: "{{dir}}/token" }}
    inject: {{ query: {{ param: key }} }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, paths: ["/v1/public/**", "/v1/items/**"] }}]
"#
    )
}

async fn start_query_tool() -> (Upstream, Proxy) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "sk-Q/1+x\n");
    let p = Proxy::start_in(dir, &query_tool(up.port())).await;
    (up, p)
}

/// Finding 4: the injected query value never comes back, and encoded names are the agent's own.
#[tokio::test]
async fn query_injection_never_leaks_back_and_encoded_names_are_replaced() {
    let (up, p) = start_query_tool().await;
    let resp = get(p.addr, "/api/v1/items/echo-location?%6Bey=agent&a=1&k%65y=agent2").await;
    assert_eq!(status(&resp), 301, "{resp}");
    let seen = up.last();
    let query = seen.uri.split_once('?').map(|(_, q)| q.to_string()).unwrap();
    let pairs: Vec<(String, String)> = form_pairs(&query);
    assert_eq!(pairs, [("a".into(), "1".into()), ("key".into(), "sk-Q/1+x".into())], "{query}");
    for field in ["location", "content-location", "link", "refresh"] {
        let v = header(&resp, field).unwrap_or_else(|| panic!("{field} kept: {resp}"));
        assert!(v.contains("/v1/items/echo-location?a=1"), "{field}: {v}");
        assert!(!v.contains("key="), "{field}: {v}");
    }
    for form in ["sk-Q/1+x", "sk-Q%2F1%2Bx", "sk-Q%2f1%2bx"] {
        assert!(!resp.contains(form), "{form} in {resp}");
    }
    p.shutdown().await;
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Finding 5: `..;` path parameters and double encodings do not walk around a path glob.
#[tokio::test]
async fn dot_segment_parameters_and_double_encodings_never_leave_the_glob() {
    let (up, p) = start_query_tool().await;
    for path in ["/api/v1/public/..;/admin/users", "/api/v1/public/%2e%2e;/admin", "/api/v1/public/..%3B/admin"] {
        let resp = get(p.addr, path).await;
        assert_eq!((status(&resp), error_code(&resp).as_deref()), (400, Some("bad_request")), "{path}: {resp}");
    }
    let resp = get(p.addr, "/api/v1/public/%252e%252e/admin").await;
    assert_eq!((status(&resp), error_code(&resp).as_deref()), (403, Some("route_denied")), "{resp}");
    assert!(up.requests().is_empty(), "the upstream saw {:?}", up.requests());
    // An ordinary path parameter is forwarded as it is.
    assert_eq!(status(&get(p.addr, "/api/v1/public/x;v=2").await), 200);
    assert_eq!(up.last().uri.split('?').next(), Some("/v1/public/x;v=2"));
    p.shutdown().await;
}

fn header_tool(up: u16) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
resolve: {{ "*.corp.example": 127.0.0.1 }}
tools:
  api:
    upstream: http://127.0.0.1:{up}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]
  corp:
    credential: {{ source: file, path: "{{dir}}/token" }}
    allow_insecure_upstream: true
    routes: [{{ scheme: http, host: "*.corp.example", port: {up}, allow_private: true }}]
  vendor:
    routes: [{{ scheme: http, host: vendor.corp.example, port: {up}, allow_private: true }}]
"#
    )
}

/// Findings 3, 6 and 8: TRACE refused, underscore aliases stripped, `Credproxy-Tool` never
/// overrides a more specific route.
#[tokio::test]
async fn trace_underscores_and_the_tool_header() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    let p = Proxy::start_in(dir, &header_tool(up.port())).await;

    for m in ["TRACE", "TRACK"] {
        let resp = raw(p.addr, format!("{m} /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!((status(&resp), error_code(&resp).as_deref()), (403, Some("route_denied")), "{m}: {resp}");
    }
    assert!(up.requests().is_empty());
    assert_eq!(p.audit().await.matches(r#""reason":"method_echoes_credential""#).count(), 2);

    let req = "GET /api/x HTTP/1.1\r\nHost: x\r\nX_Api_Key: agent-key\r\nAPI_KEY: agent-2\r\nAuthorization: Bearer agent\r\nX_Kept: 1\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&raw(p.addr, req.as_bytes()).await), 200);
    let seen = up.last();
    let names: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).collect();
    assert!(!names.iter().any(|n| n.replace('_', "-") == "x-api-key" || n.replace('_', "-") == "api-key"), "{names:?}");
    assert_eq!(seen.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(seen.headers["x_kept"], "1");

    let port = up.port();
    let to_vendor = |tool: &str| {
        format!("GET http://vendor.corp.example:{port}/data HTTP/1.1\r\nHost: vendor.corp.example\r\nCredproxy-Tool: {tool}\r\nConnection: close\r\n\r\n")
    };
    let before = up.requests().len();
    let resp = raw(p.addr, to_vendor("corp").as_bytes()).await;
    assert_eq!((status(&resp), error_code(&resp).as_deref()), (403, Some("route_denied")), "{resp}");
    assert_eq!(up.requests().len(), before, "corp's token went to vendor");
    assert!(p.audit().await.contains(r#""reason":"not_tools_route""#));
    // Naming the tool that wins anyway is fine, and it passes through untouched.
    assert_eq!(status(&raw(p.addr, to_vendor("vendor").as_bytes()).await), 200);
    assert!(!up.last().headers.contains_key("authorization"));
    assert!(!up.last().headers.contains_key("credproxy-tool"));
    p.shutdown().await;
}

/// With `max_connections: 1` and a relay open on `stream`: the relay counts as the one active
/// connection, a second agent connection is shed, and `idle_timeout` of silence closes the relay
/// and frees its place.
async fn relay_holds_its_place_until_idle(p: &Proxy, mut stream: tokio::net::TcpStream) {
    let active = "credproxy_connections_active";
    // After the upgrade hyper's connection is done; the relay still holds the place.
    eventually(async || metric(&p.metrics().await, active) == Some(1.0), "one active relay").await;
    assert_error(&get(p.addr, "/x").await, 503, "too_many_connections");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle relay was not closed");
    eventually(async || metric(&p.metrics().await, active) == Some(0.0), "the freed place").await;
}

/// Finding 9: an upgraded connection keeps its place under `max_connections` until it ends,
/// and ends after `idle_timeout` without traffic.
#[tokio::test]
async fn upgraded_connections_hold_their_permit_until_idle() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "version: 1\nlimits: {{ max_connections: 1, idle_timeout: 1s }}\ntools:\n  open:\n    routes: [{{ scheme: http, host: localhost, port: {}, allow_private: true }}]\n",
        up.port()
    );
    let p = Proxy::start_in(dir, &policy).await;
    let mut tunnel = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let connect = format!("CONNECT localhost:{0} HTTP/1.1\r\nHost: localhost:{0}\r\n\r\n", up.port());
    tunnel.write_all(connect.as_bytes()).await.unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    relay_holds_its_place_until_idle(&p, tunnel).await;
    let resp = raw(
        p.addr,
        format!("GET http://localhost:{}/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", up.port()).as_bytes(),
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    p.shutdown().await;
}

/// Finding 9, WebSocket: the upgraded connection keeps its place too, and idles out.
#[tokio::test]
async fn a_websocket_holds_its_permit_until_idle() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    let policy = format!(
        "version: 1\nlimits: {{ max_connections: 1, idle_timeout: 1s }}\ntools:\n  api:\n    upstream: http://127.0.0.1:{0}\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {0}, allow_private: true }}]\n",
        up.port()
    );
    let p = Proxy::start_in(dir, &policy).await;
    let mut ws = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let req = "GET /api/v1/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    ws.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    assert_eq!(up.last().headers["authorization"], format!("Bearer {TOKEN}"));
    relay_holds_its_place_until_idle(&p, ws).await;
    assert_eq!(status(&get(p.addr, "/api/after").await), 200);
    p.shutdown().await;
}

/// Finding 13: a connection opened for one tool is never reused for another.
#[tokio::test]
async fn upstream_connections_are_never_shared_across_tools() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    let p = Proxy::start_in(dir, &two_tools_policy(up.port())).await;
    for i in 0..6 {
        for tool in ["a", "b"] {
            assert_eq!(status(&get(p.addr, &format!("/{tool}/{i}")).await), 200);
        }
    }
    assert_eq!(up.requests().len(), 12);
    // Every upstream connection carried one tool's requests only...
    assert_one_tool_per_connection(&up);
    // ...and connections were pooled, so sharing them was possible.
    assert!(up.connection_count() < 12, "no connection was reused: {}", up.connection_count());
    p.shutdown().await;
}

/// Finding 7: over TCP the control API checks `Host` (DNS rebinding) and its bearer token, and
/// rotate/revoke share one window per tool.
#[tokio::test]
async fn control_api_over_tcp_checks_host_token_and_rate() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "control-token", "ctl-s3cret\n");
    let helper = write_file(&dir, "h.sh", "#!/bin/sh\necho '{\"token\": \"t\", \"expires_in\": 600}'\n");
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tool = |name: &str| {
        format!(
            "  {name}:\n    upstream: http://127.0.0.1:{0}/{name}\n    credential: {{ source: exec, command: [\"{1}\"] }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {0}, allow_private: true, paths: [\"/{name}/**\"] }}]\n",
            up.port(),
            helper.display()
        )
    };
    let policy = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:0, admin: 127.0.0.1:0, control: 127.0.0.1:0, control_auth_file: \"{{dir}}/control-token\" }}\ntools:\n{}{}",
        tool("a"),
        tool("b")
    );
    let p = Proxy::start_in(dir, &policy).await;
    let credproxy::policy::ControlAddr::Tcp(addr) = p.control.clone() else { panic!("a TCP control listener") };
    let post = |path: &str, host: String, token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let good_host = format!("127.0.0.1:{}", addr.port());
    // DNS rebinding: a page's request carries its own name as Host.
    for host in ["evil.example:80".to_string(), format!("evil.example:{}", addr.port()), "127.0.0.1:1".into()] {
        let resp = raw(addr, post("/v1/credentials/a/rotate", host.clone(), Some("ctl-s3cret")).as_bytes()).await;
        assert_eq!(status(&resp), 421, "{host}: {resp}");
        assert!(resp.contains(r#""code":"misdirected_request""#), "{resp}");
    }
    for token in [None, Some("wrong")] {
        let resp = raw(addr, post("/v1/credentials/a/rotate", good_host.clone(), token).as_bytes()).await;
        assert_eq!(status(&resp), 401, "{resp}");
        assert!(resp.contains(r#""code":"unauthorized""#), "{resp}");
    }
    let get_creds =
        format!("GET /v1/credentials HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", addr.port());
    assert_eq!(status(&raw(addr, get_creds.as_bytes()).await), 401);
    // Authorised: one rotate, then the window is shut for rotate and revoke alike.
    let ok = |path: &str| post(path, good_host.clone(), Some("ctl-s3cret"));
    assert_eq!(status(&raw(addr, ok("/v1/credentials/a/rotate").as_bytes()).await), 202);
    for path in ["/v1/credentials/a/rotate", "/v1/credentials/a/revoke"] {
        let resp = raw(addr, ok(path).as_bytes()).await;
        assert_eq!(status(&resp), 429, "{path}: {resp}");
        assert!(resp.contains(r#""code":"rate_limited""#), "{resp}");
        let after: u64 = header(&resp, "retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=10).contains(&after), "{after}");
    }
    // Another tool has its own window.
    assert_eq!(status(&raw(addr, ok("/v1/credentials/b/revoke").as_bytes()).await), 202);
    p.shutdown().await;
}

/// Finding 9, the admin listener: its own connection cap, and connections that never send a
/// head give their place back after 2 s, so probes get through again.
#[tokio::test]
async fn the_admin_listener_has_its_own_small_cap() {
    let p = Proxy::start("version: 1\ntools:\n  open:\n    routes: [{ host: a.example }]\n").await;
    let mut held = Vec::new();
    for _ in 0..credproxy::admin::MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(p.admin).await.unwrap());
    }
    // Over the cap: closed at once, before any byte is sent.
    let mut extra = tokio::net::TcpStream::connect(p.admin).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), extra.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection over the cap stayed open: {read:?}");
    // The proxy listener is not affected.
    assert_error(&get(p.addr, "/x").await, 403, "route_denied");
    // Silent connections are cut after the 2 s head timeout; then probes are answered again.
    eventually(async || status(&get(p.admin, "/live").await) == 200, "the admin listener answering again").await;
    drop(held);
    p.shutdown().await;
}
