//! The `vault` source against a real OpenBao on loopback: JWT, AppRole and token logins, one
//! Vault token per pod, identity tokens, KV version 2, and failures shown where an operator looks.

mod common;

use std::time::Duration;

use common::bao::*;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn each_pod_logs_in_with_its_own_jwt_and_gets_its_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "5m").await;
    let up = Upstream::start().await;
    let mut proxies = Vec::new();
    for pod in ["pod-a", "pod-b"] {
        let d = tempfile::tempdir().unwrap();
        let jwt =
            write_file(&d, "sa-token", &key.sign(ISSUER, &format!("system:serviceaccount:agents:{pod}"), AUDIENCE));
        let policy = vault_policy(
            up.port(),
            &bao.addr(),
            &jwt_login(jwt.to_str().unwrap()),
            "identity/oidc/token/github-tool",
            "",
        );
        proxies.push(Proxy::start_in(d, &policy).await);
    }
    let mut subjects = Vec::new();
    for p in &proxies {
        let resp = get(p.addr, "/api/repos").await;
        assert_eq!(status(&resp), 200, "{resp}");
        let token = bearer(&up.last());
        let c = claims(&token);
        assert_eq!(c["aud"], "github-api", "the role's audience: {c}");
        assert_eq!(c["iss"], format!("{}/v1/identity/oidc", bao.addr()));
        subjects.push(c["sub"].as_str().unwrap().to_string());
        // The login is listed apart from the tool, and names it.
        let v = control(p).await;
        let login = &v["logins"][0];
        assert_eq!((login["login"].as_str(), login["state"].as_str()), (Some("jwt:jwt/agent"), Some("valid")), "{v}");
        assert_eq!(login["tools"], json!(["api"]));
        assert_eq!(v["credentials"][0]["source"], "vault");
    }
    // Two pods, two Vault identities (entities), two Vault tokens.
    assert_ne!(subjects[0], subjects[1], "each pod's identity token names its own entity");
    let tokens = agent_tokens(&bao).await;
    assert_eq!(tokens.len(), 2, "one Vault token per pod: {tokens:?}");
    assert_ne!(tokens[0]["entity_id"], tokens[1]["entity_id"]);
    let metrics = get(proxies[0].admin, "/metrics").await;
    assert_eq!(metric(&metrics, r#"credproxy_vault_logins_total{login="jwt:jwt/agent",result="ok"}"#), Some(1.0));
    assert_eq!(metric(&metrics, r#"credproxy_vault_login_valid{login="jwt:jwt/agent"}"#), Some(1.0));
}

#[tokio::test]
async fn a_jwt_for_another_audience_fails_login_with_a_clear_reason_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "5m").await;
    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    let jwt = write_file(&d, "sa-token", &key.sign(ISSUER, "system:serviceaccount:agents:pod-a", "not-vault"));
    let policy =
        vault_policy(up.port(), &bao.addr(), &jwt_login(jwt.to_str().unwrap()), "identity/oidc/token/github-tool", "");
    let p = Proxy::start_unready(d, &policy).await;
    let mut v = Value::Null;
    eventually(
        async || {
            v = control(&p).await;
            v["credentials"][0]["state"] != "pending" && v["logins"][0]["state"] == "failed"
        },
        "the login to fail",
    )
    .await;
    let login_error = v["logins"][0]["last_error"].as_str().unwrap().to_string();
    assert!(login_error.starts_with("vault_invalid_request: Vault answered 400"), "{login_error}");
    assert!(login_error.contains("aud"), "Vault's reason is shown: {login_error}");
    // The tool that depends on it shows why.
    let tool_error = v["credentials"][0]["last_error"].as_str().unwrap();
    assert!(tool_error.contains("the Vault login jwt:jwt/agent failed") && tool_error.contains("aud"), "{tool_error}");
    assert_eq!(v["credentials"][0]["state"], "failing");
    let resp = get(p.addr, "/api/repos").await;
    assert_error(&resp, 503, "credential_unavailable");
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    let ready = get(p.admin, "/ready").await;
    assert_eq!(status(&ready), 503, "{ready}");
    assert!(ready.contains("vault login jwt:jwt/agent"), "{ready}");
    let metrics = get(p.admin, "/metrics").await;
    assert!(
        metric(&metrics, r#"credproxy_vault_login_errors_total{login="jwt:jwt/agent",reason="vault_invalid_request"}"#)
            >= Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"credproxy_credential_refresh_errors_total{reason="vault_invalid_request",source="vault",tool="api"}"#
        ) >= Some(1.0),
        "{metrics}"
    );
    let failed = audit_events(&p).await.into_iter().find(|e| e["event"] == "vault.login_failed").expect("audited");
    assert_eq!(
        (failed["login"].as_str(), failed["reason"].as_str()),
        (Some("jwt:jwt/agent"), Some("vault_invalid_request"))
    );
    assert!(agent_tokens(&bao).await.is_empty(), "no Vault token was issued");
}

/// AppRole at `approle` with a role `agent` whose tokens live `ttl` (at most `max_ttl`);
/// returns its role id and a secret id.
async fn configure_approle(bao: &Bao, ttl: &str, max_ttl: &str) -> (String, String) {
    bao.policy("agent", AGENT_POLICY).await;
    bao.enable_auth("approle", "approle").await;
    let role = json!({"token_policies": ["agent"], "token_ttl": ttl, "token_max_ttl": max_ttl});
    bao.api("POST", "auth/approle/role/agent", role).await;
    let role_id = bao.api("GET", "auth/approle/role/agent/role-id", Value::Null).await["data"]["role_id"].clone();
    let secret_id =
        bao.api("POST", "auth/approle/role/agent/secret-id", Value::Null).await["data"]["secret_id"].clone();
    (role_id.as_str().unwrap().to_string(), secret_id.as_str().unwrap().to_string())
}

/// A proxy whose tool `api` injects `api_key` of `secret/data/agents/openai`, read every second
/// with the approle login.
async fn approle_kv_proxy(bao: &Bao, up: &Upstream, role_id: &str, secret_id: &str) -> Proxy {
    let d = tempfile::tempdir().unwrap();
    let sid = write_file(&d, "secret-id", secret_id);
    let login =
        format!("{{ method: approle, role: agent, role_id: {role_id}, secret_id_file: \"{}\" }}", sid.display());
    let fields = "      field: api_key\n      refresh_interval: 1s";
    let policy = vault_policy(up.port(), &bao.addr(), &login, "secret/data/agents/openai", fields);
    Proxy::start_in(d, &policy).await
}

#[tokio::test]
async fn approle_login_reads_kv_and_a_new_version_is_injected_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let (role_id, secret_id) = configure_approle(&bao, "1h", "2h").await;
    let v1 = bao.api("POST", "secret/data/agents/openai", json!({"data": {"api_key": "sk-version-1"}})).await;
    let up = Upstream::start().await;
    let p = approle_kv_proxy(&bao, &up, &role_id, &secret_id).await;
    let resp = get(p.addr, "/api/v1/models").await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(bearer(&up.last()), "sk-version-1");
    let c = &control(&p).await["credentials"][0];
    let created = v1["data"]["created_time"].as_str().unwrap();
    assert_eq!(c["issued_at"].as_str().unwrap()[..19], created[..19], "the age is the version's: {c}");
    assert_eq!(c["expires_at"], Value::Null, "a KV value has no expiry");

    // A new version while traffic flows: in use within the re-read interval (1 s), plus a read.
    bao.api("POST", "secret/data/agents/openai", json!({"data": {"api_key": "sk-version-2"}})).await;
    let written = std::time::Instant::now();
    let mut old_after_switch = 0;
    let mut switched = None;
    // Traffic until the new version has served for 300 ms.
    eventually(
        async || {
            assert_eq!(status(&get(p.addr, "/api/v1/models").await), 200);
            match (bearer(&up.last()).as_str(), switched) {
                ("sk-version-2", None) => switched = Some(written.elapsed()),
                ("sk-version-1", Some(_)) => old_after_switch += 1,
                _ => {}
            }
            switched.is_some_and(|s| written.elapsed() > s + Duration::from_millis(300))
        },
        "the new version in use",
    )
    .await;
    let switched = switched.expect("the new version was injected");
    assert!(switched < Duration::from_secs(3), "new version in use after {switched:?}");
    assert_eq!(old_after_switch, 0, "the old version is not used once the new one is");
    let events = audit_events(&p).await;
    let refreshed: Vec<&Value> = events.iter().filter(|e| e["event"] == "credential.refreshed").collect();
    assert_eq!(refreshed.len(), 1, "one new version, one refresh (re-reads of the same version are quiet)");
    let metrics = get(p.admin, "/metrics").await;
    let label = r#"credproxy_vault_logins_total{login="approle:approle/agent",result="ok"}"#;
    assert_eq!(metric(&metrics, label), Some(1.0), "{metrics}");
    assert!(!metrics.contains(&role_id), "the role id is never shown");
    assert!(!p.control_get("/v1/credentials").await.contains(&role_id), "the role id is never shown");

    // The value deleted in Vault: it is no longer injected.
    bao.api("DELETE", "secret/data/agents/openai", Value::Null).await;
    eventually(async || p.credential("api").await["state"] == "revoked", "the deleted value dropped").await;
    assert_error(&get(p.addr, "/api/v1/models").await, 503, "credential_unavailable");
    let revoked = audit_events(&p).await.into_iter().find(|e| e["event"] == "credential.revoked").expect("audited");
    assert_eq!(revoked["reason"], "vault_not_found");
}

#[tokio::test]
async fn token_login_reads_the_token_file_and_follows_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    bao.policy("agent", AGENT_POLICY).await;
    bao.api("POST", "secret/data/agents/search", json!({"data": {"key": "search-key-1"}})).await;
    let mint = async |ttl: &str| {
        let v = bao
            .api("POST", "auth/token/create", json!({"policies": ["agent"], "ttl": ttl, "meta": {"role": "file"}}))
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_string()
    };
    let first = mint("1h").await;
    let second = mint("2h").await;
    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    let token_file = write_file(&d, "vault-token", &first);
    let login = format!("{{ method: token, token_file: \"{}\" }}", token_file.display());
    let policy = vault_policy(
        up.port(),
        &bao.addr(),
        &login,
        "secret/data/agents/search",
        "      field: key\n      refresh_interval: 1s\n      revoke_on_shutdown: true",
    );
    let p = Proxy::start_in(d, &policy).await;
    assert_eq!(status(&get(p.addr, "/api/q").await), 200);
    assert_eq!(bearer(&up.last()), "search-key-1");
    let v = control(&p).await;
    assert_eq!(v["logins"][0]["login"], "token");
    let first_expiry = v["logins"][0]["expires_at"].as_str().unwrap().to_string();

    // The file gets another token and the first is revoked: the login follows the file.
    std::fs::write(&token_file, &second).unwrap();
    bao.api("POST", "auth/token/revoke", json!({"token": first})).await;
    eventually(
        async || control(&p).await["logins"][0]["expires_at"].as_str().is_some_and(|e| e != first_expiry),
        "the login to take the new token",
    )
    .await;
    bao.api("POST", "secret/data/agents/search", json!({"data": {"key": "search-key-2"}})).await;
    eventually(
        async || {
            assert_eq!(status(&get(p.addr, "/api/q").await), 200);
            bearer(&up.last()) == "search-key-2"
        },
        "reads with the new token",
    )
    .await;
    // Not even at a shutdown that revokes: the token belongs to whoever wrote the file.
    p.shutdown().await;
    assert!(bao.token_alive(&second).await, "a token from a file is never revoked by credproxy");
}

#[tokio::test]
async fn the_vault_token_is_renewed_then_replaced_near_its_max_ttl_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let (role_id, secret_id) = configure_approle(&bao, "4s", "9s").await;
    bao.api("POST", "secret/data/agents/openai", json!({"data": {"api_key": "sk-renewals"}})).await;
    let up = Upstream::start().await;
    let p = approle_kv_proxy(&bao, &up, &role_id, &secret_id).await;
    // Reads go on (every second) across renewals and a second login; no request fails.
    let mut served = 0;
    let mut logins = 0;
    eventually_within(
        Duration::from_secs(30),
        async || {
            let resp = get(p.addr, "/api/v1/models").await;
            assert_eq!(status(&resp), 200, "{resp}");
            served += 1;
            logins = audit_events(&p).await.iter().filter(|e| e["event"] == "vault.login").count();
            logins >= 2
        },
        "a second login",
    )
    .await;
    assert_eq!(logins, 2, "a fresh login before the max TTL");
    let events = audit_events(&p).await;
    let first_login = events.iter().position(|e| e["event"] == "vault.login").unwrap();
    let renewed = events.iter().position(|e| e["event"] == "vault.login_renewed").expect("a renewal (renew-self)");
    assert!(renewed > first_login);
    assert!(!events.iter().any(|e| e["event"] == "vault.login_failed" || e["event"] == "credential.refresh_failed"));
    let metrics = get(p.admin, "/metrics").await;
    let renewals = r#"credproxy_vault_login_renewals_total{login="approle:approle/agent",result="ok"}"#;
    assert!(metric(&metrics, renewals) >= Some(1.0), "{metrics}");
    assert!(served > 10);
}

/// A stand-in for the Kubernetes API's TokenReview (there is no Kubernetes here): it answers
/// `authenticated` for `token` as the ServiceAccount `agents/agent` and records every review.
async fn token_review_api(
    token: String,
    tls: rustls::ServerConfig,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use http_body_util::{BodyExt, Full};
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reviews: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let seen = reviews.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (seen, token, acceptor) = (seen.clone(), token.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tcp) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, token) = (seen.clone(), token.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                        seen.lock().unwrap().push(json!({"path": path, "review": review}));
                        let ok = review["spec"]["token"] == token.as_str();
                        let status = if ok {
                            json!({"authenticated": true, "audiences": review["spec"]["audiences"],
                                   "user": {"username": "system:serviceaccount:agents:agent",
                                   "uid": "0d7a6a2f-1111-2222-3333-444455556666", "groups": ["system:serviceaccounts"]}})
                        } else {
                            json!({"authenticated": false, "error": "invalid token"})
                        };
                        let out =
                            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status});
                        let resp = http::Response::builder()
                            .status(201)
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from(out.to_string())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, reviews)
}

#[tokio::test]
async fn kubernetes_login_sends_the_service_account_token_to_auth_kubernetes_login() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    bao.policy("agent", AGENT_POLICY).await;
    let key = JwtKey::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sa_token = key.sign_claims(&json!({
        "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:agents:agent",
        "aud": ["vault"], "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "agent", "uid": "0d7a6a2f-1111-2222-3333-444455556666"}}
    }));
    let ca = TestCa::new();
    let (k8s_port, reviews) = token_review_api(sa_token.clone(), ca.server_names(&["127.0.0.1"])).await;
    bao.enable_auth("kubernetes", "kubernetes").await;
    bao.api(
        "POST",
        "auth/kubernetes/config",
        json!({"kubernetes_host": format!("https://127.0.0.1:{k8s_port}"), "kubernetes_ca_cert": ca.pem(),
               "disable_local_ca_jwt": true, "token_reviewer_jwt": "reviewer-token"}),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/role/agent",
        json!({"bound_service_account_names": ["agent"], "bound_service_account_namespaces": ["agents"],
               "token_policies": ["agent"], "token_ttl": "1h"}),
    )
    .await;
    bao.api("POST", "secret/data/agents/search", json!({"data": {"key": "k8s-search-key"}})).await;
    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    let jwt = write_file(&d, "sa-token", &sa_token);
    let login = format!("{{ method: kubernetes, role: agent, jwt_file: \"{}\" }}", jwt.display());
    let policy = vault_policy(up.port(), &bao.addr(), &login, "secret/data/agents/search", "      field: key");
    let p = Proxy::start_unready(d, &policy).await;
    let mut v = Value::Null;
    eventually(
        async || {
            v = control(&p).await;
            v["credentials"][0]["state"] != "pending"
        },
        "the first read",
    )
    .await;
    assert_eq!(v["credentials"][0]["state"], "valid", "{v}");
    assert_eq!(status(&get(p.addr, "/api/q").await), 200);
    assert_eq!(bearer(&up.last()), "k8s-search-key");
    let reviewed = reviews.lock().unwrap().clone();
    assert!(
        reviewed.iter().any(|r| r["path"] == "/apis/authentication.k8s.io/v1/tokenreviews"
            && r["review"]["spec"]["token"] == sa_token.as_str()),
        "OpenBao reviewed the pod's token: {reviewed:?}"
    );
    let v = control(&p).await;
    assert_eq!(
        (v["logins"][0]["login"].as_str(), v["logins"][0]["state"].as_str()),
        (Some("kubernetes:kubernetes/agent"), Some("valid"))
    );
}

#[tokio::test]
async fn tools_with_the_same_login_settings_share_one_login_and_one_token_revoked_only_if_all_ask() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "5m").await;
    bao.api("POST", "secret/data/agents/search", json!({"data": {"key": "shared-login-key"}})).await;
    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    let jwt = write_file(&d, "sa-token", &key.sign(ISSUER, "system:serviceaccount:agents:pod-a", AUDIENCE));
    // `api` asks for revocation at shutdown, `search` does not: the shared token must live on.
    let policy = vault_policy(
        up.port(),
        &bao.addr(),
        &jwt_login(jwt.to_str().unwrap()),
        "identity/oidc/token/github-tool",
        "      revoke_on_shutdown: true",
    );
    let second = format!(
        "  search:\n    upstream: http://127.0.0.1:{port}/search\n    credential: {{ source: vault, addr: \"{addr}\", login: {login}, path: secret/data/agents/search, field: key }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: [\"/search/**\"] }}]\n",
        port = up.port(),
        addr = bao.addr(),
        login = jwt_login(jwt.to_str().unwrap())
    );
    let p = Proxy::start_in(d, &format!("{policy}{second}")).await;
    assert_eq!(status(&get(p.addr, "/api/x").await), 200);
    assert_eq!(claims(&bearer(&up.last()))["aud"], "github-api");
    assert_eq!(status(&get(p.addr, "/search/q").await), 200);
    assert_eq!(bearer(&up.last()), "shared-login-key");
    let v = control(&p).await;
    assert_eq!(v["logins"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["logins"][0]["tools"], json!(["api", "search"]));
    assert_eq!(agent_tokens(&bao).await.len(), 1, "one Vault token for both tools");
    let metrics = get(p.admin, "/metrics").await;
    assert_eq!(metric(&metrics, r#"credproxy_vault_logins_total{login="jwt:jwt/agent",result="ok"}"#), Some(1.0));
    p.shutdown().await;
    assert_eq!(agent_tokens(&bao).await.len(), 1, "not every tool of the login asked: its token is not revoked");
}
