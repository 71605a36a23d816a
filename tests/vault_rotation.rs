//! Identity tokens from a real OpenBao rotating under steady traffic, verified by the tool API
//! against OpenBao's published keys with zero leeway; and OpenBao going away and coming back.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bao::*;
use common::*;
use http_body_util::Full;
use serde_json::Value;

/// A tool API that accepts a request only with an identity token OpenBao signed for `github-api`,
/// checked at arrival against the JWKS with zero leeway.
struct Verifier {
    port: u16,
    accepted: AtomicUsize,
    rejected: Mutex<Vec<String>>,
    tokens: Mutex<HashSet<String>>,
    keys: Mutex<Option<jsonwebtoken::jwk::JwkSet>>,
}

async fn jwks(bao_port: u16) -> jsonwebtoken::jwk::JwkSet {
    let resp = get(([127, 0, 0, 1], bao_port).into(), "/v1/identity/oidc/.well-known/keys").await;
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_else(|_| panic!("{resp}"))
}

async fn verify(
    token: &str,
    bao_port: u16,
    issuer: &str,
    keys: &Mutex<Option<jsonwebtoken::jwk::JwkSet>>,
) -> Result<(), String> {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let kid = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?.kid.ok_or("no kid")?;
    // The key set is fetched again only for a key it does not hold.
    let cached = keys.lock().unwrap().clone().filter(|s| s.find(&kid).is_some());
    let set = match cached {
        Some(s) => s,
        None => {
            let s = jwks(bao_port).await;
            *keys.lock().unwrap() = Some(s.clone());
            s
        }
    };
    let jwk = set.find(&kid).ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.leeway = 0;
    v.set_audience(&["github-api"]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|_| ()).map_err(|e| e.to_string())
}

async fn start_verifier(bao_port: u16) -> Arc<Verifier> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v = Arc::new(Verifier {
        port: listener.local_addr().unwrap().port(),
        accepted: AtomicUsize::new(0),
        rejected: Mutex::default(),
        tokens: Mutex::default(),
        keys: Mutex::default(),
    });
    let issuer = format!("http://127.0.0.1:{bao_port}/v1/identity/oidc");
    let shared = v.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (v, issuer) = (shared.clone(), issuer.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (v, issuer) = (v.clone(), issuer.clone());
                    async move {
                        let auth = req.headers().get("authorization").and_then(|h| h.to_str().ok()).unwrap_or("");
                        let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
                        let status = match verify(&token, bao_port, &issuer, &v.keys).await {
                            Ok(()) => {
                                v.accepted.fetch_add(1, Ordering::SeqCst);
                                v.tokens.lock().unwrap().insert(token);
                                200
                            }
                            Err(e) => {
                                v.rejected.lock().unwrap().push(e);
                                401
                            }
                        };
                        let resp =
                            http::Response::builder().status(status).body(Full::new(bytes::Bytes::new())).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    v
}

#[tokio::test]
async fn identity_tokens_rotate_under_steady_traffic_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "10s").await;
    let api = start_verifier(bao.port).await;
    let d = tempfile::tempdir().unwrap();
    let jwt = write_file(&d, "sa-token", &key.sign(ISSUER, "system:serviceaccount:agents:pod-a", AUDIENCE));
    let policy =
        vault_policy(api.port, &bao.addr(), &jwt_login(jwt.to_str().unwrap()), "identity/oidc/token/github-tool", "");
    let p = Arc::new(Proxy::start_in(d, &policy).await);
    // 16 clients for 25 s: two and a half token lifetimes, so at least four rotations.
    let until = Instant::now() + Duration::from_secs(25);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let p = p.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while Instant::now() < until {
                let resp = get(p.addr, "/api/repos").await;
                if status(&resp) == 200 {
                    ok += 1;
                } else {
                    failed.push(resp);
                }
            }
            (ok, failed)
        }));
    }
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {:?}", &failed[..failed.len().min(3)]);
        assert!(ok > 0, "every client was served");
        total += ok;
    }
    let rejected = api.rejected.lock().unwrap().clone();
    assert!(rejected.is_empty(), "the tool API refused tokens: {rejected:?}");
    assert_eq!(api.accepted.load(Ordering::SeqCst), total);
    let distinct = api.tokens.lock().unwrap().len();
    assert!(distinct >= 4, "{distinct} tokens over 25 s of 10 s tokens");
    let events = audit_events(&p).await;
    let refreshed = events.iter().filter(|e| e["event"] == "credential.refreshed").count();
    // One more may have come after the clients stopped.
    assert!(refreshed + 1 >= distinct, "every token used was announced: {refreshed} refreshes, {distinct} tokens");
}

#[tokio::test]
async fn openbao_down_serves_the_current_token_to_the_margin_then_503_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "10s").await;
    let up = Upstream::start().await;
    let d = tempfile::tempdir().unwrap();
    let jwt = write_file(&d, "sa-token", &key.sign(ISSUER, "system:serviceaccount:agents:pod-a", AUDIENCE));
    let policy =
        vault_policy(up.port(), &bao.addr(), &jwt_login(jwt.to_str().unwrap()), "identity/oidc/token/github-tool", "");
    let p = Proxy::start_in(d, &policy).await;
    assert_eq!(status(&get(p.addr, "/api/x").await), 200);
    bao.stop().await;
    let seen_before = up.requests().len();
    // Served until the token's end less the margin (a tenth of 10 s), then 503 at once.
    let cred = control(&p).await["credentials"][0].clone();
    let expires = humantime::parse_rfc3339_weak(cred["expires_at"].as_str().unwrap()).unwrap();
    let last = bearer(&up.last());
    let mut first_503 = None;
    eventually_within(
        Duration::from_secs(20),
        async || {
            let resp = get(p.addr, "/api/x").await;
            if status(&resp) == 503 {
                assert_error(&resp, 503, "credential_unavailable");
                assert!(header(&resp, "retry-after").is_some(), "{resp}");
                first_503 = Some(std::time::SystemTime::now());
                return true;
            }
            assert_eq!(status(&resp), 200, "{resp}");
            false
        },
        "503 at the token's margin",
    )
    .await;
    let first_503 = first_503.expect("503 once the token reached its margin");
    // Every request before the first 503 was served: so that 503 must come before the expiry
    // (never an expired token), and not much before the margin (a tenth of 10 s).
    let early = expires.duration_since(first_503).expect("a 503 before the token's expiry, not after");
    assert!(early <= Duration::from_millis(1500), "the token served until its margin (503 came {early:?} early)");
    let during: Vec<String> = up.requests()[seen_before..].iter().map(bearer).collect();
    assert!(!during.is_empty() && during.iter().all(|t| *t == last), "the current token served while OpenBao was down");
    eventually(async || control(&p).await["credentials"][0]["state"] == "expired", "the state to say expired").await;

    // OpenBao back (empty: configured anew), and the proxy recovers by itself.
    bao.restart().await;
    configure_jwt(&bao, &key, "10s").await;
    let back = Instant::now();
    let mut recovered = false;
    eventually_within(
        Duration::from_secs(90),
        async || {
            recovered = status(&get(p.addr, "/api/x").await) == 200;
            recovered
        },
        "service again without a restart",
    )
    .await;
    assert!(recovered, "served again without a restart");
    assert_ne!(bearer(&up.last()), last, "a token from the new OpenBao");
    eprintln!("recovered {:?} after OpenBao came back", back.elapsed());
}
