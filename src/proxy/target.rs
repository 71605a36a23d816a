//! Where a request goes: worked out from its form (absolute-form for the forward proxy,
//! origin-form `/TOOL/...` for base-URL mode), with the host and path normalised.

use http::Request;
use hyper::body::Incoming;

use crate::error::ProxyError;
use http::uri::Authority;

use crate::policy::{authority, normalize, normalize_host, Scheme};
use crate::state::Live;

const PATH_REFUSED: &str = "path refused: encoded separator, backslash, NUL, bad escape or a '..;' segment";

/// Where a request goes, worked out from its form (absolute-form = forward proxy, origin-form = base URL).
pub struct Target {
    /// Upstream scheme.
    pub scheme: Scheme,
    /// Normalised host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Normalised path.
    pub path: String,
    /// The query string, as the agent sent it.
    pub query: Option<String>,
    /// The tool named by the base-URL path.
    pub base_tool: Option<usize>,
    /// Base-URL mode: the tool's upstream authority, built at load.
    pub upstream_authority: Option<Authority>,
}

/// The authority of an intercepted CONNECT: every request inside the tunnel goes there.
#[derive(Debug)]
pub struct Pinned {
    /// Normalised host.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Target {
    /// A request inside an intercepted tunnel: `https://` the CONNECT authority and the request's
    /// path. Its `Host` (HTTP/1.1) or `:authority` (h2), and an absolute URL's authority, must name
    /// that same host and port (443 when absent), else `421`.
    pub(super) fn pinned(pin: &Pinned, req: &Request<Incoming>) -> Result<Target, ProxyError> {
        let uri = req.uri();
        if uri.scheme().is_some_and(|s| s != &http::uri::Scheme::HTTPS) {
            return Err(ProxyError::Misdirected);
        }
        let hosts = req.headers().get_all(http::header::HOST);
        if hosts.iter().count() > 1 {
            return Err(ProxyError::BadRequest("more than one Host field"));
        }
        let named =
            uri.authority().map(|a| a.as_str()).into_iter().chain(hosts.iter().map(|h| h.to_str().unwrap_or("\0")));
        let mut seen = false;
        for raw in named {
            seen = true;
            let auth: Authority = raw.parse().map_err(|_| ProxyError::Misdirected)?;
            let port = auth.port_u16().unwrap_or(443);
            if auth.as_str().contains('@') || normalize_host(auth.host()) != pin.host || port != pin.port {
                return Err(ProxyError::Misdirected);
            }
        }
        if !seen {
            return Err(ProxyError::BadRequest("request without a Host"));
        }
        let path = normalize(uri.path()).map_err(|_| ProxyError::BadRequest(PATH_REFUSED))?;
        Ok(Target::https(pin.host.clone(), pin.port, path, uri.query().map(str::to_owned)))
    }

    /// `https://host:port` + `path` (a CONNECT's target, or a request inside its tunnel).
    pub(super) fn https(host: String, port: u16, path: String, query: Option<String>) -> Target {
        Target { scheme: Scheme::Https, host, port, path, query, base_tool: None, upstream_authority: None }
    }

    pub(super) fn of(live: &Live, req: &Request<Incoming>) -> Result<Target, ProxyError> {
        let uri = req.uri();
        let query = uri.query().map(str::to_owned);
        if let Some(scheme) = uri.scheme_str() {
            let scheme = match scheme {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                _ => return Err(ProxyError::BadRequest("unsupported URL scheme")),
            };
            let auth = uri.authority().ok_or(ProxyError::BadRequest("URL without a host"))?;
            if auth.as_str().contains('@') {
                return Err(ProxyError::BadRequest("userinfo in a request URL is refused"));
            }
            let host = normalize_host(auth.host());
            if host.is_empty() {
                return Err(ProxyError::BadRequest("URL without a host"));
            }
            let port = auth.port_u16().unwrap_or(scheme.default_port());
            let path = normalize(uri.path()).map_err(|_| ProxyError::BadRequest(PATH_REFUSED))?;
            return Ok(Target { scheme, host, port, path, query, base_tool: None, upstream_authority: None });
        }
        // Origin-form: `/TOOL/rest` in base-URL mode.
        let raw = uri.path();
        let after =
            raw.strip_prefix('/').ok_or(ProxyError::BadRequest("request target must be a path or an absolute URL"))?;
        let (name, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        let policy = &live.policy;
        let (t, up) = policy
            .tool_index(name)
            .and_then(|t| policy.tools[t].upstream.as_ref().map(|u| (t, u)))
            .ok_or(ProxyError::RouteDenied("no tool with an upstream is named by the first path segment"))?;
        let rest = normalize(rest).map_err(|_| ProxyError::BadRequest(PATH_REFUSED))?;
        let path = if up.path_prefix.is_empty() { rest } else { format!("{}{}", up.path_prefix, rest) };
        Ok(Target {
            scheme: up.scheme,
            host: up.host.clone(),
            port: up.port,
            path,
            query,
            base_tool: Some(t),
            upstream_authority: Some(up.authority.clone()),
        })
    }

    /// `host[:port]` for the upstream URL (prebuilt in base-URL mode).
    pub(super) fn authority(&self) -> Result<Authority, ProxyError> {
        match &self.upstream_authority {
            Some(a) => Ok(a.clone()),
            None => authority(self.scheme, &self.host, self.port)
                .parse()
                .map_err(|_| ProxyError::BadRequest("cannot build the upstream URL")),
        }
    }
}
