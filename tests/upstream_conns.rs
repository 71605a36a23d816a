//! Upstream connections owned by agent connections: kept between one agent connection's
//! requests, replaced (never re-sent on) when the upstream closes them, parked for the next
//! agent connection, and closed at the idle timeout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "upstream-conn-token";

/// One request on a kept-alive agent connection; the whole response (head and its
/// `content-length` body) is read, and returned as text.
async fn request_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let head = String::from_utf8(read_head(s).await).unwrap();
    let len: usize = header(&head, "content-length").expect("a content-length").parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn policy(up: u16, extra: &str) -> String {
    format!(
        "version: 1\n{extra}tools:\n  api:\n    upstream: http://127.0.0.1:{up}\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]\n"
    )
}

/// The proxy on `policy`, with the file credential `{dir}/token` in place.
async fn proxy_with_token(policy: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    Proxy::start_in(dir, policy).await
}

#[tokio::test]
async fn an_agent_connection_keeps_its_upstream_connection_and_the_next_one_takes_it_over() {
    let up = Upstream::start().await;
    let p = proxy_with_token(&policy(up.port(), "")).await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..5 {
        assert_eq!(status(&request_on(&mut agent, &format!("/api/first/{i}")).await), 200);
    }
    drop(agent);
    // The agent connection has ended (and so let its upstream connection go) once the gauge is 0.
    eventually(async || p.connections_active().await == 0.0, "the first agent connection to end").await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..3 {
        assert_eq!(status(&request_on(&mut agent, &format!("/api/second/{i}")).await), 200);
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 8);
    assert!(seen.iter().all(|s| s.conn == 0), "{:?}", seen.iter().map(|s| s.conn).collect::<Vec<_>>());
    assert!(seen.iter().all(|s| s.headers["authorization"] == format!("Bearer {TOKEN}")));
    assert_eq!(seen[0].uri, "/first/0");
    assert_eq!(seen[7].uri, "/second/2");
    assert_eq!(up.connection_count(), 1);
    p.shutdown().await;
}

/// An upstream that answers each request with `connection: close` and closes; counts the
/// requests it read and the connections it accepted.
async fn closing_upstream() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (requests, conns) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, c) = (requests.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                if try_read_head(&mut s).await.is_none() {
                    return;
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, requests, conns)
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_replaced_and_nothing_is_sent_twice() {
    let (port, requests, conns) = closing_upstream().await;
    let p = proxy_with_token(&policy(port, "")).await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..3 {
        let resp = request_on(&mut agent, &format!("/api/{i}")).await;
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(resp.ends_with("ok"), "{resp}");
        // The upstream's `connection: close` is its hop's: the agent's connection stays open.
        assert_eq!(header(&resp, "connection"), None, "{resp}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    p.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_timeout() {
    let up = Upstream::start().await;
    let p = proxy_with_token(&policy(up.port(), "limits: { idle_timeout: 3s }\n")).await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(status(&request_on(&mut agent, "/api/x").await), 200);
    drop(agent);
    eventually(async || p.connections_active().await == 0.0, "the agent connection to end").await;
    // Parked, not closed, when its agent connection ended...
    assert_eq!(up.closed.load(Ordering::SeqCst), 0, "closed with its agent connection");
    // ...and closed once it has waited the idle timeout.
    eventually_within(
        Duration::from_secs(20),
        async || up.closed.load(Ordering::SeqCst) == 1,
        "the parked upstream connection to be closed",
    )
    .await;
    assert_eq!(up.connection_count(), 1);
    p.shutdown().await;
}

#[tokio::test]
async fn alternating_tools_on_one_agent_connection_never_share_and_still_reuse() {
    let up = Upstream::start().await;
    let p = proxy_with_token(&two_tools_policy(up.port())).await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..4 {
        for tool in ["a", "b"] {
            assert_eq!(status(&request_on(&mut agent, &format!("/{tool}/{i}")).await), 200);
        }
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 8);
    assert_one_tool_per_connection(&up);
    // Only tool a's requests carry its credential; b passes through untouched.
    assert!(seen.iter().all(|s| s.uri.starts_with("/a/") == s.headers.contains_key("authorization")));
    // The connection a tool's request leaves is parked and taken again by its next one.
    assert_eq!(up.connection_count(), 2);
    p.shutdown().await;
}

/// An upstream that answers `Bearer t1` with a 401 whose chunked body is far larger than
/// anything buffered on the way, and any other token with `200 ok`; records each token.
async fn rejecting_upstream() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = s2.clone();
            tokio::spawn(async move {
                while let Some(head) = try_read_head(&mut s).await {
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let auth = head.lines().find_map(|l| l.strip_prefix("authorization: ")).unwrap_or("").to_string();
                    seen.lock().unwrap().push(auth.clone());
                    let reply = if auth == "bearer t1" {
                        let chunk = format!("{:x}\r\n{}\r\n", 16384, "x".repeat(16384));
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
                            chunk.repeat(64)
                        )
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
                    };
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_retry_after_401_does_not_wait_on_the_unread_401() {
    let (port, seen) = rejecting_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let helper = write_file(
        &dir,
        "helper.sh",
        &format!(
            "#!/bin/sh\nf={}/count\nn=$(( $(cat $f 2>/dev/null || echo 0) + 1 ))\necho $n > $f\necho \"{{\\\"token\\\": \\\"t$n\\\", \\\"expires_in\\\": 600}}\"\n",
            dir.path().display()
        ),
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let policy = format!(
        "version: 1\nlimits: {{ response_header_timeout: 10s }}\ntools:\n  api:\n    upstream: http://127.0.0.1:{port}\n    credential: {{ source: exec, command: [\"{}\"] }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true }}]\n",
        helper.display()
    );
    let p = Proxy::start_in(dir, &policy).await;
    p.wait_ready().await;
    let mut agent = TcpStream::connect(p.addr).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(8), request_on(&mut agent, "/api/x"))
        .await
        .expect("the retry answered before response_header_timeout");
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(*seen.lock().unwrap(), ["bearer t1", "bearer t2"]);
    p.shutdown().await;
}
