//! The real OAuth 2.0 server: oidc-provider (npm, pinned in tests/oidc/package-lock.json) started
//! on loopback by tests/oidc/server.mjs; stoppable and restartable on the same port and keys.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CLIENT_ID: &str = "credproxy";
/// Holds `:`, `+` and `%`, which RFC 6749 §2.3.1 form-encodes before Basic authentication.
pub const CLIENT_SECRET: &str = "credproxy:s3cret+with%chars";
pub const SUBJECT_TOKEN: &str = "pod-1-service-account-token";

pub struct Oidc {
    pub port: u16,
    keys: PathBuf,
    log: PathBuf,
    ttl: u64,
    child: Option<Child>,
}

fn launcher_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Oidc {
    /// Start with access tokens that live `ttl` seconds; keys are kept in `dir`.
    pub async fn start(dir: &Path, ttl: u64) -> Oidc {
        // A free port can be taken between the probe and node's bind: try a few.
        for _ in 0..3 {
            let port = super::authority::dead_port().await;
            let mut o = Oidc { port, keys: dir.join("oidc-keys.json"), log: dir.join("oidc.log"), ttl, child: None };
            if o.try_start().await {
                return o;
            }
        }
        panic!("oidc-provider did not start:\n{}", std::fs::read_to_string(dir.join("oidc.log")).unwrap_or_default());
    }

    /// (Re)start on the same port with the same keys.
    pub async fn restart(&mut self) {
        assert!(
            self.try_start().await,
            "oidc-provider did not restart:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    async fn try_start(&mut self) -> bool {
        let dir = launcher_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run scripts/test (it runs `npm ci` in tests/oidc)"
        );
        let node = std::env::var("CREDPROXY_NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg(dir.join("server.mjs"))
            .args(["--port", &self.port.to_string(), "--ttl", &self.ttl.to_string(), "--keys"])
            .arg(&self.keys)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {node} (Node.js is needed for the OAuth tests): {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.trim() == "listening" {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// The `private_key_jwt` client's PKCS#8 key (written by the server on first start).
    pub fn client_key(&self) -> PathBuf {
        let mut p = self.keys.clone().into_os_string();
        p.push(".client.pem");
        PathBuf::from(p)
    }

    /// Stop the server (connections are then refused).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The signing key the server publishes in its JWKS under `kid`.
    pub async fn jwks_key(&self, kid: &str) -> jsonwebtoken::DecodingKey {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let body = http_get(&self.url("/jwks")).await;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).unwrap();
        let jwk = set.find(kid).unwrap_or_else(|| panic!("no {kid} in the JWKS"));
        jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap()
    }

    /// The same key as an uncompressed P-256 point (for `credproxy::demo::tool_api`).
    pub async fn jwks_point(&self, kid: &str) -> Vec<u8> {
        use base64::Engine;
        let body = http_get(&self.url("/jwks")).await;
        let set: serde_json::Value = serde_json::from_str(&body).unwrap();
        let k = set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap();
        let d = |f: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k[f].as_str().unwrap()).unwrap();
        [vec![4u8], d("x"), d("y")].concat()
    }

    /// RFC 7662 introspection as the `upstream` client.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        introspect(self.port, token).await
    }
}

/// RFC 7662 introspection at the server on `port`, as the `upstream` client.
pub async fn introspect(port: u16, token: &str) -> serde_json::Value {
    let body = form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish();
    let req = format!(
        "POST /token/introspection HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic dXBzdHJlYW06dXBzdHJlYW0tc2VjcmV0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = super::raw(([127, 0, 0, 1], port).into(), req.as_bytes()).await;
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_else(|_| panic!("{resp}"))
}

async fn http_get(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let resp = super::get(addr.parse().unwrap(), uri.path()).await;
    resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}
