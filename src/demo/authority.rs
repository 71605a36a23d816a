//! The demo's token authority: OAuth 2.0 client credentials (client_secret_basic) issuing ES256
//! JWTs that live 10 s, with the requested `audience` and `scope`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;
use tokio::net::TcpListener;

/// Lifetime of every token the demo authority issues.
pub const TOKEN_TTL_SECS: u64 = 10;
/// The issuer claim.
pub const ISSUER: &str = "credproxy-demo-authority";

/// A P-256 signing key and its public half as a verification key.
pub struct Keys {
    /// Signs tokens (PKCS#8).
    pub signing: PrivateKeyDer<'static>,
    /// Verifies them: the uncompressed public point.
    pub public: Vec<u8>,
}

/// A fresh key pair (in memory only).
pub fn keys() -> Keys {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key generation");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("a fresh key parses");
    // The public key as an uncompressed point: 0x04 || x || y.
    let public = pair.public_key().as_ref().to_vec();
    Keys { signing: PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into()), public }
}

struct State {
    key: PrivateKeyDer<'static>,
    basic: String,
    issued: Arc<AtomicU64>,
}

/// Serve the authority on `listener` until the task is dropped. Returns the issued-token counter.
pub fn serve(listener: TcpListener, key: PrivateKeyDer<'static>, client_id: &str, secret: &str) -> Arc<AtomicU64> {
    let pair = format!("{client_id}:{secret}");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
    let issued = Arc::new(AtomicU64::new(0));
    let state = Arc::new(State { key, basic, issued: issued.clone() });
    super::serve_http(listener, move |req| {
        let state = state.clone();
        async move { token(&state, req).await }
    });
    issued
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

async fn token(s: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::POST || req.uri().path() != "/token" {
        return reply(StatusCode::NOT_FOUND, json!({"error": "invalid_request"}));
    }
    let authorized = req.headers().get(http::header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == s.basic.as_bytes());
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    if !authorized {
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("client_credentials") {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"}));
    }
    let now = crate::clock::unix(SystemTime::now()).as_secs();
    let claims = json!({
        "iss": ISSUER, "sub": "demo-agent", "aud": get("audience").unwrap_or_default(),
        "scope": get("scope").unwrap_or_default(), "iat": now, "nbf": now, "exp": now + TOKEN_TTL_SECS,
        "jti": crate::creds::jwt::jti(),
    });
    match crate::creds::jwt::sign_der(crate::policy::SignAlg::ES256, &s.key, Some("demo"), &claims) {
        Ok(t) => {
            s.issued.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, json!({"access_token": t, "token_type": "Bearer", "expires_in": TOKEN_TTL_SECS}))
        }
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "server_error"})),
    }
}

/// Where a listener ended up (for messages).
pub fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("a bound listener has an address")
}
