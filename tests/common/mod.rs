//! Test fixtures: a recording upstream on loopback, an in-process proxy, and a raw client.
#![allow(dead_code)]

pub mod authority;
pub mod bao;
pub mod captured;
pub mod injector;
pub mod oidc;
pub mod pg;
pub mod testca;
pub mod venv;
#[allow(unused_imports)]
pub use testca::TestCa;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// Which of the upstream's connections (in accept order, from 0) carried it.
    pub conn: usize,
}

/// A loopback HTTP upstream that records every request.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections that have ended.
    pub closed: Arc<AtomicUsize>,
    /// `/sse` waits for this before sending its last event.
    pub release: Arc<tokio::sync::Notify>,
    /// Requests whose `Authorization` is listed here get `401`.
    pub reject_auth: Arc<Mutex<Vec<String>>>,
}

type RespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn boxed(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// An upstream behind TLS with this server configuration.
    pub async fn start_tls(config: rustls::ServerConfig) -> Upstream {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            connections: Arc::default(),
            closed: Arc::default(),
            release: Arc::new(tokio::sync::Notify::new()),
            reject_auth: Arc::default(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let conn = u.connections.fetch_add(1, Ordering::SeqCst);
                let u2 = u.clone();
                let tls = tls.clone();
                let closed = u.closed.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let u = u2.clone();
                        async move { Ok::<_, Infallible>(u.respond(req, conn).await) }
                    });
                    let b = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).with_upgrades().await;
                            }
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().last().cloned().expect("the upstream saw a request")
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn respond(&self, mut req: Request<Incoming>, conn: usize) -> Response<RespBody> {
        let path = req.uri().path().to_string();
        let ws_upgrade = (path.ends_with("/ws")).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let (body, trailers) = if ws_upgrade.is_some() {
            (Bytes::new(), None)
        } else {
            let collected = body.collect().await.map(|c| (c.trailers().cloned(), c.to_bytes())).unwrap_or_default();
            (collected.1, collected.0)
        };
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body,
            trailers,
            conn,
        });
        if let Some(on) = ws_upgrade {
            let key = parts.headers.get("sec-websocket-key").cloned().unwrap_or(http::HeaderValue::from_static(""));
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    use futures_util::{SinkExt, StreamExt};
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            let _ = ws.send(msg).await;
                        }
                    }
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(boxed(""))
                .unwrap();
        }
        if path.ends_with("/sse") {
            let release = self.release.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: first\n\n")))).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: last\n\n")))).await;
            });
            let stream = tokio_stream_from(rx);
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if self.reject_auth.lock().unwrap().iter().any(|r| r == auth) {
            return Response::builder().status(StatusCode::UNAUTHORIZED).body(boxed("token revoked")).unwrap();
        }
        if path.ends_with("/redirect") {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", "http://elsewhere.example/")
                .body(boxed(""))
                .unwrap();
        }
        if path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        if path.ends_with("/chat/completions") {
            let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"hello from upstream"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
            return Response::builder().header("content-type", "application/json").body(boxed(body)).unwrap();
        }
        if path.ends_with("/v1/messages") {
            let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[{"type":"text","text":"hello from upstream"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}"#;
            return Response::builder().header("content-type", "application/json").body(boxed(body)).unwrap();
        }
        if path.ends_with("/echo-location") {
            // Hands the URL it was called with back, as servers do in redirects and paging links.
            let url = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            return Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header("location", &url)
                .header("content-location", &url)
                .header("link", format!("<{url}>; rel=\"next\""))
                .header("refresh", format!("0; url={url}"))
                .body(boxed(""))
                .unwrap();
        }
        if path.ends_with("/forge") {
            return Response::builder().header("credproxy-error", "route_denied").body(boxed("forged")).unwrap();
        }
        Response::builder().header("x-upstream", "yes").body(boxed(format!("ok {path}"))).unwrap()
    }
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A proxy started in-process from a policy written to a temp folder.
pub struct Proxy {
    pub running: Option<credproxy::serve::Running>,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub control: credproxy::policy::ControlAddr,
}

impl Proxy {
    /// Start with `policy` (the listen section is added with ephemeral ports).
    /// `{dir}` in the policy is replaced by the temp folder.
    pub async fn start(policy: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, policy).await
    }

    pub async fn start_in(dir: tempfile::TempDir, policy: &str) -> Proxy {
        let p = Self::start_unready(dir, policy).await;
        p.wait_ready().await;
        p
    }

    /// Start without waiting for `/ready` (credentials that are meant to fail).
    pub async fn start_unready(dir: tempfile::TempDir, policy: &str) -> Proxy {
        Self::start_with_clock(dir, policy, credproxy::clock::Clock::system()).await
    }

    /// [`Proxy::start_unready`] on a given clock (tests jump its wall time).
    pub async fn start_with_clock(dir: tempfile::TempDir, policy: &str, clock: credproxy::clock::Clock) -> Proxy {
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, Self::render(&dir, policy)).unwrap();
        let running = credproxy::serve::start_with(policy_path.clone(), Default::default(), clock)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Proxy {
            addr: running.proxy_addr,
            admin: running.admin_addr,
            control: running.control.clone(),
            running: Some(running),
            dir,
            policy_path,
        }
    }

    /// The control API's `GET /v1/credentials`, whole.
    pub async fn credentials(&self) -> serde_json::Value {
        let resp = self.control_get("/v1/credentials").await;
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|_| panic!("control API: {resp}"))
    }

    /// The control API's credential entry for `tool`.
    pub async fn credential(&self, tool: &str) -> serde_json::Value {
        let v = self.credentials().await;
        v["credentials"].as_array().unwrap().iter().find(|c| c["tool"] == tool).cloned().unwrap_or_default()
    }

    /// `POST` to the control API.
    pub async fn control_post(&self, path: &str) -> String {
        let req = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        raw_control(&self.control, req.as_bytes()).await
    }

    /// `GET` from the control API.
    pub async fn control_get(&self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        raw_control(&self.control, req.as_bytes()).await
    }

    pub fn render(dir: &tempfile::TempDir, policy: &str) -> String {
        let policy = policy.replace("{dir}", dir.path().to_str().unwrap());
        if policy.contains("listen:") {
            policy
        } else {
            format!(
                "listen: {{ proxy: 127.0.0.1:0, admin: 127.0.0.1:0, control: \"unix:{}/control.sock\" }}\n{policy}",
                dir.path().display()
            )
        }
    }

    /// Rewrite the policy file (atomically, by rename).
    pub fn rewrite(&self, policy: &str) {
        let tmp = self.dir.path().join(".policy.tmp");
        std::fs::write(&tmp, Self::render(&self.dir, policy)).unwrap();
        std::fs::rename(&tmp, &self.policy_path).unwrap();
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Wait for `/ready`, with the same 10 s budget as [`eventually`].
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if get(self.admin, "/ready").await.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("proxy not ready: {}", get(self.admin, "/ready").await);
    }

    /// The audit log (`{dir}/audit.log`), read after every event emitted so far is written.
    pub async fn audit(&self) -> String {
        self.running.as_ref().expect("running").shared.audit.flush().await;
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await
    }

    /// The `credproxy_connections_active` gauge: agent connections (and their tunnels) open.
    pub async fn connections_active(&self) -> f64 {
        metric(&self.metrics().await, "credproxy_connections_active").expect("the connections gauge")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

/// One tool `api` (not required) at the upstream on `up`, base URL `/api/`, with credential
/// `cred`; audit events go to `{dir}/audit.log`.
pub fn api_policy(up: u16, cred: &str) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
tools:
  api:
    upstream: http://127.0.0.1:{up}
    required: false
    credential: {cred}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]
"#
    )
}

/// Tools `a` (credential from `{dir}/token`) and `b` (none) on the upstream at `up`, base URLs
/// `/a/` and `/b/`, each allowed only its own path prefix.
pub fn two_tools_policy(up: u16) -> String {
    format!(
        "version: 1\ntools:\n  a:\n    upstream: http://127.0.0.1:{up}/a\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, paths: [\"/a/**\"] }}]\n  b:\n    upstream: http://127.0.0.1:{up}/b\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true, paths: [\"/b/**\"] }}]\n"
    )
}

/// Every connection of `up` carried one tool's requests only (the path's first segment).
pub fn assert_one_tool_per_connection(up: &Upstream) {
    let seen = up.requests();
    for conn in 0..up.connection_count() {
        let tools: std::collections::BTreeSet<&str> =
            seen.iter().filter(|s| s.conn == conn).map(|s| &s.uri[..2]).collect();
        assert!(tools.len() <= 1, "connection {conn} carried {tools:?}");
    }
}

/// The certificates in a PEM text.
pub fn pem_certs(text: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(text.as_bytes()).map(|c| c.unwrap()).collect()
}

/// Poll `f` every 20 ms until it holds; panic after 10 s.
pub async fn eventually<F: AsyncFnMut() -> bool>(f: F, what: &str) {
    eventually_within(Duration::from_secs(10), f, what).await
}

/// Poll `f` every 20 ms until it holds; panic after `limit`.
pub async fn eventually_within<F: AsyncFnMut() -> bool>(limit: Duration, mut f: F, what: &str) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Write a file in a temp folder that outlives the call.
pub fn write_file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Send raw bytes, read until the peer closes (or 5 s), return the text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Send raw bytes to the control API (a Unix socket or TCP), read until the peer closes.
pub async fn raw_control(addr: &credproxy::policy::ControlAddr, request: &[u8]) -> String {
    match addr {
        credproxy::policy::ControlAddr::Tcp(a) => raw(*a, request).await,
        credproxy::policy::ControlAddr::Unix(p) => {
            let mut s = tokio::net::UnixStream::connect(p).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            String::from_utf8_lossy(&buf).into_owned()
        }
    }
}

/// Read a response head byte by byte (the bytes after it belong to an upgraded stream).
pub async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    head
}

/// A message head, as [`read_head`] reads it; `None` when the peer closes (or fails) first, as
/// a test server's keep-alive loop ends.
pub async fn try_read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await
}

/// The status code of a raw response.
pub fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A response header's value (first match, any case).
pub fn header(resp: &str, name: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// credproxy's own error code (`credproxy-error`), if the response carries one.
pub fn error_code(resp: &str) -> Option<String> {
    header(resp, "credproxy-error")
}

/// The response is credproxy's own error: this status, this code, and the JSON body naming it.
#[track_caller]
pub fn assert_error(resp: &str, status_code: u16, code: &str) {
    assert_eq!((status(resp), error_code(resp).as_deref()), (status_code, Some(code)), "{resp}");
    assert!(resp.contains(&format!(r#""code":"{code}""#)), "no JSON error body: {resp}");
}

/// The value of a metric line (first sample whose name and labels start with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Captures everything `tracing` writes (install with [`Capture::install`]).
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Route this process's logs, at TRACE, into a new capture.
    pub fn install() -> Capture {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).init();
        capture
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The secret as it may appear: raw, base64 (alone and as Basic credentials), percent-encoded
/// with upper- and lower-case hex.
pub fn leak_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pct: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let forms = vec![secret.to_string(), b64(secret), pct.clone(), pct.to_lowercase(), b64(&format!("bot:{secret}"))];
    assert!(forms.iter().all(|f| f.len() >= 16));
    forms
}
