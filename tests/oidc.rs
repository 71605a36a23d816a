//! Against a real, certified OAuth 2.0 server (oidc-provider on loopback): rotation under load
//! with 4-second tokens verified by the upstream against the server's JWKS, an authority outage
//! and recovery, resource indicators, an opaque token checked by introspection, RFC 7009
//! revocation, RFC 8693 token exchange, a wrong client secret, and scopes granted beyond the
//! request.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::oidc::{Oidc, CLIENT_ID, CLIENT_SECRET, SUBJECT_TOKEN};
use common::*;

/// What the verifying upstream saw.
#[derive(Default)]
struct Verified {
    accepted: std::sync::atomic::AtomicU64,
    rejected: std::sync::atomic::AtomicU64,
    tokens: Mutex<std::collections::HashSet<String>>,
    /// The `client_id` claim of every accepted token.
    clients: Mutex<Vec<String>>,
}

/// An upstream that verifies every bearer token with an independent JWT library (jsonwebtoken,
/// not credproxy's code): signature against the server's JWKS, issuer, audience, scope, and
/// expiry with zero leeway; 401 otherwise.
async fn verifying_upstream(oidc: &Oidc, audience: &str) -> (u16, Arc<Verified>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = oidc.jwks_key("ec-1").await;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&[oidc.issuer()]);
    v.leeway = 0;
    v.validate_exp = true;
    let seen = Arc::new(Verified::default());
    let s = seen.clone();
    credproxy::demo::serve_http(listener, move |req| {
        let (key, v, s) = (key.clone(), v.clone(), s.clone());
        async move {
            let auth = req.headers().get("authorization").and_then(|h| h.to_str().ok()).unwrap_or("");
            let token = auth.strip_prefix("Bearer ").unwrap_or("");
            let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).ok().map(|d| d.claims);
            let ok = claims.as_ref().is_some_and(|c| c["scope"] == "api:read");
            if ok {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                s.tokens.lock().unwrap().insert(token.to_string());
                let client = claims.as_ref().and_then(|c| c["client_id"].as_str()).unwrap_or("").to_string();
                s.clients.lock().unwrap().push(client);
            } else {
                s.rejected.fetch_add(1, Ordering::SeqCst);
            }
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"verified")));
            *r.status_mut() = if ok { http::StatusCode::OK } else { http::StatusCode::UNAUTHORIZED };
            r
        }
    });
    (port, seen)
}

fn tool(name: &str, up: u16, cred: &str) -> String {
    format!(
        "  {name}:\n    upstream: http://127.0.0.1:{up}/{name}\n    credential: {cred}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, paths: [\"/{name}/**\"], allow_private: true }}]\n"
    )
}

fn client_credentials(oidc: &Oidc, resource: &str, more: &str) -> String {
    format!(
        "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: {CLIENT_ID}, client_secret_file: \"{{dir}}/secret\", scopes: [api:read], resource: [\"{resource}\"]{more} }}",
        oidc.url("/token")
    )
}

/// One agent request; its status and `credproxy-error` code, if any.
async fn call(p: &Proxy, path: &str) -> (u16, Option<String>) {
    let r = get(p.addr, path).await;
    (status(&r), error_code(&r))
}

#[tokio::test]
async fn rotation_under_load_then_an_authority_outage_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", CLIENT_SECRET);
    let mut oidc = Oidc::start(dir.path(), 4).await;
    let (api_port, counts) = verifying_upstream(&oidc, "https://api.test/").await;
    let policy = format!(
        "version: 1\naudit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n{}",
        tool("api", api_port, &client_credentials(&oidc, "https://api.test/", ""))
    );
    let p = Proxy::start_in(dir, &policy).await;

    // 60 s of traffic from 16 concurrent clients (each about 5 requests a second) while
    // 4-second tokens rotate.
    let start = Instant::now();
    let addr = p.addr;
    let clients: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                // The client's pace: a request every 200 ms.
                let mut pace = tokio::time::interval(Duration::from_millis(200));
                while start.elapsed() < Duration::from_secs(60) {
                    pace.tick().await;
                    let r = get(addr, "/api/v1/items").await;
                    match status(&r) {
                        200 => ok += 1,
                        s => failed.push((start.elapsed(), s, error_code(&r))),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0u64, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    let c = &counts;
    let distinct = c.tokens.lock().unwrap().len();
    println!(
        "rotation under load (16 clients): {ok} requests ok, {} failed, {} rejected by the upstream, {distinct} distinct tokens in 60 s",
        failed.len(),
        c.rejected.load(Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok >= 16 * 100, "only {ok} requests in 60 s from 16 clients");
    assert_eq!(c.rejected.load(Ordering::Relaxed), 0, "the upstream rejected a token");
    assert_eq!(c.accepted.load(Ordering::Relaxed), ok);
    assert!(distinct >= 25, "only {distinct} distinct tokens in 60 s of 4-second tokens");

    // The authority goes away: requests succeed until the token's end, then 503 credential_unavailable.
    oidc.stop().await;
    let stopped = Instant::now();
    let mut first_503 = None;
    while stopped.elapsed() < Duration::from_secs(8) {
        match call(&p, "/api/v1/items").await {
            (200, _) => assert!(first_503.is_none(), "a 200 after the slot emptied"),
            (503, Some(code)) if code == "credential_unavailable" => {
                first_503.get_or_insert(stopped.elapsed());
            }
            other => panic!("during the outage: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_503 = first_503.expect("the slot was emptied before the token expired");
    assert!(first_503 <= Duration::from_millis(4200), "served {first_503:?} after the outage began (4 s tokens)");
    let c2 = p.credential("api").await;
    assert_eq!(c2["state"], "expired", "{c2}");
    assert!(c2["last_error"].as_str().unwrap().starts_with("unreachable"), "{c2}");

    // Back again: credproxy recovers by itself.
    oidc.restart().await;
    let restarted = Instant::now();
    let recovered = loop {
        if call(&p, "/api/v1/items").await.0 == 200 {
            break restarted.elapsed();
        }
        assert!(restarted.elapsed() < Duration::from_secs(75), "no recovery within the 60 s backoff cap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "outage: first 503 {first_503:?} after the authority stopped; first success {recovered:?} after it returned"
    );
    assert_eq!(counts.rejected.load(Ordering::Relaxed), 0);

    // The metrics and the audit trail tell the same story.
    let m = p.metrics().await;
    assert!(metric(&m, r#"credproxy_credential_refresh_errors_total{reason="unreachable",source="oauth2_client_credentials",tool="api"}"#).unwrap() >= 1.0);
    assert!(
        metric(
            &m,
            r#"credproxy_credential_refreshes_total{result="ok",source="oauth2_client_credentials",tool="api"}"#
        )
        .unwrap()
            >= 26.0
    );
    assert_eq!(metric(&m, r#"credproxy_credential_valid{tool="api"}"#), Some(1.0));
    assert_eq!(metric(&m, r#"credproxy_credential_refresh_consecutive_failures{tool="api"}"#), Some(0.0));
    assert!(metric(&m, r#"credproxy_requests_total{outcome="credential_unavailable",tool="api"}"#).unwrap() >= 1.0);
    let a = p.audit().await;
    let events: Vec<&str> = a.lines().filter_map(|l| l.split("\"event\":\"").nth(1)?.split('"').next()).collect();
    let failed_at = events.iter().position(|e| *e == "credential.refresh_failed").expect("refresh_failed audited");
    let expired_at = events.iter().position(|e| *e == "credential.expired").expect("expired audited");
    // After an emptied slot the next token is announced as issued again.
    let back_at = events.iter().rposition(|e| *e == "credential.issued").unwrap();
    assert!(failed_at < expired_at && expired_at < back_at, "{events:?}");
    assert!(a.contains(r#""reason":"unreachable""#));
    assert!(!a.contains(CLIENT_SECRET));
    p.shutdown().await;
}

#[tokio::test]
async fn opaque_token_introspection_revocation_exchange_and_a_wrong_secret() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", CLIENT_SECRET);
    write_file(&dir, "wrong", "not-the-secret");
    write_file(&dir, "sa-token", SUBJECT_TOKEN);
    let oidc = Oidc::start(dir.path(), 300).await;
    let up = Upstream::start().await;
    // The opaque tool's upstream checks every bearer token with introspection, as a resource
    // server holding opaque tokens does.
    let checked: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let checker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let checker_port = checker.local_addr().unwrap().port();
    let (oidc_port, log) = (oidc.port, checked.clone());
    credproxy::demo::serve_http(checker, move |req| {
        let log = log.clone();
        async move {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
            let i = common::oidc::introspect(oidc_port, &token).await;
            let ok = i["active"] == true && i["aud"] == "https://opaque.test/" && i["scope"] == "api:read";
            log.lock().unwrap().push((token, ok));
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"checked")));
            *r.status_mut() = if ok { http::StatusCode::OK } else { http::StatusCode::UNAUTHORIZED };
            r
        }
    });
    let revocation = format!(", revocation_url: \"{}\"", oidc.url("/token/revocation"));
    let exchange = format!(
        "{{ source: oauth2_token_exchange, token_url: \"{}\", client_id: {CLIENT_ID}, client_secret_file: \"{{dir}}/secret\", subject_token_file: \"{{dir}}/sa-token\", audience: \"https://api.test/\" }}",
        oidc.url("/token")
    );
    let wrong = format!(
        "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: {CLIENT_ID}, client_secret_file: \"{{dir}}/wrong\" }}",
        oidc.url("/token")
    );
    let policy = format!(
        "version: 1\naudit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n{}{}{}    required: false\n",
        tool("opaque", checker_port, &client_credentials(&oidc, "https://opaque.test/", &revocation)),
        tool("exchange", up.port(), &exchange),
        tool("wrong", up.port(), &wrong),
    );
    let p = Proxy::start_in(dir, &policy).await;
    let bearer =
        |up: &Upstream| up.last().headers["authorization"].to_str().unwrap().trim_start_matches("Bearer ").to_string();

    // An opaque token for a resource indicator: the upstream checks it with introspection.
    assert_eq!(status(&get(p.addr, "/opaque/x").await), 200);
    let (opaque, ok) = checked.lock().unwrap()[0].clone();
    assert!(ok && !opaque.is_empty() && !opaque.contains('.'), "an active opaque token, not a JWT");
    // Revocation: dropped, revoked at the server (introspection says inactive), replaced.
    assert_eq!(status(&p.control_post("/v1/credentials/opaque/revoke").await), 202);
    eventually(
        async || {
            p.credential("opaque").await["state"] == "valid" && {
                get(p.addr, "/opaque/y").await;
                checked.lock().unwrap().last().is_some_and(|(t, ok)| *ok && *t != opaque)
            }
        },
        "a new token the upstream accepts",
    )
    .await;
    assert_eq!(oidc.introspect(&opaque).await["active"], false, "the revoked token is inactive");
    assert!(checked.lock().unwrap().iter().all(|(_, ok)| *ok), "the upstream never saw a revoked token");

    // Token exchange (registered with registerGrantType): the exchanged JWT verifies against the JWKS.
    assert_eq!(status(&get(p.addr, "/exchange/x").await), 200);
    let key = oidc.jwks_key("ec-1").await;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://api.test/"]);
    v.set_issuer(&[oidc.issuer()]);
    v.leeway = 0;
    let claims = jsonwebtoken::decode::<serde_json::Value>(&bearer(&up), &key, &v).unwrap().claims;
    assert_eq!(claims["exchanged_subject"], SUBJECT_TOKEN);
    assert_eq!(p.credential("exchange").await["source"], "oauth2_token_exchange");

    // A wrong client secret: invalid_client in status, metrics and audit; the tool answers 503.
    eventually(async || p.credential("wrong").await["consecutive_failures"].as_u64() >= Some(1), "invalid_client")
        .await;
    let c = p.credential("wrong").await;
    assert!(c["last_error"].as_str().unwrap().starts_with("invalid_client"), "{c}");
    assert!(p.metrics().await.contains(r#"credproxy_credential_refresh_errors_total{reason="invalid_client",source="oauth2_client_credentials",tool="wrong"} 1"#));
    assert!(p.audit().await.contains(r#""reason":"invalid_client""#));
    assert_error(&get(p.addr, "/wrong/x").await, 503, "credential_unavailable");
    p.shutdown().await;
}

/// RFC 6749 §2.3.1 Basic and `client_secret_post` with a secret holding `:`, `+` and `%`, and
/// RFC 7523 `private_key_jwt`, each accepted by the real server; each token verified by an
/// independent JWT library and issued to its own client.
#[tokio::test]
async fn every_client_authentication_method_against_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", CLIENT_SECRET);
    let oidc = Oidc::start(dir.path(), 300).await;
    let (port, seen) = verifying_upstream(&oidc, "https://api.test/").await;
    let cred = |client: &str, auth: &str| {
        format!(
            "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: {client}, {auth}, scopes: [api:read], resource: [\"https://api.test/\"] }}",
            oidc.url("/token")
        )
    };
    let key = oidc.client_key();
    let policy = format!(
        "version: 1\ntools:\n{}{}{}",
        tool("basic", port, &cred(CLIENT_ID, "client_secret_file: \"{dir}/secret\", client_auth: client_secret_basic")),
        tool("post", port, &cred("credproxy-post", "client_secret_file: \"{dir}/secret\", client_auth: client_secret_post")),
        tool(
            "pkjwt",
            port,
            &cred(
                "credproxy-pkjwt",
                &format!("client_auth: private_key_jwt, client_key_file: \"{}\", client_key_alg: ES256, client_key_id: client-1", key.display())
            )
        ),
    );
    let p = Proxy::start_in(dir, &policy).await;
    for (tool, client) in [("basic", CLIENT_ID), ("post", "credproxy-post"), ("pkjwt", "credproxy-pkjwt")] {
        let (s, code) = call(&p, &format!("/{tool}/v1/items")).await;
        assert_eq!((s, code), (200, None), "{tool}: {}", p.credential(tool).await);
        assert_eq!(seen.clients.lock().unwrap().last().map(String::as_str), Some(client), "{tool}");
    }
    assert_eq!(seen.rejected.load(Ordering::SeqCst), 0);
    assert_eq!(seen.tokens.lock().unwrap().len(), 3);
    p.shutdown().await;
}

/// Scope creep against the real server: a client it grants more than asked (its whole
/// registration) raises `credproxy_credential_scope_excess` and one `credential.scope_excess`
/// event naming the extra scopes; a client granted exactly its request does neither. Both
/// export their granted lifetime, and `status --wide` shows the scopes.
#[tokio::test]
async fn scopes_granted_beyond_the_request_are_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", CLIENT_SECRET);
    let oidc = Oidc::start(dir.path(), 600).await;
    let (port, seen) = verifying_upstream(&oidc, "https://api.test/").await;
    let cred = |client: &str| {
        format!(
            "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: {client}, client_secret_file: \"{{dir}}/secret\", scopes: [api:read], resource: [\"https://api.test/\"] }}",
            oidc.url("/token")
        )
    };
    let policy = format!(
        "version: 1\naudit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n{}{}",
        tool("broad", port, &cred("credproxy-broad")),
        tool("exact", port, &cred(CLIENT_ID)),
    );
    let p = Proxy::start_in(dir, &policy).await;
    // The exact token passes the upstream's check (`scope == "api:read"`), which the broad one,
    // carrying more, would fail: it is not sent.
    assert_eq!(call(&p, "/exact/v1/items").await, (200, None));
    assert_eq!((seen.accepted.load(Ordering::SeqCst), seen.rejected.load(Ordering::SeqCst)), (1, 0));
    let m = p.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_credential_scope_excess{tool="broad"}"#), Some(2.0), "{m}");
    assert_eq!(metric(&m, r#"credproxy_credential_scope_excess{tool="exact"}"#), Some(0.0), "{m}");
    for t in ["broad", "exact"] {
        let life = metric(&m, &format!(r#"credproxy_credential_lifetime_seconds{{tool="{t}"}}"#)).unwrap();
        assert!((598.0..=601.0).contains(&life), "{t}: {life}");
    }
    let events = |audit: &str| -> Vec<serde_json::Value> {
        audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "credential.scope_excess")
            .collect()
    };
    let e = events(&p.audit().await);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["tool"], "broad");
    assert_eq!(e[0]["excess"], serde_json::json!(["api:write", "admin"]));
    assert_eq!(e[0]["requested"], serde_json::json!(["api:read"]));
    assert_eq!(e[0]["stated_by"], "response");
    let broad = p.credential("broad").await;
    assert_eq!(broad["scopes"]["granted"], serde_json::json!(["api:read", "api:write", "admin"]));
    assert!(p.credential("exact").await["scopes"]["excess"].as_array().is_some_and(Vec::is_empty));

    // status --wide marks what was not requested.
    // (Async: the control API is served by this test's runtime.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .args(["status", "--wide", "--control", &p.control.to_string()])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = |t: &str| {
        table.lines().find(|l| l.starts_with(&format!("{t} "))).unwrap_or_else(|| panic!("{table}")).to_string()
    };
    assert!(row("broad").contains("api:read +api:write +admin"), "{table}");
    assert!(row("exact").contains(" api:read ") && !row("exact").contains('+'), "{table}");

    // A refresh with the same excess says nothing new.
    let before = p.credential("broad").await["credential_id"].clone();
    assert!(p.control_post("/v1/credentials/broad/rotate").await.starts_with("HTTP/1.1 202"));
    eventually(async || p.credential("broad").await["credential_id"] != before, "the rotated token").await;
    // publish writes any scope_excess event before credential.refreshed: once that is in the
    // log, a second scope_excess would be too.
    eventually(async || p.audit().await.contains(r#""event":"credential.refreshed""#), "credential.refreshed").await;
    assert_eq!(events(&p.audit().await).len(), 1);
    assert_eq!(metric(&p.metrics().await, r#"credproxy_credential_scope_excess{tool="broad"}"#), Some(2.0));
    p.shutdown().await;
}
