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

/// Mode `mode`; tool `api` (credential `{dir}/token`) may GET `/allowed/**` on the upstream.
fn report_policy(up: u16, mode: &str) -> String {
    format!(
        r#"version: 1
mode: {mode}
audit: {{ output: "{{dir}}/audit.log" }}
tools:
  api:
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, methods: [GET], paths: ["/allowed/**"] }}]
"#
    )
}

fn agent_get(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nX-Api-Key: {key}-x\r\n\
         Proxy-Authorization: Basic c3RyYXk=\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The audit events named `event`, parsed.
fn events(audit: &str, event: &str) -> Vec<serde_json::Value> {
    audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

#[tokio::test]
async fn report_mode_forwards_unlisted_requests_untouched_and_enforce_by_reload_denies_them() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "tool-token");
    let proxy = Proxy::start_in(dir, &report_policy(up.port(), "report")).await;
    let host = format!("127.0.0.1:{}", up.port());
    let ready = get(proxy.admin, "/ready").await;
    assert!(status(&ready) == 200 && ready.contains("REPORT MODE"), "{ready}");
    assert_eq!(proxy.credentials().await["mode"], "report");

    // Allowed: handled as in enforce mode (the agent's key replaced by the tool's).
    assert_eq!(status(&raw(proxy.addr, &agent_get(&host, "/allowed/1", "agent-key")).await), 200);
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], "Bearer tool-token");
    assert!(seen.headers.get("x-api-key").is_none());

    // Unlisted path: forwarded with the agent's own credentials as sent.
    let resp = raw(proxy.addr, &agent_get(&host, "/unlisted/2?q=1", "agent-key")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(header(&resp, "credproxy-error"), None);
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", "/unlisted/2?q=1"));
    assert_eq!(seen.headers["authorization"], "Bearer agent-key");
    assert_eq!(seen.headers["x-api-key"], "agent-key-x");
    assert!(seen.headers.get("proxy-authorization").is_none(), "{:?}", seen.headers);
    assert_eq!(up.requests().len(), 2);

    // What credproxy always removes goes in report mode too: its own header, hop-by-hop fields
    // and the fields Connection names.
    let hop = format!(
        "GET http://{host}/unlisted/3 HTTP/1.1\r\nHost: {host}\r\nCredproxy-Tool: api\r\nConnection: close, X-Hop\r\n\
         X-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\n"
    );
    assert_eq!(status(&raw(proxy.addr, hop.as_bytes()).await), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/unlisted/3");
    for gone in ["credproxy-tool", "x-hop", "keep-alive", "proxy-authorization"] {
        assert!(seen.headers.get(gone).is_none(), "{gone} went upstream: {:?}", seen.headers);
    }
    assert_eq!(seen.headers["x-kept"], "1");
    assert_eq!(up.requests().len(), 3);

    // A host no route names stays out of reach on a private address, in report mode too.
    let other = format!("127.0.0.2:{}", up.port());
    assert_error(&raw(proxy.addr, &agent_get(&other, "/x", "agent-key")).await, 403, "route_denied");
    assert_eq!(up.requests().len(), 3);

    let audit = proxy.audit().await;
    let would = events(&audit, "request.would_deny");
    assert_eq!(would.len(), 2, "{audit}");
    assert_eq!(would[0]["reason"], "method_or_path_not_allowed");
    assert_eq!(would[1]["reason"], "not_tools_route", "Credproxy-Tool named a tool whose route does not match");
    assert_eq!(would[0]["message"], "routes name this host, but none allows this method and path");
    assert_eq!((would[0]["path"].as_str(), would[0]["port"].as_u64()), (Some("/unlisted/2"), Some(up.port().into())));
    let denied = events(&audit, "request.denied");
    assert_eq!(denied.len(), 1, "{audit}");
    assert_eq!(
        (denied[0]["reason"].as_str(), denied[0]["host"].as_str()),
        (Some("private_address"), Some("127.0.0.2"))
    );
    // Report mode audits every request, as audit.requests: all.
    assert_eq!(events(&audit, "request.forwarded").len(), 1, "{audit}");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="would_deny",tool=""}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="would_deny",tool="api"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="injected",tool="api"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_mode{mode="report"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_mode{mode="enforce"}"#), Some(0.0), "{m}");

    // Enforce by reload: the same request is denied and never reaches the upstream.
    proxy.rewrite(&report_policy(up.port(), "enforce"));
    eventually(
        async || metric(&proxy.metrics().await, r#"credproxy_mode{mode="enforce"}"#) == Some(1.0),
        "enforce mode",
    )
    .await;
    assert_error(&raw(proxy.addr, &agent_get(&host, "/unlisted/2", "agent-key")).await, 403, "route_denied");
    assert_error(&raw(proxy.addr, &agent_get(&other, "/x", "agent-key")).await, 403, "route_denied");
    assert_eq!(up.requests().len(), 3);
    assert_eq!(get(proxy.admin, "/ready").await.split("\r\n\r\n").nth(1), Some("ready\n"));
    let audit = proxy.audit().await;
    let changed = events(&audit, "config.mode_changed");
    assert_eq!(changed.len(), 1, "{audit}");
    assert_eq!((changed[0]["from"].as_str(), changed[0]["to"].as_str()), (Some("report"), Some("enforce")));
    assert_eq!(events(&audit, "request.would_deny").len(), 2, "no new would_deny after enforce");
    let m = proxy.metrics().await;
    // The private address refused in report mode, then both requests in enforce mode.
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="denied",tool=""}"#), Some(3.0), "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn report_mode_tunnels_a_connect_it_would_deny_and_records_host_and_port_only() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "tool-token");
    // Without interception, a CONNECT to a credentialed host is denied in enforce mode.
    let policy = format!(
        "version: 1\nmode: report\naudit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n  api:\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {}, allow_private: true }}]\n",
        up.port()
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let connect = format!("CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\r\n", up.port());
    s.write_all(connect.as_bytes()).await.unwrap();
    let head = String::from_utf8(read_head(&mut s).await).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(
        b"GET /inside HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer agent-key\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let inner = String::from_utf8(read_head(&mut s).await).unwrap();
    assert!(inner.starts_with("HTTP/1.1 200"), "{inner}");
    assert_eq!(up.last().headers["authorization"], "Bearer agent-key", "bytes relayed untouched");
    drop(s);
    let audit = proxy.audit().await;
    let would = events(&audit, "request.would_deny");
    assert_eq!(would.len(), 1, "{audit}");
    assert_eq!(would[0]["method"], "CONNECT");
    assert_eq!(would[0]["reason"], "connect_needs_interception");
    assert_eq!((would[0]["host"].as_str(), would[0]["port"].as_u64()), (Some("127.0.0.1"), Some(up.port().into())));
    assert!(would[0].get("path").is_none(), "{}", would[0]);
    // A CONNECT to a host no route names, on a private address: refused in report mode too.
    let refused =
        raw(proxy.addr, format!("CONNECT 127.0.0.3:{0} HTTP/1.1\r\nHost: 127.0.0.3:{0}\r\n\r\n", up.port()).as_bytes())
            .await;
    assert_error(&refused, 403, "route_denied");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="would_deny",tool=""}"#), Some(1.0), "{m}");
    proxy.shutdown().await;
}

/// Tool `api` may GET `/allowed/**`; every request is audited; `key` names the fingerprint key
/// file line (or nothing).
fn fingerprint_policy(up: u16, mode: &str, key: &str) -> String {
    format!(
        r#"version: 1
mode: {mode}
audit: {{ output: "{{dir}}/audit.log", requests: all, credential_query_params: [api_key], credential_cookies: [session]{key} }}
tools:
  api:
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, methods: [GET], paths: ["/allowed/**"] }}]
"#
    )
}

fn with_creds(up: u16, method: &str, path: &str, headers: &str) -> Vec<u8> {
    format!(
        "{method} http://127.0.0.1:{up}{path} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n{headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// (in, name, fingerprint) of one credential an agent sent.
type Sent = (String, String, String);

/// (event, what the agent sent) of every request event.
fn agent_credentials(audit: &str) -> Vec<(String, Vec<Sent>)> {
    audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"].as_str().unwrap().starts_with("request."))
        .map(|v| {
            let creds = v["agent_credentials"].as_array().unwrap_or_else(|| panic!("no agent_credentials: {v}"));
            let s = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap().to_string();
            (s(&v, "event"), creds.iter().map(|c| (s(c, "in"), s(c, "name"), s(c, "fingerprint"))).collect())
        })
        .collect()
}

#[tokio::test]
async fn agent_credentials_are_named_by_keyed_fingerprint_in_every_request_event() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "tool-token");
    write_file(&dir, "fp.key", "a-fleet-wide-fingerprint-key-0001\n");
    let key = r#", fingerprint_key_file: "{dir}/fp.key""#;
    let proxy = Proxy::start_in(dir, &fingerprint_policy(up.port(), "report", key)).await;
    let p = up.port();
    let (a, b) = ("Authorization: Bearer sk-agent-AAAA\r\n", "Authorization: Bearer sk-agent-BBBB\r\n");
    // Allowed (forwarded), would-deny, the same key as X-Api-Key, key B, a query key and a cookie.
    assert_eq!(status(&raw(proxy.addr, &with_creds(p, "GET", "/allowed/1", a)).await), 200);
    assert_eq!(status(&raw(proxy.addr, &with_creds(p, "POST", "/other", a)).await), 200);
    assert_eq!(status(&raw(proxy.addr, &with_creds(p, "GET", "/other", "X-Api-Key: sk-agent-AAAA\r\n")).await), 200);
    assert_eq!(status(&raw(proxy.addr, &with_creds(p, "GET", "/allowed/2", b)).await), 200);
    let q = with_creds(p, "GET", "/other?api_key=sk-agent-BBBB&x=1", "Cookie: theme=dark; session=sess-CCCC\r\n");
    assert_eq!(status(&raw(proxy.addr, &q).await), 200);
    // Enforce: a denied request's event names the key too.
    proxy.rewrite(&fingerprint_policy(p, "enforce", key));
    eventually(async || metric(&proxy.metrics().await, r#"credproxy_mode{mode="enforce"}"#) == Some(1.0), "enforce")
        .await;
    assert_error(&raw(proxy.addr, &with_creds(p, "DELETE", "/allowed/1", b)).await, 403, "route_denied");

    let audit = proxy.audit().await;
    for secret in ["sk-agent-AAAA", "sk-agent-BBBB", "sess-CCCC", "tool-token"] {
        assert!(!audit.contains(secret), "{secret} in the audit log");
    }
    let events = agent_credentials(&audit);
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "request.forwarded",
            "request.would_deny",
            "request.would_deny",
            "request.forwarded",
            "request.would_deny",
            "request.denied"
        ]
    );
    let fp = |i: usize, j: usize| events[i].1[j].2.clone();
    let fa = fp(0, 0);
    let fb = fp(3, 0);
    assert!(fa.starts_with("hmac:") && fa.len() == 17, "{fa}");
    assert_ne!(fa, fb, "two keys, two fingerprints");
    assert_eq!(events[0].1, vec![("header".into(), "authorization".into(), fa.clone())]);
    assert_eq!(events[1].1, vec![("header".into(), "authorization".into(), fa.clone())]);
    assert_eq!(events[2].1, vec![("header".into(), "x-api-key".into(), fa.clone())], "same key, any field");
    assert_eq!(events[4].1[1], ("query".into(), "api_key".into(), fb.clone()));
    let keyed = credproxy::digest::Keyed::new(b"a-fleet-wide-fingerprint-key-0001");
    assert_eq!(fa, keyed.fingerprint(b"sk-agent-AAAA"), "keyed by the file's key (its newline aside)");
    assert_eq!(events[4].1[0], ("cookie".into(), "session".into(), keyed.fingerprint(b"sess-CCCC")));
    assert_eq!(events[4].1.len(), 2, "theme is not a credential cookie");
    assert_eq!(events[5].1, vec![("header".into(), "authorization".into(), fb.clone())]);
    // Tool and route on every event: the route index where a route allowed it.
    let parsed: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"].as_str().unwrap().starts_with("request."))
        .collect();
    assert_eq!((parsed[0]["tool"].as_str(), parsed[0]["route"].as_u64()), (Some("api"), Some(0)));
    assert!(parsed[1]["route"].is_null() && parsed[1].get("route").is_some(), "{}", parsed[1]);
    proxy.shutdown().await;

    // A second pod with the same key file gives key A the same fingerprint; a pod without
    // one (a random key) gives another.
    for (key_line, same) in [(key, true), ("", false)] {
        let dir = tempfile::tempdir().unwrap();
        write_file(&dir, "token", "tool-token");
        write_file(&dir, "fp.key", "a-fleet-wide-fingerprint-key-0001\n");
        let other = Proxy::start_in(dir, &fingerprint_policy(p, "enforce", key_line)).await;
        assert_eq!(status(&raw(other.addr, &with_creds(p, "GET", "/allowed/3", a)).await), 200);
        let events = agent_credentials(&other.audit().await);
        assert_eq!(events[0].1[0].2 == fa, same, "{events:?}");
        other.shutdown().await;
    }
}

/// A would-deny request whose upstream reads it and hangs up is still recorded, with the error:
/// it went out, body and all.
#[tokio::test]
async fn report_mode_records_a_would_deny_request_whose_upstream_fails() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = listener.local_addr().unwrap().port();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // Read the head and the 4-byte body, then close without answering.
        while !buf.ends_with(b"data") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = got_tx.send(buf);
        let _ = s.shutdown().await;
    });
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "tool-token");
    let proxy = Proxy::start_in(dir, &report_policy(p, "report")).await;
    let req = format!(
        "POST http://127.0.0.1:{p}/upload HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nAuthorization: Bearer agent-key\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndata"
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(status(&resp), 502, "{resp}");
    let code = error_code(&resp).expect("credproxy's own error");
    let sent = String::from_utf8(got_rx.await.unwrap()).unwrap();
    assert!(
        sent.starts_with("POST /upload HTTP/1.1\r\n") && sent.contains("authorization: Bearer agent-key"),
        "{sent}"
    );
    let audit = proxy.audit().await;
    let would = events(&audit, "request.would_deny");
    assert_eq!(would.len(), 1, "{audit}");
    assert_eq!((would[0]["path"].as_str(), would[0]["error"].as_str()), (Some("/upload"), Some(code.as_str())));
    assert!(events(&audit, "request.denied").is_empty(), "{audit}");
    proxy.shutdown().await;
}
