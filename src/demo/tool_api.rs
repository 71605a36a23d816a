//! The demo's tool API: verifies every bearer token it receives (signature, issuer, audience,
//! scope, expiry with zero leeway) and counts what it accepted and rejected, per tool.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

/// Serve until the process ends; tokens must come from `issuer` and verify with `key` (ES256).
/// One `Counts` per expected tool, in order.
pub fn serve(listener: TcpListener, key: DecodingKey, issuer: &str, expect: Vec<Expect>) -> Arc<Vec<Counts>> {
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
    key: &DecodingKey,
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
    let mut v = Validation::new(Algorithm::ES256);
    v.leeway = 0;
    v.set_audience(&[&e.audience]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    let verified = token.and_then(|t| jsonwebtoken::decode::<serde_json::Value>(t, key, &v).ok().map(|d| (t, d)));
    match verified {
        Some((t, d)) if d.claims["scope"].as_str().is_some_and(|s| s.split(' ').any(|x| x == e.scope.as_str())) => {
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

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}
