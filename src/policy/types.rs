//! The validated policy's data: what `config::validate` produces and the proxy reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use secrecy::SecretString;

pub use super::creds::*;
use super::path::PathGlob;
use super::RouteIndex;

/// A validated policy (version 1). Built only by [`crate::config::validate`].
#[derive(Debug)]
pub struct Policy {
    /// Enforce the routes, or only report what they would deny.
    pub mode: Mode,
    /// Listener addresses and proxy authentication.
    pub listen: Listen,
    /// This instance's identity in audit events and the control API.
    pub instance_id: String,
    /// Where audit events go and which requests are audited.
    pub audit: AuditSettings,
    /// Host name overrides (like curl's `--resolve`).
    pub resolve: Resolve,
    /// Timeouts and size limits.
    pub limits: Limits,
    /// TLS interception of CONNECT, when on.
    pub interception: Option<Interception>,
    /// Tools in name order.
    pub tools: Vec<Tool>,
    pub(crate) index: RouteIndex,
}

/// Whether the policy is enforced (`mode:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Requests no route allows are refused (the default).
    Enforce,
    /// Requests no route allows are forwarded untouched with the agent's own credentials and
    /// recorded as `request.would_deny`; allowed requests are handled as in enforce mode.
    Report,
}

impl Mode {
    /// `enforce` or `report`, as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

/// The pod-local CA's settings (`interception:`, or `run --ca-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    /// The CA certificate alone, PEM.
    pub ca_cert_out: PathBuf,
    /// The system's roots followed by the CA, PEM.
    pub ca_bundle_out: PathBuf,
    /// The same roots as a PKCS12 trust store (password `changeit`), when asked for.
    pub java_truststore_out: Option<PathBuf>,
    /// Validity of each CA generated.
    pub ca_validity: Duration,
    /// Most leaf certificates kept.
    pub leaf_cache_size: usize,
}

impl Interception {
    /// Default validity of the CA: one year, longer than any pod lives.
    pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Default bound of the leaf cache.
    pub const DEFAULT_LEAF_CACHE: usize = 1000;
}

/// The three listeners.
#[derive(Debug)]
pub struct Listen {
    /// Where agents connect.
    pub proxy: SocketAddr,
    /// The secret agents must present in `Proxy-Authorization`, when set.
    pub proxy_auth: Option<SecretString>,
    /// `/metrics`, `/live`, `/ready`.
    pub admin: SocketAddr,
    /// The control API.
    pub control: ControlAddr,
    /// The bearer token callers of the control API must present, when set.
    pub control_auth: Option<SecretString>,
}

/// Where the control API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// A Unix socket at this path (mode 0600, its folder created 0700 when missing).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl ControlAddr {
    /// The default: a socket in a folder the agent's container never mounts.
    pub const DEFAULT: &'static str = "unix:/run/credproxy-control/control.sock";
    /// Longest socket path (`sun_path` holds 108 bytes with the closing NUL on Linux).
    pub const MAX_PATH: usize = 107;

    /// `unix:PATH` or `IP:port`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path"),
            Some(p) if !p.starts_with('/') => Err("the socket path must be absolute"),
            Some(p) if p.len() > Self::MAX_PATH => {
                Err("the socket path is longer than a socket address allows (107 bytes)")
            }
            Some(p) => Ok(ControlAddr::Unix(PathBuf::from(p))),
            None => s.parse().map(ControlAddr::Tcp).map_err(|_| "not unix:PATH or an IP:port address"),
        }
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Audit settings.
#[derive(Debug)]
pub struct AuditSettings {
    /// `None` for stdout, else a file appended to.
    pub file: Option<PathBuf>,
    /// Which requests produce audit events.
    pub requests: AuditRequests,
    /// The key of agent-credential fingerprints (`None`: a random key per process).
    pub fingerprint_key: Option<SecretString>,
    /// Query parameters whose values are agent credentials (decoded names).
    pub credential_query_params: Vec<String>,
    /// Cookies whose values are agent credentials.
    pub credential_cookies: Vec<String>,
}

/// Which requests are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRequests {
    /// `request.forwarded` and `request.denied`.
    All,
    /// `request.denied` only.
    Denied,
    /// None.
    None,
}

/// Name-to-address overrides.
#[derive(Debug, Default)]
pub struct Resolve {
    /// (pattern, address); exact patterns before wildcard ones, longer suffix first.
    pub entries: Vec<(HostPattern, IpAddr)>,
}

impl Resolve {
    /// The override for a (normalised) host, if any.
    pub fn lookup(&self, host: &str) -> Option<IpAddr> {
        self.entries.iter().find(|(p, _)| p.matches(host)).map(|(_, ip)| *ip)
    }
}

// The request and connection limits (`limits:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed to read a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head, including the header credproxy injects.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// Time allowed to connect (TCP and TLS) to an upstream.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response head.
    pub response_header_timeout: Duration,
    /// Idle keep-alive time, agent side and upstream pool.
    pub idle_timeout: Duration,
    /// Concurrent agent connections; above it new ones are shed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_headers: 100,
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
        }
    }
}

/// One tool: a credential, how to inject it, and the routes it may take.
#[derive(Debug)]
pub struct Tool {
    /// `^[a-z][a-z0-9-]{0,62}$`.
    pub name: String,
    /// Where the token comes from; `None` passes requests through untouched.
    pub credential: Option<CredentialSpec>,
    /// Whether readiness waits for this tool's credential.
    pub required: bool,
    /// When a rotating credential is refreshed.
    pub refresh: Refresh,
    /// How the token is attached.
    pub inject: Inject,
    /// Extra request headers removed before injection.
    pub strip_headers: Vec<HeaderName>,
    /// Tokens issued before this instant are revoked.
    pub not_before: Option<SystemTime>,
    /// The agent must name this tool with `Credproxy-Tool`.
    pub selected_by_header: bool,
    /// Base-URL mode target (`/NAME/...`).
    pub upstream: Option<Upstream>,
    /// Extra CA certificates (PEM) trusted for this tool's upstreams.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file` at load time.
    pub ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// A client certificate from Vault's PKI engine for this tool's upstream connections.
    pub client_cert: Option<ClientCertSpec>,
    /// Routes in file order.
    pub routes: Vec<Route>,
}

impl Tool {
    /// Whether the tool's credential or client certificate logs in to Vault with `login`.
    pub fn uses_login(&self, login: &VaultLogin) -> bool {
        let cred = matches!(&self.credential, Some(CredentialSpec::Vault(v)) if v.login == *login);
        cred || self.client_cert.as_ref().is_some_and(|c| c.login == *login)
    }
}

/// A route of a tool, with its index: `(tool, index, route)`.
pub type RouteOf<'a> = (&'a Tool, usize, &'a Route);

/// Every pair of routes of two different tools (the earlier tool first), except between two
/// tools that both need `Credproxy-Tool`: they share routes by design.
pub fn cross_tool_route_pairs(tools: &[Tool]) -> impl Iterator<Item = (RouteOf<'_>, RouteOf<'_>)> {
    tools.iter().enumerate().flat_map(move |(a, ta)| {
        tools[a + 1..].iter().filter(move |tb| !(ta.selected_by_header && tb.selected_by_header)).flat_map(move |tb| {
            ta.routes
                .iter()
                .enumerate()
                .flat_map(move |(i, ra)| tb.routes.iter().enumerate().map(move |(j, rb)| ((ta, i, ra), (tb, j, rb))))
        })
    })
}

/// How a token is attached to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// `header: value`, the value a template with one `{token}`: (prefix, suffix) around it.
    Header {
        /// Header name.
        name: HeaderName,
        /// Text before `{token}`.
        prefix: String,
        /// Text after `{token}`.
        suffix: String,
    },
    /// A query parameter replacing any the agent sent.
    Query {
        /// Parameter name.
        param: String,
    },
    /// HTTP Basic with the token as password.
    Basic {
        /// Username; `None` when the credential is itself `username:password` (a two-field
        /// `vault` secret).
        username: Option<String>,
    },
}

/// Base-URL mode: `/TOOL/rest` goes to `scheme://host:port{path_prefix}/rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Scheme.
    pub scheme: Scheme,
    /// Normalised host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without a trailing slash (may be empty).
    pub path_prefix: String,
    /// `host[:port]` as sent upstream, built once at load (the request path clones it).
    pub authority: http::uri::Authority,
}

/// `host[:port]` for a URL: an IPv6 address in brackets, the scheme's default port left out.
pub fn authority(scheme: Scheme, host: &str, port: u16) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    if port == scheme.default_port() {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// A URL scheme towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Cleartext.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    /// The default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A route's host: exact, or `*.suffix` (any subdomain, not the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// Any host ending in this suffix, which starts with `.`.
    Suffix(String),
}

impl HostPattern {
    /// Does the (normalised) host match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// One route of a tool.
#[derive(Debug, Clone)]
pub struct Route {
    /// Upstream scheme.
    pub scheme: Scheme,
    /// Host pattern.
    pub host: HostPattern,
    /// Port.
    pub port: u16,
    /// Allowed methods; `None` allows all.
    pub methods: Option<Vec<http::Method>>,
    /// Path globs; empty allows all.
    pub paths: Vec<PathGlob>,
    /// May connect to loopback, private and link-local addresses.
    pub allow_private: bool,
}

/// How specific a matching route is; greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// Exact host beats any wildcard.
    pub exact_host: bool,
    /// A longer wildcard suffix beats a shorter one.
    pub host_suffix_len: usize,
    /// Bytes before the first `*` of the matching path glob (all of it for a literal path).
    pub path_prefix_len: usize,
    /// A method list beats "any".
    pub has_methods: bool,
}

impl Route {
    /// The specificity of this route for the request, or `None` when method or path do not match.
    pub fn specificity(&self, method: &http::Method, path: &str) -> Option<Specificity> {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return None;
            }
        }
        let path_prefix_len = if self.paths.is_empty() {
            0
        } else {
            self.paths.iter().filter(|g| g.matches(path)).map(PathGlob::literal_prefix_len).max()?
        };
        Some(Specificity {
            exact_host: matches!(self.host, HostPattern::Exact(_)),
            host_suffix_len: match &self.host {
                HostPattern::Exact(_) => 0,
                HostPattern::Suffix(s) => s.len(),
            },
            path_prefix_len,
            has_methods: self.methods.is_some(),
        })
    }
}
