//! The canary: a unique secret used in a busy scenario at trace level appears nowhere but at the
//! upstream — not in logs, metrics, error bodies, audit events or the control API.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn the_secret_never_leaks() {
    let capture = Capture::install();

    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    // Characters that percent-encoding and base64 change, so every form can be looked for.
    let canary = format!("canary-{}/+=", rnd.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let forms = leak_forms(&canary);
    let up = Upstream::start().await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", &format!("{canary}\n"));
    let policy = format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log", requests: all }}
tools:
  api:
    upstream: http://127.0.0.1:{port}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true }}]
  down:
    upstream: http://127.0.0.1:1
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: 1, allow_private: true }}]
  basic:
    upstream: http://localhost:{port}
    inject: {{ basic: {{ username: bot }} }}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: localhost, port: {port}, allow_private: true }}]
  query:
    upstream: http://127.0.0.1:{port}/q
    inject: {{ query: {{ param: key }} }}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/q/**"] }}]
"#
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let mut seen = Vec::new();
    for req in [
        "GET /api/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        "GET /basic/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        "GET /query/echo-location?a=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        "GET /down/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        "GET /api/slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        "GET http://denied.example/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n".to_string(),
        format!("GET /api/ok HTTP/1.1\r\nHost: a\r\nX-Fill: {}\r\nConnection: close\r\n\r\n", "f".repeat(65400)),
    ] {
        seen.push(raw(proxy.addr, req.as_bytes()).await);
    }
    assert_eq!(status(&seen[0]), 200);
    assert_eq!(up.requests()[0].headers["authorization"], format!("Bearer {canary}"), "the canary was really used");
    assert!(up.requests()[2].uri.contains(&forms[2]), "the query form was really used: {}", up.requests()[2].uri);
    // Reloads: a valid one, then an invalid one with the secret in a mistyped field.
    proxy.rewrite(&policy.replace("requests: all", "requests: denied"));
    eventually(
        async || metric(&proxy.metrics().await, r#"credproxy_config_reloads_total{result="ok"}"#) == Some(2.0),
        "the valid reload",
    )
    .await;
    proxy.rewrite(&format!("{policy}    required: {canary}\n"));
    for _ in 0..250 {
        if metric(&proxy.metrics().await, "credproxy_config_last_reload_success") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.push(raw(proxy.addr, b"GET /api/again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await);
    seen.push(proxy.control_get("/v1/credentials").await);
    seen.push(proxy.control_get("/v1/policy").await);
    seen.push(proxy.metrics().await);
    seen.push(get(proxy.admin, "/ready").await);
    assert!(
        metric(&seen[seen.len() - 2], "credproxy_config_last_reload_success") == Some(0.0),
        "the bad reload was seen"
    );
    let audit_path = proxy.dir.path().join("audit.log");
    proxy.running.as_ref().unwrap().shared.audit.flush().await;
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    proxy.shutdown().await;

    let logs = capture.text();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "trace logging was on");
    assert!(logs.contains("policy rejected"), "the rejection was logged");
    for form in &forms {
        assert!(!logs.contains(form), "secret in logs as {form}");
        assert!(!audit.contains(form), "secret in audit events as {form}");
        for (i, text) in seen.iter().enumerate() {
            assert!(!text.contains(form), "secret in response {i} as {form}: {text}");
        }
    }
}
