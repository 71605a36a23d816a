//! OAuth 2.0 sources against a fault-injecting token endpoint on loopback: client
//! authentication, the form each grant sends, every failure mode reported by its reason, and
//! revocation. (The certified server, oidc-provider, is in tests/oidc.rs.)

mod common;

use std::time::Duration;

use common::authority::{dead_port, Authority, Mode};
use common::*;

fn cc(url: &str, more: &str) -> String {
    format!(
        "{{ source: oauth2_client_credentials, token_url: \"{url}\", client_id: agent, client_secret_file: \"{{dir}}/secret\", timeout: 1s{more} }}"
    )
}

async fn until_valid(p: &Proxy) {
    eventually(async || p.credential("api").await["state"] == "valid", "a valid credential").await;
}

async fn start(up: &Upstream, cred: &str, secret: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", secret);
    Proxy::start_unready(dir, &api_policy(up.port(), cred)).await
}

#[tokio::test]
async fn client_credentials_with_basic_auth_scopes_audience_and_resources() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    let more = ", scopes: [issues:read, repo], audience: https://api.example, resource: [https://a.example/, https://b.example/]";
    let p = start(&up, &cc(&auth.url(), more), "s3cret\n").await;
    until_valid(&p).await;
    let r = get(p.addr, "/api/x").await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(up.last().headers["authorization"], "Bearer tok-1");
    let t = &auth.requests()[0];
    assert_eq!(t.param("grant_type"), Some("client_credentials"));
    assert_eq!(t.param("scope"), Some("issues:read repo"));
    assert_eq!(t.param("audience"), Some("https://api.example"));
    assert_eq!(t.params("resource"), ["https://a.example/", "https://b.example/"]);
    assert_eq!(t.param("client_secret"), None, "basic auth keeps the secret out of the body");
    // base64("agent:s3cret")
    assert_eq!(t.headers["authorization"], "Basic YWdlbnQ6czNjcmV0");
    let c = p.credential("api").await;
    assert_eq!(c["state"], "valid");
    assert_eq!(c["source"], "oauth2_client_credentials");
    assert!(c["next_refresh_at"].is_string());
    assert!(p.audit().await.contains(r#""event":"credential.issued""#));
}

#[tokio::test]
async fn client_secret_post_and_private_key_jwt() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    let p = start(&up, &cc(&auth.url(), ", client_auth: client_secret_post"), "pw").await;
    until_valid(&p).await;
    let t = &auth.requests()[0];
    assert_eq!((t.param("client_id"), t.param("client_secret")), (Some("agent"), Some("pw")));
    assert!(t.headers.get("authorization").is_none());

    let key = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "key.pem", &key.serialize_pem());
    let auth2 = Authority::start(Mode::Ok).await;
    let cred = format!(
        "{{ source: oauth2_client_credentials, token_url: \"{}\", client_id: agent, client_auth: private_key_jwt, client_key_file: \"{{dir}}/key.pem\", client_key_id: k1 }}",
        auth2.url()
    );
    let p2 = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    until_valid(&p2).await;
    assert_eq!(status(&p2.control_post("/v1/credentials/api/rotate").await), 202);
    eventually(async || auth2.requests().len() >= 2, "a second assertion").await;
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let dk = jsonwebtoken::DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[auth2.url()]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let mut jtis = Vec::new();
    for t in auth2.requests() {
        assert_eq!(t.param("client_assertion_type"), Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"));
        let a = t.param("client_assertion").unwrap();
        let header = jsonwebtoken::decode_header(a).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let d = jsonwebtoken::decode::<serde_json::Value>(a, &dk, &v).expect("assertion verifies");
        assert_eq!(d.claims["iss"], "agent");
        assert_eq!(d.claims["sub"], "agent");
        jtis.push(d.claims["jti"].as_str().unwrap().to_string());
    }
    assert_ne!(jtis[0], jtis[1], "a fresh jti per assertion");
}

/// Each failure mode: reported by its reason in status, metrics and audit; the tool answers 503
/// `credential_unavailable` with `Retry-After`.
#[tokio::test]
async fn every_failure_is_reported_by_its_reason() {
    let up = Upstream::start().await;
    let dead = format!("http://127.0.0.1:{}/token", dead_port().await);
    let cases: Vec<(Option<Mode>, &str)> = vec![
        (None, "unreachable"),
        (Some(Mode::Slow), "timeout"),
        (Some(Mode::Status(500)), "http_5xx"),
        (Some(Mode::RateLimited(2)), "rate_limited"),
        (Some(Mode::Malformed), "invalid_response"),
        (Some(Mode::ExpiresIn(Some("0"))), "invalid_response"),
        (Some(Mode::ExpiresIn(Some("-30"))), "invalid_response"),
        (Some(Mode::Redirect), "invalid_response"),
        (Some(Mode::Status(400)), "invalid_response"),
        // Every RFC 6749 §5.2 and RFC 8693 §2.2.2 code is reported as itself.
        (Some(Mode::OAuthError("invalid_request")), "invalid_request"),
        (Some(Mode::OAuthError("invalid_client")), "invalid_client"),
        (Some(Mode::OAuthError("invalid_grant")), "invalid_grant"),
        (Some(Mode::OAuthError("unauthorized_client")), "unauthorized_client"),
        (Some(Mode::OAuthError("unsupported_grant_type")), "unsupported_grant_type"),
        (Some(Mode::OAuthError("invalid_scope")), "invalid_scope"),
        (Some(Mode::OAuthError("invalid_target")), "invalid_target"),
        (Some(Mode::OAuthError("access_denied")), "access_denied"),
        (Some(Mode::OAuthError("unsupported_token_type")), "unsupported_token_type"),
        // A code no RFC defines cannot mint a metric label.
        (Some(Mode::OAuthError("made_up_code")), "invalid_response"),
    ];
    for (mode, reason) in cases {
        let auth = match &mode {
            Some(m) => Some(Authority::start(m.clone()).await),
            None => None,
        };
        let url = auth.as_ref().map_or(dead.clone(), |a| a.url());
        let p = start(&up, &cc(&url, ""), "pw").await;
        eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), reason).await;
        let c = p.credential("api").await;
        assert!(c["last_error"].as_str().unwrap().starts_with(reason), "{mode:?}: {c}");
        assert_eq!(c["state"], "failing");
        let r = get(p.addr, "/api/x").await;
        assert_error(&r, 503, "credential_unavailable");
        assert!(header(&r, "retry-after").is_some(), "{r}");
        let m = p.metrics().await;
        let label = format!(
            r#"credproxy_credential_refresh_errors_total{{reason="{reason}",source="oauth2_client_credentials",tool="api"}}"#
        );
        assert!(m.contains(&label), "{mode:?}: no {label}");
        assert!(p.audit().await.contains(&format!(r#""reason":"{reason}""#)));
        if mode == Some(Mode::Redirect) {
            assert_eq!(auth.as_ref().unwrap().requests().len(), 1, "the redirect was not followed");
        }
        p.shutdown().await;
    }
}

#[tokio::test]
async fn expires_in_as_string_missing_and_huge() {
    let up = Upstream::start().await;
    for (raw, more, expect_secs) in
        [(Some("\"120\""), "", 120u64), (None, ", default_ttl: 7m", 420), (Some("99999999999"), ", max_ttl: 1h", 3600)]
    {
        let auth = Authority::start(Mode::ExpiresIn(raw)).await;
        let p = start(&up, &cc(&auth.url(), more), "pw").await;
        until_valid(&p).await;
        let c = p.credential("api").await;
        let exp = humantime::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
        let left = exp.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
        assert!(left <= expect_secs && left + 5 >= expect_secs, "{raw:?}: expires in {left}s, want {expect_secs}s");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_zero_lifetime_never_becomes_a_hot_loop() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::ExpiresIn(Some("0"))).await;
    let p = start(&up, &cc(&auth.url(), ""), "pw").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = auth.requests().len();
    assert!((1..=3).contains(&n), "{n} token requests in 2.5 s");
    p.shutdown().await;
}

#[tokio::test]
async fn an_error_echoing_the_secret_is_reported_by_code_only() {
    let logs = Capture::install();
    let canary = format!("canary-{}", std::process::id());
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::EchoSecret).await;
    let p = start(&up, &cc(&auth.url(), ", client_auth: client_secret_post"), &canary).await;
    eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), "failure").await;
    let c = p.credential("api").await;
    assert!(c["last_error"].as_str().unwrap().starts_with("invalid_client"), "{c}");
    let m = p.metrics().await;
    assert!(m.contains(r#"reason="invalid_client""#));
    let everything = format!("{c}{m}{}{}{}", p.audit().await, get(p.addr, "/api/x").await, logs.text());
    assert!(logs.text().contains("invalid_client"), "logs were captured");
    assert!(!everything.contains(&canary), "the echoed secret leaked");
    assert!(
        auth.requests()[0].param("client_secret") == Some(canary.as_str()),
        "the canary was sent, so the check is real"
    );
    // invalid_client is permanent: the next attempt is scheduled at the 60 s cap, not seconds.
    let next = humantime::parse_rfc3339(c["next_refresh_at"].as_str().expect("a scheduled retry")).unwrap();
    let ahead = next.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    assert!(ahead > Duration::from_secs(50) && ahead <= Duration::from_secs(60), "next attempt in {ahead:?}");
    assert_eq!(auth.requests().len(), 1);
}

#[tokio::test]
async fn recovers_by_itself_when_the_authority_returns() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Status(503)).await;
    let p = start(&up, &cc(&auth.url(), ""), "pw").await;
    eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), "failure").await;
    assert_error(&get(p.addr, "/api/x").await, 503, "credential_unavailable");
    auth.set(Mode::Ok);
    // Backoff after one or two failures is at most 1–2 s.
    eventually(async || status(&get(p.addr, "/api/x").await) == 200, "recovery").await;
    assert_eq!(p.credential("api").await["consecutive_failures"], 0);
}

#[tokio::test]
async fn revoke_drops_calls_rfc7009_and_fetches_anew() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    let revoke =
        format!(", revocation_url: \"http://127.0.0.1:{}/revoke\", revoke_on_shutdown: true", auth.addr.port());
    let p = start(&up, &cc(&auth.url(), &revoke), "pw").await;
    until_valid(&p).await;
    let first = p.credential("api").await["credential_id"].clone();
    let r = p.control_post("/v1/credentials/api/revoke").await;
    assert_eq!(status(&r), 202, "{r}");
    eventually(
        async || p.credential("api").await["credential_id"] != first && p.credential("api").await["state"] == "valid",
        "a new token",
    )
    .await;
    let reqs = auth.requests();
    let rev: Vec<_> = reqs.iter().filter(|r| r.path == "/revoke").collect();
    assert_eq!(rev.len(), 1);
    assert_eq!(rev[0].param("token"), Some("tok-1"));
    assert_eq!(rev[0].param("token_type_hint"), Some("access_token"));
    assert!(rev[0].headers.contains_key("authorization"), "the client authenticates to revoke");
    assert!(p.audit().await.contains(r#""reason":"api""#));
    assert_eq!(status(&p.control_post("/v1/credentials/nope/rotate").await), 404);
    // revoke_on_shutdown: the current token (tok-2) is revoked within the shutdown deadline.
    let a = auth.clone();
    p.shutdown().await;
    let rev: Vec<_> = a.requests().into_iter().filter(|r| r.path == "/revoke").collect();
    assert_eq!(rev.len(), 2);
    assert_eq!(rev[1].param("token"), Some("tok-2"));
}

#[tokio::test]
async fn upstream_401_forces_one_refresh_and_retries_a_get_once() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    let p = start(&up, &cc(&auth.url(), ""), "pw").await;
    until_valid(&p).await;
    up.reject_auth.lock().unwrap().push("Bearer tok-1".into());
    let r = get(p.addr, "/api/x").await;
    assert_eq!(status(&r), 200, "the GET was retried with the new token: {r}");
    let auths: Vec<String> =
        up.requests().iter().map(|s| s.headers["authorization"].to_str().unwrap().to_string()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
    // A POST with a body is not retried; and within 10 s a second 401 forces nothing.
    up.reject_auth.lock().unwrap().push("Bearer tok-2".into());
    let post = "POST /api/y HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    let r = raw(p.addr, post.as_bytes()).await;
    assert_eq!(status(&r), 401);
    assert_eq!(auth.requests().len(), 2, "rate-limited: at most one forced refresh per 10 s");
    assert!(p
        .metrics()
        .await
        .contains(r#"credproxy_credential_revocations_total{reason="upstream_401",tool="api"} 1"#));
}

/// The refresh-token grant at `auth`, its token in `{dir}/refresh`.
fn refresh_cred(auth: &Authority) -> String {
    format!(
        "{{ source: oauth2_refresh_token, token_url: \"{}\", client_id: agent, client_secret_file: \"{{dir}}/secret\", refresh_token_file: \"{{dir}}/refresh\" }}",
        auth.url()
    )
}

#[tokio::test]
async fn refresh_token_rotation_is_kept_and_written_back() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    auth.extra.lock().unwrap().insert("refresh_token".into(), "rt-2".into());
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let rt = write_file(&dir, "refresh", "rt-1\n");
    let cred = refresh_cred(&auth);
    let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    until_valid(&p).await;
    assert_eq!(std::fs::read_to_string(&rt).unwrap(), "rt-2");
    auth.extra.lock().unwrap().insert("refresh_token".into(), "rt-3".into());
    p.control_post("/v1/credentials/api/rotate").await;
    eventually(async || auth.requests().len() >= 2, "second refresh").await;
    let sent: Vec<_> = auth.requests().iter().map(|r| r.param("refresh_token").unwrap().to_string()).collect();
    assert_eq!(sent[..2], ["rt-1", "rt-2"]);
    assert_eq!(auth.requests()[0].param("grant_type"), Some("refresh_token"));
}

#[tokio::test]
async fn token_exchange_reads_the_subject_token_each_time_and_checks_the_issued_type() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    let at = "urn:ietf:params:oauth:token-type:access_token";
    auth.extra.lock().unwrap().insert("issued_token_type".into(), at.into());
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let subject = write_file(&dir, "sa-token", "sa-1");
    let cred = format!(
        "{{ source: oauth2_token_exchange, token_url: \"{}\", client_id: agent, client_secret_file: \"{{dir}}/secret\", subject_token_file: \"{{dir}}/sa-token\", audience: tool-a, scopes: [read] }}",
        auth.url()
    );
    let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    until_valid(&p).await;
    std::fs::write(&subject, "sa-2").unwrap();
    p.control_post("/v1/credentials/api/rotate").await;
    eventually(async || auth.requests().len() >= 2, "second exchange").await;
    let r = auth.requests();
    assert_eq!(r[0].param("grant_type"), Some("urn:ietf:params:oauth:grant-type:token-exchange"));
    assert_eq!(r[0].param("subject_token_type"), Some("urn:ietf:params:oauth:token-type:jwt"));
    assert_eq!(r[0].param("requested_token_type"), Some(at));
    assert_eq!((r[0].param("subject_token"), r[1].param("subject_token")), (Some("sa-1"), Some("sa-2")));
    assert_eq!(r[0].param("audience"), Some("tool-a"));
    // An answer without the requested issued_token_type is refused (a second proxy: rotate
    // runs at most once per 10 s per tool).
    auth.extra.lock().unwrap().clear();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    write_file(&dir, "sa-token", "sa-3");
    let q = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    eventually(async || q.credential("api").await["consecutive_failures"].as_u64() >= Some(1), "refusal").await;
    assert!(q.credential("api").await["last_error"].as_str().unwrap().contains("issued_token_type"));
    assert_error(&get(q.addr, "/api/x").await, 503, "credential_unavailable");
    drop(p);
}

/// A refresh token mounted from a Secret (a symlink) is never written through: the rotated one
/// is kept in memory, used for the next refresh, and the operator is told once.
#[tokio::test]
async fn a_rotated_refresh_token_behind_a_symlink_is_kept_in_memory() {
    let logs = Capture::install();
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    auth.extra.lock().unwrap().insert("refresh_token".into(), "rt-2".into());
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let data = write_file(&dir, "secret-data", "rt-1\n");
    std::os::unix::fs::symlink(&data, dir.path().join("refresh")).unwrap();
    let cred = refresh_cred(&auth);
    let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    until_valid(&p).await;
    auth.extra.lock().unwrap().insert("refresh_token".into(), "rt-3".into());
    assert_eq!(status(&p.control_post("/v1/credentials/api/rotate").await), 202);
    eventually(async || auth.requests().len() >= 2, "second refresh").await;
    eventually(async || p.credential("api").await["consecutive_failures"] == 0, "second token").await;
    let sent: Vec<_> = auth.requests().iter().map(|r| r.param("refresh_token").unwrap().to_string()).collect();
    assert_eq!(sent[..2], ["rt-1", "rt-2"], "the rotated token was used from memory");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "rt-1\n", "the mounted file was written through");
    let link = p.dir.path().join("refresh");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let warned = logs.text().matches("kept in memory only").count();
    assert_eq!(warned, 1, "{}", logs.text());
    p.shutdown().await;
}
