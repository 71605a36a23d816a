//! The `jwt` and `exec` sources end to end: what the upstream receives verifies, rotates, and
//! every helper failure is reported by its reason.

mod common;

use common::*;

fn bearer(up: &Upstream) -> String {
    up.last().headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_string()
}

#[tokio::test]
async fn jwt_source_signs_verifiable_rotating_tokens_with_each_algorithm() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    for (name, alg, jalg) in [
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256, jsonwebtoken::Algorithm::ES256),
        ("EdDSA", &rcgen::PKCS_ED25519, jsonwebtoken::Algorithm::EdDSA),
        ("RS256", &rcgen::PKCS_RSA_SHA256, jsonwebtoken::Algorithm::RS256),
    ] {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        write_file(&dir, "key.pem", &key.serialize_pem());
        let cred = format!(
            "{{ source: jwt, key_file: \"{{dir}}/key.pem\", algorithm: {name}, kid: k1, issuer: agents.example, subject: pod-1, audience: https://search.internal, scopes: [search:read, x], ttl: 90s }}"
        );
        let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
        eventually(async || status(&get(p.addr, "/api/a").await) == 200, "a signed token").await;
        let first = bearer(&up);
        let pem = key.public_key_pem();
        let dk = match jalg {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()),
            jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jalg);
        v.set_audience(&["https://search.internal"]);
        v.set_issuer(&["agents.example"]);
        v.leeway = 0;
        let d = jsonwebtoken::decode::<serde_json::Value>(&first, &dk, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = jsonwebtoken::decode_header(&first).unwrap();
        assert_eq!((h.kid.as_deref(), h.typ.as_deref()), (Some("k1"), Some("JWT")));
        let c = d.claims;
        assert_eq!((c["sub"].as_str(), c["scope"].as_str()), (Some("pod-1"), Some("search:read x")));
        let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
        assert!((119..=121).contains(&(exp - iat)), "{name}: exp - iat = {}", exp - iat);
        assert_eq!(c["nbf"], c["iat"]);
        // Rotation makes a new token with a new jti.
        p.control_post("/v1/credentials/api/rotate").await;
        eventually(
            async || {
                get(p.addr, "/api/b").await;
                bearer(&up) != first
            },
            "a rotated token",
        )
        .await;
        let second = jsonwebtoken::decode::<serde_json::Value>(&bearer(&up), &dk, &v).unwrap().claims;
        assert_ne!(second["jti"], c["jti"]);
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_jwt_key_that_does_not_parse_is_a_local_error() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "key.pem", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    let cred =
        "{ source: jwt, key_file: \"{dir}/key.pem\", algorithm: ES256, kid: k, issuer: i, subject: s, audience: a }";
    let p = Proxy::start_unready(dir, &api_policy(up.port(), cred)).await;
    eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), "failure").await;
    assert!(p.credential("api").await["last_error"].as_str().unwrap().starts_with("local_error"));
}

fn helper(dir: &tempfile::TempDir, name: &str, script: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = write_file(dir, name, &format!("#!/bin/sh\n{script}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn exec_helper_tokens_and_failures() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("n");
    let ok = helper(
        &dir,
        "ok.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo '{{\"token\": \"exec-'$n'\", \"expires_in\": 600}}'",
            c = counter.display()
        ),
    );
    let p = Proxy::start_unready(
        dir,
        &api_policy(up.port(), &format!("{{ source: exec, command: [\"{ok}\", --tool, api] }}")),
    )
    .await;
    eventually(async || status(&get(p.addr, "/api/a").await) == 200, "a helper token").await;
    assert_eq!(up.last().headers["authorization"], "Bearer exec-1");
    let c = p.credential("api").await;
    assert_eq!(c["source"], "exec");
    p.shutdown().await;

    let cases = [
        ("sleep 5", "timeout"),
        ("echo oops >&2; exit 3", "exec_failed"),
        ("echo not-json", "invalid_response"),
        ("head -c 70000 /dev/zero | tr '\\0' a", "invalid_response"),
        ("echo '{\"token\": \"t\", \"expires_in\": 0}'", "invalid_response"),
    ];
    for (script, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(&dir, "h.sh", script);
        let cred = format!("{{ source: exec, command: [\"{h}\"], timeout: 1s }}");
        let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
        eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), reason).await;
        let c = p.credential("api").await;
        assert!(c["last_error"].as_str().unwrap().starts_with(reason), "{script}: {c}");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn exec_helpers_get_a_cleared_environment_and_their_own_env() {
    // Another tool's `env` secret lives in credproxy's environment; a helper must not see it.
    std::env::set_var("OTHER_TOOL_SECRET", "env-secret-canary");
    std::env::set_var("CREDPROXY_TEST_REGION", "eu-west");
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.out");
    let h = helper(&dir, "h.sh", &format!("env > {}; echo '{{\"token\": \"t\"}}'", out.display()));
    let cred =
        format!("{{ source: exec, command: [\"{h}\"], env: {{ REGION: \"${{CREDPROXY_TEST_REGION}}\", MODE: ro }} }}");
    let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    eventually(async || p.credential("api").await["state"] == "valid", "a helper token").await;
    let env = std::fs::read_to_string(&out).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("REGION"), Some(&"eu-west"));
    assert_eq!(vars.get("MODE"), Some(&"ro"));
    assert_eq!(vars.get("PATH").copied(), std::env::var("PATH").ok().as_deref());
    assert!(!env.contains("env-secret-canary"), "{env}");
    // Nothing else of credproxy's: only what a shell adds itself (PWD, SHLVL, _).
    let allowed = ["PATH", "HOME", "TMPDIR", "REGION", "MODE", "PWD", "OLDPWD", "SHLVL", "_"];
    let extra: Vec<&&str> = vars.keys().filter(|k| !allowed.contains(k)).collect();
    assert!(extra.is_empty(), "the helper inherited {extra:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_helper_is_killed_with_its_children() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let h = helper(&dir, "h.sh", &format!("sleep 60 & echo $$ $! > {}; wait", pids.display()));
    let cred = format!("{{ source: exec, command: [\"{h}\"], timeout: 1s }}");
    let p = Proxy::start_unready(dir, &api_policy(up.port(), &cred)).await;
    eventually(async || p.credential("api").await["consecutive_failures"].as_u64() >= Some(1), "the timeout").await;
    assert!(p.credential("api").await["last_error"].as_str().unwrap().starts_with("timeout"));
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<u32> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{text}");
    // Both the helper and the child it started are gone (not even zombies of ours).
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    };
    eventually(async || pids.iter().all(|&pid| gone(pid)), "the helper and its child killed").await;
    p.shutdown().await;
}
