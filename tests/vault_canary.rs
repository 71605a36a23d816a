//! The canary sweep for the vault source: a Vault token, an AppRole secret id, a KV value, a
//! database password and a PKI key, used in a busy scenario at trace level, appear nowhere but
//! at the upstream — not in logs, metrics, error bodies, audit events, the control API or status.

mod common;

use common::bao::*;
use common::pg::Pg;
use common::*;
use serde_json::json;

fn canary(what: &str) -> String {
    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    format!("{what}-{}", rnd.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[tokio::test]
async fn vault_secrets_never_leak() {
    let capture = Capture::install();
    let (token_canary, secret_id_canary, kv_canary, wrong_secret_id) =
        (canary("vault-token"), canary("secret-id"), canary("kv-value"), canary("wrong-secret-id"));
    let pg = Pg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    bao.policy("agent", AGENT_POLICY).await;
    bao.enable_auth("approle", "approle").await;
    bao.api("POST", "auth/approle/role/agent", json!({"token_policies": ["agent"], "token_ttl": "1h"})).await;
    let role_id = bao.api("GET", "auth/approle/role/agent/role-id", serde_json::Value::Null).await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    bao.api("POST", "auth/approle/role/agent/custom-secret-id", json!({"secret_id": secret_id_canary})).await;
    bao.api("POST", "auth/token/create", json!({"id": token_canary, "policies": ["agent"], "ttl": "1h"})).await;
    bao.api("POST", "secret/data/agents/openai", json!({"data": {"api_key": kv_canary}})).await;
    configure_database(&bao, &pg, "1m", "10m").await;
    bao.mount("pki", "pki").await;
    bao.api("POST", "pki/root/generate/internal", json!({"common_name": "agents pki", "ttl": "24h", "key_type": "ec"}))
        .await;
    bao.api("POST", "pki/roles/agent", json!({"allow_any_name": true, "key_type": "ec", "max_ttl": "1h"})).await;

    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    write_file(&d, "secret-id", &secret_id_canary);
    write_file(&d, "wrong-secret-id", &wrong_secret_id);
    write_file(&d, "vault-token", &token_canary);
    let approle = |file: &str| {
        format!("{{ method: approle, role: agent, role_id: {role_id}, secret_id_file: \"{{dir}}/{file}\" }}")
    };
    let (addr, port) = (bao.addr(), up.port());
    let tool = |name: &str, credential: String, extra: &str| {
        format!(
            "  {name}:\n    upstream: http://127.0.0.1:{port}/{name}\n    required: false\n    credential: {credential}\n{extra}    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: [\"/{name}/**\"] }}]\n"
        )
    };
    let ca = TestCa::new();
    let tls_up = Upstream::start_tls(ca.server("api.test", false)).await;
    write_file(&d, "ca.pem", &ca.pem());
    let signed = format!(
        "  signed:\n    upstream: https://api.test:{tls}\n    ca_file: \"{{dir}}/ca.pem\"\n    client_certificate: {{ source: vault, addr: \"{addr}\", login: {}, path: pki/issue/agent, common_name: agent.internal, ttl: 1h }}\n    routes: [{{ host: api.test, port: {tls}, allow_private: true }}]\n",
        approle("secret-id"),
        tls = tls_up.port()
    );
    let policy = format!(
        "version: 1\naudit: {{ output: \"{{dir}}/audit.log\", requests: all }}\nresolve: {{ api.test: 127.0.0.1 }}\ntools:\n{signed}{}{}{}",
        tool(
            "kv",
            format!("{{ source: vault, addr: \"{addr}\", login: {}, path: secret/data/agents/openai, field: api_key, refresh_interval: 1s, revoke_on_shutdown: true }}", approle("secret-id")),
            "",
        ),
        tool(
            "db",
            format!("{{ source: vault, addr: \"{addr}\", login: {{ method: token, token_file: \"{{dir}}/vault-token\" }}, path: database/creds/readonly, fields: [username, password], revoke_on_shutdown: true }}"),
            "    inject: { basic: {} }\n",
        ),
        tool(
            "broken",
            format!("{{ source: vault, addr: \"{addr}\", login: {}, path: secret/data/agents/openai, field: api_key }}", approle("wrong-secret-id").replace("role: agent", "role: broken")),
            "",
        ),
    );
    let p = Proxy::start_unready(d, &policy).await;
    eventually(async || p.credential("kv").await["state"] == "valid", "the kv tool").await;
    eventually(async || p.credential("db").await["state"] == "valid", "the db tool").await;
    eventually(async || p.credential("broken").await["consecutive_failures"].as_u64() >= Some(1), "the broken login")
        .await;
    eventually(async || control(&p).await["client_certificates"][0]["state"] == "valid", "the PKI certificate").await;
    let mut seen = Vec::new();
    for path in ["/kv/x", "/db/x", "/broken/x", "/kv/x?key=1", "/signed/x"] {
        seen.push(get(p.addr, path).await);
    }
    assert_eq!(status(&seen[0]), 200);
    assert_eq!(up.requests()[0].headers["authorization"], format!("Bearer {kv_canary}"), "the KV canary was used");
    let db_basic = up.requests()[1].headers["authorization"].to_str().unwrap().to_string();
    let db_password = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(db_basic.strip_prefix("Basic ").unwrap()).unwrap();
        String::from_utf8(raw).unwrap().split_once(':').unwrap().1.to_string()
    };
    assert!(db_password.len() >= 16, "a real database password");
    assert_error(&seen[2], 503, "credential_unavailable");
    assert_eq!(status(&seen[4]), 200, "{}", seen[4]);
    // Rotate and revoke, a renewal-free read of the same version, then the views an operator has.
    assert_eq!(status(&p.control_post("/v1/credentials/db/rotate").await), 202);
    eventually(
        async || audit_events(&p).await.iter().any(|e| e["event"] == "credential.refreshed" && e["tool"] == "db"),
        "the rotation",
    )
    .await;
    seen.push(p.control_get("/v1/credentials").await);
    seen.push(p.control_get("/v1/policy").await);
    seen.push(get(p.admin, "/metrics").await);
    seen.push(get(p.admin, "/ready").await);
    let audit = {
        p.running.as_ref().unwrap().shared.audit.flush().await;
        std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap()
    };
    assert!(audit.contains("client_certificate.issued"), "the PKI certificate was issued");
    p.shutdown().await;
    let logs = capture.text();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "trace logging was on");
    assert!(logs.contains("Vault answered 400"), "the broken login's failure was logged");

    for secret in [&token_canary, &secret_id_canary, &kv_canary, &wrong_secret_id, &db_password] {
        for form in leak_forms(secret) {
            assert!(!logs.contains(&form), "{secret} in logs as {form}");
            assert!(!audit.contains(&form), "{secret} in audit events as {form}");
            for (i, text) in seen.iter().enumerate() {
                // The upstream's echo of what it received is not credproxy's output.
                assert!(!text.contains(&form), "{secret} in response {i} as {form}");
            }
        }
    }
    for text in [&logs, &audit] {
        assert!(!text.contains("PRIVATE KEY"), "a PKI key in logs or audit");
    }
    assert!(!logs.contains(&role_id) && !audit.contains(&role_id), "the role id is never shown");
}
