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
