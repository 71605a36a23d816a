//! Least-privilege insight on the request path: route usage metrics, report mode and the
//! fingerprints of the credentials agents send.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

/// Tool `api` with two routes on the upstream: GET under `/a/`, POST `/b`.
fn two_routes(up: u16, second: bool) -> String {
    let b = if second {
        format!(", {{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, methods: [POST], paths: [/b] }}")
    } else {
        String::new()
    };
    format!(
        "version: 1\ntools:\n  api:\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, methods: [GET], paths: [\"/a/**\"] }}{b}]\n"
    )
}

fn absolute(up: u16, method: &str, path: &str) -> Vec<u8> {
    format!("{method} http://127.0.0.1:{up}{path} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn route_metrics_count_each_route_and_forget_removed_ones() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&two_routes(up.port(), true)).await;
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    for path in ["/a/1", "/a/2/x"] {
        assert_eq!(status(&raw(proxy.addr, &absolute(up.port(), "GET", path)).await), 200);
    }
    // Denied: counted on no route.
    assert_error(&raw(proxy.addr, &absolute(up.port(), "DELETE", "/a/1")).await, 403, "route_denied");
    assert_eq!(up.requests().len(), 2);
    let m = proxy.metrics().await;
    let used = |r: &str| metric(&m, &format!(r#"credproxy_route_requests_total{{route="{r}",tool="api"}}"#));
    let last =
        |r: &str| metric(&m, &format!(r#"credproxy_route_last_used_timestamp_seconds{{route="{r}",tool="api"}}"#));
    assert_eq!((used("0"), used("1")), (Some(2.0), Some(0.0)), "{m}");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let t = last("0").expect("route 0 last used");
    assert!(before - 1.0 <= t && t <= after + 1.0, "{t} not in [{before}, {after}]");
    assert_eq!(last("1"), Some(0.0), "an unused route reads 0: {m}");

    // A reload that drops route 1 drops its series; route 0 keeps counting.
    proxy.rewrite(&two_routes(up.port(), false));
    eventually(
        async || !proxy.metrics().await.contains(r#"credproxy_route_requests_total{route="1""#),
        "route 1's series removed",
    )
    .await;
    assert_eq!(status(&raw(proxy.addr, &absolute(up.port(), "GET", "/a/3")).await), 200);
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_route_requests_total{route="0",tool="api"}"#), Some(3.0), "{m}");
    assert!(!m.contains(r#"credproxy_route_last_used_timestamp_seconds{route="1""#), "{m}");
    proxy.shutdown().await;
}
