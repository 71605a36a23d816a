//! Limits and failure answers: header size, connection cap, timeouts, proxy auth, loops, and a
//! missing credential — each with credproxy's own error code.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy(port: u16, limits: &str) -> String {
    format!(
        r#"
version: 1
limits: {{ {limits} }}
tools:
  api:
    upstream: http://127.0.0.1:{port}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true }}]
  missing:
    upstream: http://127.0.0.1:{port}/m
    required: false
    credential: {{ source: file, path: "{{dir}}/no-such-token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/m/**"] }}]
  endless:
    required: false
    credential: {{ source: file, path: /dev/zero }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/endless/**"] }}]
  closed:
    upstream: http://127.0.0.1:1
    routes: [{{ scheme: http, host: 127.0.0.1, port: 1, allow_private: true }}]
  public-only:
    upstream: http://127.0.0.1:{port}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, paths: ["/public/**"] }}]
"#
    )
}

async fn setup(limits: &str) -> (Upstream, Proxy) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", &"t".repeat(200));
    let proxy = Proxy::start_in(dir, &policy(up.port(), limits)).await;
    (up, proxy)
}

#[tokio::test]
async fn no_room_for_the_injected_header_is_431() {
    let (up, proxy) = setup("max_header_bytes: 8192").await;
    // Fits as sent, but not once the 200-byte token is injected.
    let filler = "a".repeat(8192 - 150);
    let resp = raw(
        proxy.addr,
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nX-Fill: {filler}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_error(&resp, 431, "headers_too_large");
    // Larger than the read buffer: hyper's own 431.
    let filler = "a".repeat(20000);
    let resp = raw(
        proxy.addr,
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nX-Fill: {filler}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&resp), 431, "{resp}");
    // hyper's parser answered before credproxy saw a request: no credproxy-error header there.
    assert_eq!(error_code(&resp), None, "{resp}");
    assert!(up.requests().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_shed_and_counted() {
    let (_up, proxy) = setup("max_connections: 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await.unwrap();
        held.push(s);
    }
    let resp = get(proxy.addr, "/api/x").await;
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(resp.contains("credproxy-error: too_many_connections"), "{resp}");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "credproxy_connections_shed_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "credproxy_connections_active"), Some(2.0), "{m}");
    drop(held);
    let mut freed = false;
    for _ in 0..150 {
        if status(&get(proxy.addr, "/api/x").await) == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "closing connections did not free their slots");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_head_is_504_and_slow_client_is_cut_off() {
    let (_up, proxy) = setup("response_header_timeout: 300ms, header_read_timeout: 300ms").await;
    let resp = get(proxy.addr, "/api/slow").await;
    assert_eq!(status(&resp), 504, "{resp}");
    assert!(resp.contains("credproxy-error: upstream_timeout"), "{resp}");
    // A client that never finishes its headers is disconnected.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the slow client was not disconnected");
    // An idle kept-alive connection is closed by the same timer.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut first = [0u8; 512];
    assert!(s.read(&mut first).await.unwrap() > 0);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the idle agent connection was not closed");
    proxy.shutdown().await;
}

#[tokio::test]
async fn unavailable_credential_is_503_with_retry_after_and_never_forwarded() {
    let (up, proxy) = setup("").await;
    let resp = raw(
        proxy.addr,
        b"GET /missing/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer agent\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(resp.contains("credproxy-error: credential_unavailable"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after: 1"), "{resp}");
    assert!(resp.contains(r#""tool":"missing""#), "{resp}");
    assert!(up.requests().is_empty());
    // One tool's missing credential does not affect another's requests.
    assert_eq!(status(&get(proxy.addr, "/api/x").await), 200);
    let creds = proxy.control_get("/v1/credentials").await;
    assert!(creds.contains(r#""state":"failing""#), "{creds}");
    // A credential path to an endless device is refused at a bounded size, not read forever.
    assert!(creds.contains("/dev/zero is larger than 65536 bytes"), "{creds}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_private_and_looping_destinations() {
    let (up, proxy) = setup("").await;
    let resp = get(proxy.addr, "/closed/x").await;
    assert_error(&resp, 502, "upstream_unreachable");
    // The route does not set allow_private: the check is on the address connected to.
    let resp = get(proxy.addr, "/public-only/public/x").await;
    assert_error(&resp, 403, "route_denied");
    assert!(resp.contains("private"), "{resp}");
    assert_eq!(up.connection_count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_back_to_credproxy_are_508() {
    let dir = tempfile::tempdir().unwrap();
    // Pick a free port for the proxy so the policy can name it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let policy = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:{port}, admin: 127.0.0.1:0, control: \"unix:{{dir}}/control.sock\" }}\ntools:\n  self:\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true }}]\n"
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let resp =
        raw(proxy.addr, format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
    assert_error(&resp, 508, "loop_detected");
    proxy.shutdown().await;
}

#[tokio::test]
async fn proxy_auth_is_required_when_configured() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "proxy-auth", "agent-pass\n");
    let policy = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:0, admin: 127.0.0.1:0, control: \"unix:{{dir}}/control.sock\", proxy_auth_file: \"{{dir}}/proxy-auth\" }}\ntools:\n  open:\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {}, allow_private: true }}]\n",
        up.port()
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let url = format!("http://127.0.0.1:{}/x", up.port());
    let resp = raw(proxy.addr, format!("GET {url} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_error(&resp, 407, "proxy_auth_required");
    assert!(resp.to_ascii_lowercase().contains("proxy-authenticate: basic"), "{resp}");
    let resp = raw(
        proxy.addr,
        format!("GET {url} HTTP/1.1\r\nProxy-Authorization: Bearer wrong\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_error(&resp, 407, "proxy_auth_required");
    // Basic with any user and the file's contents as password (`agent:agent-pass`).
    let resp = raw(
        proxy.addr,
        format!(
            "GET {url} HTTP/1.1\r\nProxy-Authorization: Basic YWdlbnQ6YWdlbnQtcGFzcw==\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(!up.last().headers.contains_key("proxy-authorization"));
    assert_eq!(up.requests().len(), 1);
    proxy.shutdown().await;
}
