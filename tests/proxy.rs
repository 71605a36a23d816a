//! The three plain-HTTP entry points, stripping, injection, deny-by-default and request hygiene,
//! on real loopback sockets against a recording upstream.

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "tok-injected-1";

fn policy(port: u16) -> String {
    format!(
        r#"
version: 1
instance_id: test
audit: {{ output: "{{dir}}/audit.log", requests: all }}
tools:
  api:
    upstream: http://127.0.0.1:{port}/base
    credential: {{ source: file, path: "{{dir}}/token" }}
    strip_headers: [X-Extra-Secret]
    routes:
      - {{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/base/**", "/v1/**"] }}
  open:
    routes:
      - {{ scheme: http, host: localhost, port: {port}, allow_private: true }}
  private-denied:
    routes:
      - {{ scheme: http, host: private.test, port: {port} }}
resolve:
  private.test: 127.0.0.1
"#
    )
}

async fn setup() -> (Upstream, Proxy) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", &format!("{TOKEN}\n"));
    let proxy = Proxy::start_in(dir, &policy(up.port())).await;
    (up, proxy)
}

fn auth_values(seen: &Seen) -> Vec<String> {
    seen.headers.get_all("authorization").iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

const AGENT_CREDS: &str =
    "Authorization: Bearer agent-key\r\nauthorization: Basic YWdlbnQ6cGFzcw==\r\nX-API-KEY: agent-x\r\n\
api-key: agent-y\r\nApi-Key: \r\nX-Extra-Secret: s\r\nProxy-Authorization: Bearer p\r\nCredproxy-Tool: api\r\n";

#[tokio::test]
async fn base_url_mode_strips_and_injects_exactly_one_credential() {
    let (up, proxy) = setup().await;
    let req = format!("GET /api/v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{AGENT_CREDS}Connection: close\r\n\r\n");
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.uri, "/base/v1/models?x=1");
    assert_eq!(auth_values(&seen), vec![format!("Bearer {TOKEN}")]);
    for h in ["x-api-key", "api-key", "x-extra-secret", "proxy-authorization", "credproxy-tool"] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["host"], format!("127.0.0.1:{}", up.port()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn forward_mode_injects_and_routes_by_uri_not_host_header() {
    let (up, proxy) = setup().await;
    let req = format!(
        "GET http://127.0.0.1:{}/v1/chat HTTP/1.1\r\nHost: evil.example.com\r\n{AGENT_CREDS}Connection: close\r\n\r\n",
        up.port()
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/chat");
    assert_eq!(seen.headers["host"], format!("127.0.0.1:{}", up.port()));
    assert_eq!(auth_values(&seen), vec![format!("Bearer {TOKEN}")]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn passthrough_tool_is_untouched_but_allowed() {
    let (up, proxy) = setup().await;
    let req = format!(
        "GET http://localhost:{}/anything HTTP/1.1\r\nAuthorization: Bearer mine\r\nConnection: close\r\n\r\n",
        up.port()
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(auth_values(&up.last()), vec!["Bearer mine".to_string()]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn deny_by_default_never_contacts_the_upstream() {
    let (up, proxy) = setup().await;
    for req in [
        "GET http://example.org/ HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        format!("GET http://127.0.0.1:{}/admin HTTP/1.1\r\nConnection: close\r\n\r\n", up.port()),
        "GET /nosuchtool/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        format!("GET http://private.test:{}/ HTTP/1.1\r\nConnection: close\r\n\r\n", up.port()),
    ] {
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_error(&resp, 403, "route_denied");
    }
    assert_eq!(up.connection_count(), 0);
    let m = proxy.metrics().await;
    // example.org, 127.0.0.1 without a route and the unknown base tool match no tool; the
    // private address is denied under its tool.
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="denied",tool="""#), Some(3.0), "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn authority_and_path_tricks_are_refused_or_normalised() {
    let (up, proxy) = setup().await;
    let port = up.port();
    // userinfo: the host an RFC 3986 parser sees is `evil`, and we refuse the form outright.
    let resp = raw(
        proxy.addr,
        format!("GET http://127.0.0.1:{port}@evil.example/ HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_error(&resp, 400, "bad_request");
    for path in ["/api/v1/a%2Fb", "/api/v1/a%5cb", "/api/v1/a\\b", "/api/v1/%00"] {
        let resp =
            raw(proxy.addr, format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_error(&resp, 400, "bad_request");
    }
    assert_eq!(up.connection_count(), 0);
    // Dot segments are removed inside the tool's base path: they cannot climb out of it.
    let resp = raw(proxy.addr, b"GET /api/v1/../../../etc/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(up.last().uri, "/base/etc/x");
    let resp = raw(
        proxy.addr,
        format!("GET http://127.0.0.1:{port}/v2/../v1/%7Eok HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(up.last().uri, "/v1/~ok");
    proxy.shutdown().await;
}

/// RFC 9112 §6.3: hyper treats CL+TE as chunked, drops Content-Length, and closes the agent's
/// connection after the response, so a smuggled second request is never read.
#[tokio::test]
async fn mixed_framing_is_chunked_then_closed_and_conflicting_lengths_refused() {
    let (up, proxy) = setup().await;
    let cl_te = "POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp = raw(proxy.addr, cl_te.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "a second response came back: {resp}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("content-length"));
    assert!(seen.iter().all(|s| !s.uri.contains("smuggled")));
    let two_cl = "POST /api/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    let resp = raw(proxy.addr, two_cl.as_bytes()).await;
    assert_eq!(status(&resp), 400, "{resp}");
    // hyper's own answer to framing it cannot trust: the one kind without credproxy-error.
    assert_eq!(error_code(&resp), None, "{resp}");
    assert_eq!(up.requests().len(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn credential_trailers_are_stripped() {
    let (up, proxy) = setup().await;
    let req = "POST /api/v1/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization, X-Api-Key, X-Checksum\r\nConnection: close\r\n\r\n\
               5\r\nhello\r\n0\r\nAuthorization: Bearer agent-trailer\r\nX-Api-Key: agent\r\nX-Checksum: 42\r\n\r\n";
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(auth_values(&seen), vec![format!("Bearer {TOKEN}")]);
    // The agent's other trailers arrive; its credential trailers do not.
    let t = seen.trailers.as_ref().expect("the upstream received trailers");
    assert_eq!(t.get("x-checksum").map(|v| v.as_bytes()), Some(&b"42"[..]), "{t:?}");
    assert!(!t.contains_key("authorization") && !t.contains_key("x-api-key"), "{t:?}");
    // ...and the Trailer field no longer announces them.
    let declared = seen.headers.get("trailer").map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert_eq!(declared.as_deref(), Some("x-checksum"), "{:?}", seen.headers);
    proxy.shutdown().await;
}

#[tokio::test]
async fn sse_streams_event_by_event() {
    let (up, proxy) = setup().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /api/v1/sse HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: first") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("first event arrives while the upstream still holds the last")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("data: last"));
    up.release.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(String::from_utf8_lossy(&got).contains("data: last"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let (up, proxy) = setup().await;
    let resp = raw(proxy.addr, b"GET /api/v1/redirect HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&resp), 307, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("location: http://elsewhere.example/"));
    assert_eq!(up.requests().len(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_cannot_forge_credproxy_error() {
    let (_up, proxy) = setup().await;
    let resp = raw(proxy.addr, b"GET /api/v1/forge HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("credproxy-error"), "{resp}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn h2c_upgrade_is_served_as_http11() {
    let (up, proxy) = setup().await;
    let req = "GET /api/v1/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_through_base_url_and_forward_modes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (up, proxy) = setup().await;
    for target in ["/api/v1/ws".to_string(), format!("http://127.0.0.1:{}/v1/ws", up.port())] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer agent\r\n\r\n"
        );
        use tokio::io::AsyncWriteExt;
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            s,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        ws.send(Message::text("ping")).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
        assert_eq!(auth_values(&up.last()), vec![format!("Bearer {TOKEN}")]);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_tunnels_unrestricted_hosts_and_refuses_the_rest() {
    let (up, proxy) = setup().await;
    let port = up.port();
    // `open` (localhost) has no credential and no method/path restriction: a byte-for-byte tunnel.
    let req = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\nGET /through HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("ok /through"), "{resp}");
    assert_eq!(up.connection_count(), 1);
    // `api` carries a credential: refused before a byte is relayed.
    let resp =
        raw(proxy.addr, format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await;
    assert_error(&resp, 403, "route_denied");
    // Bytes sent after a refused CONNECT are never read as a request: the connection is closed.
    let started = std::time::Instant::now();
    let resp = raw(
        proxy.addr,
        b"CONNECT unknown.example:443 HTTP/1.1\r\nHost: unknown.example\r\n\r\nGET http://localhost/ HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_error(&resp, 403, "route_denied");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "{resp}");
    assert!(started.elapsed() < Duration::from_secs(2), "the connection was left open");
    assert_eq!(up.connection_count(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn audit_lines_carry_fingerprints_only() {
    let (_up, proxy) = setup().await;
    raw(proxy.addr, b"GET /api/v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    raw(proxy.addr, b"GET http://denied.example/secret?q=1 HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    let path = proxy.dir.path().join("audit.log");
    let running = proxy.running.as_ref().unwrap();
    running.shared.audit.flush().await;
    let log = std::fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let fwd = events.iter().find(|e| e["event"] == "request.forwarded").expect("forwarded event");
    assert_eq!(fwd["tool"], "api");
    assert!(fwd["credential_id"].as_str().unwrap().starts_with("sha256:"));
    let denied = events.iter().find(|e| e["event"] == "request.denied").expect("denied event");
    assert_eq!(denied["host"], "denied.example");
    assert_eq!(denied["path"], "/secret");
    assert_eq!(denied["reason"], "no_route_for_host");
    assert!(!log.contains(TOKEN));
    proxy.shutdown().await;
}

#[tokio::test]
async fn query_and_basic_injection() {
    let up = Upstream::start().await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "q/t k\n");
    let policy = format!(
        r#"version: 1
tools:
  maps:
    upstream: http://127.0.0.1:{port}/maps
    credential: {{ source: file, path: "{{dir}}/token" }}
    inject: {{ query: {{ param: key }} }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/maps/**"] }}]
  registry:
    upstream: http://127.0.0.1:{port}/registry
    credential: {{ source: file, path: "{{dir}}/token" }}
    inject: {{ basic: {{ username: bot }} }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/registry/**"] }}]
"#
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let resp = get(proxy.addr, "/maps/geocode?address=x&key=agent-key&z=1").await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.uri, "/maps/geocode?address=x&z=1&key=q%2Ft%20k");
    let resp = raw(
        proxy.addr,
        b"GET /registry/v2/ HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWdlbnQ6eA==\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.last();
    // base64("bot:q/t k")
    assert_eq!(auth_values(&seen), vec!["Basic Ym90OnEvdCBr".to_string()]);
    proxy.shutdown().await;
}
