//! A token endpoint that can be told to fail in each way a real one does (down, slow, 5xx, 429,
//! malformed, odd `expires_in`, an error that echoes the client secret), recording every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

/// How the endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// `{"access_token":"tok-N","expires_in":TTL,...}`.
    Ok,
    /// Accept, read the request, never answer.
    Slow,
    /// This status with an HTML body.
    Status(u16),
    /// 429 with `Retry-After: N`.
    RateLimited(u64),
    /// Not JSON.
    Malformed,
    /// `expires_in` set to this raw JSON (`None`: left out).
    ExpiresIn(Option<&'static str>),
    /// 401 `invalid_client` whose description echoes the client secret it was sent.
    EchoSecret,
    /// 302 to another token endpoint.
    Redirect,
    /// An RFC 6749 §5.2 / RFC 8693 error response with this `error` code (401 for
    /// `invalid_client`, else 400).
    OAuthError(&'static str),
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct TokenReq {
    pub path: String,
    pub headers: HeaderMap,
    pub form: Vec<(String, String)>,
}

impl TokenReq {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    pub fn params(&self, k: &str) -> Vec<&str> {
        self.form.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect()
    }
}

#[derive(Clone)]
pub struct Authority {
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<Mode>>,
    pub seen: Arc<Mutex<Vec<TokenReq>>>,
    pub ttl: Arc<AtomicU64>,
    pub issued: Arc<AtomicU64>,
    /// Extra JSON fields merged into a successful answer (`refresh_token`, `issued_token_type`).
    pub extra: Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Authority {
    pub async fn start(mode: Mode) -> Authority {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, seen) = (Arc::new(Mutex::new(mode)), Arc::new(Mutex::new(Vec::new())));
        let (ttl, issued) = (Arc::new(AtomicU64::new(60)), Arc::new(AtomicU64::new(0)));
        let extra = Arc::new(Mutex::new(serde_json::Map::new()));
        let state = (mode.clone(), seen.clone(), ttl.clone(), issued.clone(), extra.clone());
        let task = credproxy::demo::serve_http(listener, move |req| answer(state.clone(), req));
        Authority { addr, mode, seen, ttl, issued, extra, task: Arc::new(task) }
    }

    /// The same endpoint behind TLS with this server configuration.
    pub async fn start_tls(mode: Mode, config: rustls::ServerConfig) -> Authority {
        let a = Authority::start(mode).await;
        a.task.abort();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = (a.mode.clone(), a.seen.clone(), a.ttl.clone(), a.issued.clone(), a.extra.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(state, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Authority {
            addr,
            mode: a.mode.clone(),
            seen: a.seen.clone(),
            ttl: a.ttl.clone(),
            issued: a.issued.clone(),
            extra: a.extra.clone(),
            task: Arc::new(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.addr.port())
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn requests(&self) -> Vec<TokenReq> {
        self.seen.lock().unwrap().clone()
    }

    /// Stop accepting (connections are then refused).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// A loopback port with nothing listening.
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

type State = (
    Arc<Mutex<Mode>>,
    Arc<Mutex<Vec<TokenReq>>>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
);

async fn answer((mode, seen, ttl, issued, extra): State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let secret = form.iter().find(|(k, _)| k == "client_secret").map(|(_, v)| v.clone());
    seen.lock().unwrap().push(TokenReq { path: parts.uri.path().to_string(), headers: parts.headers.clone(), form });
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if parts.uri.path() == "/revoke" {
        return reply(200, String::new());
    }
    let m = mode.lock().unwrap().clone();
    let n = issued.load(Ordering::SeqCst) + 1;
    let ttl = ttl.load(Ordering::SeqCst);
    let ok = |expires: Option<&str>| {
        issued.store(n, Ordering::SeqCst);
        let mut v = serde_json::json!({"access_token": format!("tok-{n}"), "token_type": "Bearer"});
        if let Some(e) = expires {
            v["expires_in"] = serde_json::from_str(e).unwrap();
        }
        for (k, x) in extra.lock().unwrap().iter() {
            v[k] = x.clone();
        }
        reply(200, v.to_string())
    };
    match m {
        Mode::Ok => ok(Some(&ttl.to_string())),
        Mode::ExpiresIn(e) => ok(e),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            reply(200, String::new())
        }
        Mode::Status(s) => reply(s, "<html>upstream trouble</html>".into()),
        Mode::RateLimited(after) => {
            let mut r = reply(429, "{}".into());
            r.headers_mut().insert("retry-after", after.to_string().parse().unwrap());
            r
        }
        Mode::Malformed => reply(200, "{\"access_token\": ".into()),
        Mode::EchoSecret => {
            let basic = parts.headers.get("authorization").map(|v| v.to_str().unwrap_or("").to_string());
            let echoed = secret.or(basic).unwrap_or_default();
            reply(
                401,
                serde_json::json!({"error": "invalid_client", "error_description": format!("bad secret {echoed}")})
                    .to_string(),
            )
        }
        Mode::OAuthError(code) => {
            let status = if code == "invalid_client" { 401 } else { 400 };
            reply(status, serde_json::json!({"error": code, "error_description": "refused"}).to_string())
        }
        Mode::Redirect => {
            let mut r = reply(302, String::new());
            r.headers_mut().insert("location", "http://127.0.0.1:1/token".parse().unwrap());
            r
        }
    }
}

/// A `StatusCode` helper for readability in tests.
pub fn code(s: u16) -> StatusCode {
    StatusCode::from_u16(s).unwrap()
}
