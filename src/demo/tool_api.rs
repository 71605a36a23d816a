//! The demo's tool API: verifies every bearer token it receives (signature, issuer, audience,
//! scope, expiry with zero leeway) and counts what it accepted and rejected, per tool.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpListener;

/// One tool the API serves: requests under `/{name}/` must carry a token for `audience` with `scope`.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Path prefix and tool name.
    pub name: String,
    /// Required `aud`.
    pub audience: String,
    /// Required scope.
    pub scope: String,
}

impl Expect {
    /// Shorthand.
    pub fn new(name: &str, audience: &str, scope: &str) -> Self {
        Expect { name: name.into(), audience: audience.into(), scope: scope.into() }
    }
}

/// What the API saw.
#[derive(Default)]
pub struct Counts {
    /// Requests with a valid token.
    pub accepted: AtomicU64,
    /// Requests refused (any check failed).
    pub rejected: AtomicU64,
    /// Distinct token fingerprints accepted.
    pub tokens: Mutex<HashSet<String>>,
}

/// Serve until the process ends; tokens must come from `issuer` and verify (ES256) with `key`,
/// an uncompressed P-256 point (`0x04 || x || y`).
/// One `Counts` per expected tool, in order.
pub fn serve(listener: TcpListener, key: Vec<u8>, issuer: &str, expect: Vec<Expect>) -> Arc<Vec<Counts>> {
    let counts: Arc<Vec<Counts>> = Arc::new(expect.iter().map(|_| Counts::default()).collect());
    let state = Arc::new((key, issuer.to_string(), expect, counts.clone()));
    super::serve_http(listener, move |req| {
        let state = state.clone();
        async move {
            let (key, issuer, expect, counts) = &*state;
            check(key, issuer, expect, counts, &req)
        }
    });
    counts
}

fn check(
    key: &[u8],
    issuer: &str,
    expect: &[Expect],
    counts: &[Counts],
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let first = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("");
    let Some(i) = expect.iter().position(|e| e.name == first) else {
        return answer(StatusCode::NOT_FOUND, "no such tool");
    };
    let (e, c) = (&expect[i], &counts[i]);
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let claims = token.and_then(|t| verify_es256(t, key).map(|cl| (t, cl)));
    let now = crate::clock::unix(std::time::SystemTime::now()).as_secs();
    let num = |c: &Value, k: &str| c[k].as_u64();
    let aud_ok = |c: &Value| match &c["aud"] {
        Value::String(a) => *a == e.audience,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&e.audience)),
        _ => false,
    };
    let scope_ok = |c: &Value| c["scope"].as_str().is_some_and(|s| s.split(' ').any(|x| x == e.scope));
    match claims {
        // Zero leeway: a token is valid while now < exp, and not before nbf.
        Some((t, cl))
            if cl["iss"].as_str() == Some(issuer)
                && aud_ok(&cl)
                && scope_ok(&cl)
                && num(&cl, "exp").is_some_and(|exp| now < exp)
                && num(&cl, "nbf").is_none_or(|nbf| nbf <= now) =>
        {
            c.accepted.fetch_add(1, Ordering::Relaxed);
            c.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(crate::creds::fingerprint(t));
            answer(StatusCode::OK, "ok")
        }
        _ => {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            answer(StatusCode::UNAUTHORIZED, "token rejected")
        }
    }
}

/// The claims of an ES256 JWS whose signature verifies with `key`; `None` otherwise.
pub fn verify_es256(token: &str, key: &[u8]) -> Option<Value> {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok();
    let (input, sig) = token.rsplit_once('.')?;
    let (header, payload) = input.split_once('.')?;
    let header: Value = serde_json::from_slice(&b64(header)?).ok()?;
    if header["alg"] != "ES256" {
        return None;
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(input.as_bytes(), &b64(sig)?).ok()?;
    serde_json::from_slice(&b64(payload)?).ok()
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}
