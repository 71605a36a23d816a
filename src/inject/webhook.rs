//! The admission webhook server: HTTPS on one listener with `POST /mutate` (AdmissionReview in,
//! JSON Patch out, through [`super::review::answer`]), `GET /healthz` and `GET /metrics`. The
//! serving certificate is re-read when its files change (cert-manager rotates them in place), so
//! the next connection gets the new one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::review::{answer, FailurePolicy};
use super::Options;

/// The largest AdmissionReview read: the API server's own cap on a request body (3 MiB), so no
/// pod it accepted is refused here; the cap bounds what anyone else can make us parse.
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// Connections served at once; more are closed at accept. The API server keeps a few.
pub const MAX_CONNECTIONS: usize = 32;
/// After [`WebhookOptions::max_connection_age`], a connection gets this long to finish its
/// response before it is dropped (a client that never reads cannot hold its slot).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// TLS handshake and request head deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive, so slow senders cannot hold connections.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Mutations at once, each on a blocking thread: one parses a whole object (up to a few hundred
/// MiB of values at the body cap), so they queue rather than add up.
const MUTATIONS_AT_ONCE: usize = 1;
/// How long a review waits for a mutation slot before a 503.
const MUTATION_WAIT: Duration = Duration::from_secs(5);

/// How the webhook is run (`credproxy inject --webhook …`).
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The serving certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
    /// What to answer for a pod that cannot be mutated.
    pub failure_policy: FailurePolicy,
    /// The mutation's options.
    pub inject: Options,
    /// How long one connection is served before it is closed (the client reconnects).
    pub max_connection_age: Duration,
}

/// Why the webhook did not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate or key could not be used.
    #[error("the serving certificate: {0}")]
    Certificate(String),
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The webhook's metrics, declared once.
struct WebhookMetrics {
    registry: Registry,
    admissions: IntCounterVec,
}

impl WebhookMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            Opts::new(
                "credproxy_injector_admissions_total",
                "AdmissionReviews answered, by result (injected, unchanged, denied, allowed_with_error, bad_request)",
            ),
            &["result", "dry_run"],
        )
        .expect("valid metric");
        registry.register(Box::new(admissions.clone())).expect("registered once");
        let build = prometheus::IntGaugeVec::new(Opts::new("credproxy_build_info", "The build"), &["version"])
            .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build)).expect("registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        WebhookMetrics { registry, admissions }
    }
}

/// File identity: modification time, length, inode. A swap by rename or symlink changes it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The serving certificate, re-read when either file changes.
struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<([Stamp; 2], Arc<ServerConfig>)>,
}

impl ServingCert {
    fn open(cert: PathBuf, key: PathBuf) -> Result<Self, WebhookError> {
        let stamps = [stamp(&cert), stamp(&key)];
        let config = load(&cert, &key).map_err(WebhookError::Certificate)?;
        Ok(ServingCert { cert, key, loaded: Mutex::new((stamps, config)) })
    }

    /// The config for the next connection: checked against the files' identity each time (two
    /// `stat` calls; admissions are rare), reloaded when they changed. A pair that does not load
    /// (a half-written rotation) keeps the old one until the files change again.
    fn current(&self) -> Arc<ServerConfig> {
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 != stamps {
            loaded.0 = stamps;
            match load(&self.cert, &self.key) {
                Ok(config) => {
                    loaded.1 = config;
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the changed serving certificate does not load; keeping the old one")
                }
            }
        }
        loaded.1.clone()
    }
}

fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    // The key's parse error is not shown: it could quote key material.
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|_| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What every connection's requests share.
struct Ctx {
    opts: WebhookOptions,
    metrics: WebhookMetrics,
    mutations: Semaphore,
}

/// A bound webhook, ready to serve.
pub struct Webhook {
    listener: TcpListener,
    cert: Arc<ServingCert>,
    ctx: Arc<Ctx>,
}

impl Webhook {
    /// Load the certificate and bind the listener.
    pub async fn bind(opts: WebhookOptions) -> Result<Self, WebhookError> {
        let cert = Arc::new(ServingCert::open(opts.tls_cert.clone(), opts.tls_key.clone())?);
        let listener = TcpListener::bind(opts.listen).await.map_err(|e| WebhookError::Bind(opts.listen, e))?;
        let ctx = Ctx { opts, metrics: WebhookMetrics::new(), mutations: Semaphore::new(MUTATIONS_AT_ONCE) };
        Ok(Webhook { listener, cert, ctx: Arc::new(ctx) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` turns true, then let open connections finish (up to 10 s).
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let tcp = tokio::select! {
                (tcp, _) = crate::accept::next(|| self.listener.accept()) => tcp,
                _ = stop.changed() => break,
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
            let (cert, ctx, mut stop) = (self.cert.clone(), self.ctx.clone(), stop.clone());
            let max_age = self.ctx.opts.max_connection_age;
            tokio::spawn(async move {
                // Checked per connection (a reload parses PEM: here, not in the accept loop).
                let acceptor = tokio_rustls::TlsAcceptor::from(cert.current());
                let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(route(&ctx, req).await) }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
                let conn = b.serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                // Every connection ends: at its age limit or at shutdown it finishes the response
                // in hand, and one stuck writing (a client that never reads) is dropped.
                let age = tokio::time::sleep(max_age);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                    }
                    _ = age => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                    }
                }
                drop(permit);
            });
        }
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn route(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let metrics = &ctx.metrics;
    let refuse = |status: StatusCode, why: &str| {
        metrics.admissions.with_label_values(&["bad_request", "false"]).inc();
        tracing::warn!(status = status.as_u16(), why, "admission refused");
        respond(status, "text/plain", format!("{why}\n"))
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/metrics") => {
            let mut buf = String::new();
            TextEncoder::new().encode_utf8(&metrics.registry.gather(), &mut buf).expect("text encoding never fails");
            respond(StatusCode::OK, "text/plain; version=0.0.4", buf)
        }
        (&Method::POST, "/mutate") => {
            let declared =
                req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the AdmissionReview is too large");
            }
            let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY_BYTES).collect())
                .await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the AdmissionReview is too large")
                }
                Ok(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "the request body could not be read"),
                Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"),
            };
            let Ok(Ok(_slot)) = tokio::time::timeout(MUTATION_WAIT, ctx.mutations.acquire()).await else {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many admissions at once");
            };
            // Parsing and mutating a large object is CPU work: off the async workers, so
            // handshakes and /healthz go on meanwhile.
            let (inject, policy) = (ctx.opts.inject.clone(), ctx.opts.failure_policy);
            let answered = tokio::task::spawn_blocking(move || answer(&body, &inject, policy)).await;
            let Ok(answered) = answered else {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "the review could not be answered");
            };
            match answered {
                Ok(a) => {
                    let dry_run = if a.dry_run { "true" } else { "false" };
                    metrics.admissions.with_label_values(&[a.result, dry_run]).inc();
                    match &a.error {
                        Some(e) => tracing::warn!(result = a.result, dry_run = a.dry_run, error = %e, "admission"),
                        None => tracing::info!(result = a.result, dry_run = a.dry_run, "admission"),
                    }
                    respond(StatusCode::OK, "application/json", a.body)
                }
                Err(e) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
