//! Pooled upstream clients: one per tool and TLS settings, rustls on the system roots plus the
//! tool's CA file, each connecting through the guarded connector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use super::guard::{ConnectSettings, Deadline, Guarded};
use crate::body::UpstreamBody;

/// How upstream connections are opened: resolve, address check, TLS, all under one deadline.
pub(super) type Connector = Deadline<HttpsConnector<Guarded>>;

/// An upstream client for one tool and its TLS settings: the connector agent connections open
/// their own connections with ([`super::Held`]), and a pool for upgrades and report mode's
/// unlisted destinations.
#[derive(Clone)]
pub struct Client(pub(super) Arc<ClientInner>);

pub(super) struct ClientInner {
    pub(super) pooled: HyperClient<Connector, UpstreamBody>,
    pub(super) connector: Connector,
    /// Connections agent connections left behind, for the next ones to take.
    pub(super) parked: Mutex<super::owned::Parked>,
    /// How long a parked connection waits (the pool's idle timeout).
    pub(super) idle: Duration,
}

impl Client {
    /// Send `req` through the pool.
    pub fn request(&self, req: http::Request<UpstreamBody>) -> hyper_util::client::legacy::ResponseFuture {
        self.0.pooled.request(req)
    }
}
/// The client token endpoints are called with.
pub type TokenClient = HyperClient<Deadline<HttpsConnector<Guarded>>, http_body_util::Full<bytes::Bytes>>;

/// What sets one upstream client apart: pooled connections are never shared across these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientOpts {
    /// The route is `https` (else no TLS configuration, and no roots, are loaded).
    pub tls: bool,
    /// The route may reach private addresses.
    pub allow_private: bool,
    /// HTTP/1.1 only (for upgrades).
    pub http1_only: bool,
    /// Pool idle timeout.
    pub idle: Duration,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    /// The tool: a connection a server authenticated for one tool (NTLM/Negotiate, a client
    /// certificate) is never reused for another.
    tool: Arc<str>,
    /// SHA-256 over the extra CA certificates (TLS clients only).
    ca: Option<[u8; 32]>,
    /// The client certificate's resolver (its address), when the tool presents one.
    cert: usize,
    opts: ClientOpts,
}

/// A tool's client certificate, asked for at every handshake (rotated in place).
pub type ClientCert = Arc<dyn rustls::client::ResolvesClientCert>;

/// The upstream clients, shared across reloads when their settings match.
pub struct Upstreams {
    settings: Arc<ArcSwap<ConnectSettings>>,
    clients: Mutex<HashMap<ClientKey, Client>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    /// No clients yet.
    pub fn new() -> Self {
        Upstreams { settings: Arc::new(ArcSwap::from_pointee(ConnectSettings::default())), clients: Mutex::default() }
    }

    /// Install new connect settings (after a load); clients pick them up at their next connect.
    pub fn configure(&self, settings: ConnectSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// The current connect settings.
    pub fn settings(&self) -> Arc<ConnectSettings> {
        self.settings.load_full()
    }

    /// `tool`'s client for these settings, built on first use: pools are never shared across
    /// tools. `cert` is the tool's client certificate (mTLS), if it has one.
    pub fn client(
        &self,
        tool: &Arc<str>,
        ca: &[CertificateDer<'static>],
        cert: Option<&ClientCert>,
        opts: ClientOpts,
    ) -> Client {
        let ca = if opts.tls { ca } else { &[] };
        let cert = cert.filter(|_| opts.tls);
        let key = ClientKey {
            tool: tool.clone(),
            ca: (!ca.is_empty()).then(|| ca_digest(ca)),
            cert: cert.map_or(0, |c| Arc::as_ptr(c) as *const () as usize),
            opts,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_insert_with(|| self.build(ca, cert, opts)).clone()
    }

    fn build(&self, ca: &[CertificateDer<'static>], cert: Option<&ClientCert>, opts: ClientOpts) -> Client {
        let connector = self.connector(ca, cert, opts);
        let pooled = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        Client(Arc::new(ClientInner { pooled, connector, parked: Mutex::default(), idle: opts.idle }))
    }

    /// A client for token endpoints (trusted configuration: private addresses allowed), with
    /// its own small pool. Redirects are never followed (hyper's client does not). Without
    /// `tls` it speaks cleartext only and loads no roots (loopback endpoints, the control API).
    pub fn token_client(&self, ca: &[CertificateDer<'static>], tls: bool) -> TokenClient {
        let opts = ClientOpts { tls, allow_private: true, http1_only: false, idle: Duration::from_secs(90) };
        HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.idle)
            .pool_max_idle_per_host(2)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(self.connector(ca, None, opts))
    }

    fn connector(
        &self,
        ca: &[CertificateDer<'static>],
        cert: Option<&ClientCert>,
        opts: ClientOpts,
    ) -> Deadline<HttpsConnector<Guarded>> {
        // A cleartext route never handshakes: it gets no roots (and loads none).
        let mut roots = if opts.tls { (*crate::certs::system_roots().store).clone() } else { RootCertStore::empty() };
        roots.add_parsable_certificates(ca.iter().cloned());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots);
        let tls = match cert {
            Some(c) => {
                let mut tls = tls.with_client_cert_resolver(c.clone());
                // A resumed session carries the identity of the certificate it began with: after
                // a rotation, new connections must show the new one.
                tls.resumption = rustls::client::Resumption::disabled();
                tls
            }
            None => tls.with_no_client_auth(),
        };
        let guarded = Guarded { settings: self.settings.clone(), allow_private: opts.allow_private };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1();
        let https = if opts.http1_only {
            builder.wrap_connector(guarded)
        } else {
            builder.enable_http2().wrap_connector(guarded)
        };
        Deadline { inner: https, settings: self.settings.clone() }
    }
}

/// One digest over a list of certificates, each length-prefixed so no two lists share it.
fn ca_digest(ca: &[CertificateDer<'static>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for cert in ca {
        ctx.update(&(cert.len() as u64).to_be_bytes());
        ctx.update(cert.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
