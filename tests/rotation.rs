//! Rotating credentials inside the running proxy: one stuck authority never holds up another
//! tool, readiness waits only for required tools, a reload re-fetches exactly the credentials
//! whose settings changed, and a reload's `not_before` revokes fleet-wide.

mod common;

use std::time::Duration;

use common::authority::{Authority, Mode};
use common::*;

fn policy(up: u16, a: &Authority, b: &Authority, scope_b: &str) -> String {
    let cred = |auth: &Authority, scope: &str| {
        format!(
            "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: agent, client_secret_file: \"{{dir}}/secret\", scopes: [{scope}], timeout: 30s }}",
            auth.url()
        )
    };
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
tools:
  a:
    upstream: http://127.0.0.1:{up}/a
    credential: {ca}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, paths: ["/a/**"], allow_private: true }}]
  b:
    upstream: http://127.0.0.1:{up}/b
    required: false
    credential: {cb}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, paths: ["/b/**"], allow_private: true }}]
"#,
        ca = cred(a, "read"),
        cb = cred(b, scope_b),
    )
}

#[tokio::test]
async fn a_stuck_authority_holds_up_only_its_own_tool() {
    let up = Upstream::start().await;
    let (a, b) = (Authority::start(Mode::Ok).await, Authority::start(Mode::Slow).await);
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    // `a` is required and gets its token; `b` (not required) hangs on its authority for 30 s.
    let p = Proxy::start_in(dir, &policy(up.port(), &a, &b, "read")).await;
    assert_eq!(status(&get(p.addr, "/a/x").await), 200);
    let r = get(p.addr, "/b/x").await;
    assert_error(&r, 503, "credential_unavailable");
    assert_eq!(p.credential("b").await["state"], "pending");
    assert!(get(p.admin, "/ready").await.starts_with("HTTP/1.1 200"), "b is not required");
    // What the alert rules join on: which tools /ready waits for.
    let m = get(p.admin, "/metrics").await;
    assert_eq!(metric(&m, r#"credproxy_credential_required{tool="a"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_credential_required{tool="b"}"#), Some(0.0), "{m}");
    p.shutdown().await;

    // Swap roles: a required tool whose authority hangs keeps /ready at 503, naming it.
    let (a2, b2) = (Authority::start(Mode::Slow).await, Authority::start(Mode::Ok).await);
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let p = Proxy::start_unready(dir, &policy(up.port(), &a2, &b2, "read")).await;
    eventually(async || status(&get(p.addr, "/b/x").await) == 200, "b served while a hangs").await;
    let ready = get(p.admin, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 503") && ready.contains(r#""waiting_for":["a"]"#), "{ready}");
}

#[tokio::test]
async fn a_reload_refetches_only_changed_credentials_and_not_before_revokes() {
    let up = Upstream::start().await;
    let (a, b) = (Authority::start(Mode::Ok).await, Authority::start(Mode::Ok).await);
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let p = Proxy::start_in(dir, &policy(up.port(), &a, &b, "read")).await;
    eventually(async || p.credential("b").await["state"] == "valid", "b's token").await;
    let (a_id, b_id) =
        (p.credential("a").await["credential_id"].clone(), p.credential("b").await["credential_id"].clone());
    let a_next = p.credential("a").await["next_refresh_at"].clone();

    // Change b's scopes only: b is fetched again with the new scope; a keeps token and schedule.
    p.rewrite(&policy(up.port(), &a, &b, "write"));
    eventually(async || b.requests().len() == 2, "b re-fetched").await;
    assert_eq!(b.requests()[1].param("scope"), Some("write"));
    eventually(async || p.credential("b").await["credential_id"] != b_id, "b's new token").await;
    assert_eq!(a.requests().len(), 1, "a was not fetched again");
    assert_eq!(p.credential("a").await["credential_id"], a_id);
    assert_eq!(p.credential("a").await["next_refresh_at"], a_next);
    let issued_a = |audit: &str| {
        audit.lines().filter(|l| l.contains(r#""event":"credential.issued""#) && l.contains(r#""tool":"a""#)).count()
    };
    assert_eq!(issued_a(&p.audit().await), 1, "a was issued a token once");

    // Only a's refresh timing changes: its credential restarts and fetches anew, and its current
    // token (same authority, same settings) serves throughout — a request loop across the
    // reload never meets a 503.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, flag) = (p.addr, stop.clone());
    let traffic = tokio::spawn(async move {
        let mut codes = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            codes.push(status(&get(addr, "/a/x").await));
        }
        codes
    });
    eventually(async || up.requests().iter().filter(|r| r.uri.starts_with("/a/")).count() >= 3, "traffic").await;
    p.rewrite(&policy(up.port(), &a, &b, "write").replacen("  a:\n", "  a:\n    refresh: { at: 0.6 }\n", 1));
    eventually(async || a.requests().len() == 2, "a re-fetched after its refresh settings changed").await;
    eventually(async || p.credential("a").await["credential_id"] != a_id, "a's new token published").await;
    let before = up.requests().len();
    eventually(async || up.requests().len() >= before + 3, "traffic after the new token").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = traffic.await.unwrap();
    assert!(codes.len() >= 6, "{} requests", codes.len());
    assert!(codes.iter().all(|&c| c == 200), "a request across the reload failed: {codes:?}");

    // Fleet-wide revocation through the policy: not_before = now revokes b's current token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = policy(up.port(), &a, &b, "write")
        .replacen("  a:\n", "  a:\n    refresh: { at: 0.6 }\n", 1)
        .replace("    required: false\n", &format!("    required: false\n    not_before: {now}\n"));
    p.rewrite(&text);
    eventually(async || b.requests().len() == 3, "b fetched after not_before").await;
    eventually(async || p.credential("b").await["state"] == "valid", "b valid again").await;
    let audit = p.audit().await;
    assert!(
        audit.lines().any(|l| l.contains(r#""event":"credential.revoked""#)
            && l.contains(r#""reason":"not_before""#)
            && l.contains(r#""tool":"b""#)),
        "{audit}"
    );
    assert!(p.metrics().await.contains(r#"credproxy_credential_revocations_total{reason="not_before",tool="b"} 1"#));
    assert_eq!(a.requests().len(), 2, "a untouched by the not_before reload");
}
