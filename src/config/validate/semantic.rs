//! Semantic checks of a parsed policy: every error collected with its path, then one `Policy`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use secrecy::SecretString;

use super::{ConfigError, ConfigErrors};
use crate::config::{RawCredential, RawInject, RawLimits, RawPolicy, RawRoute, RawTool};
use crate::policy::*;

struct Ctx<'a> {
    errors: Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError { path: path.into(), line: None, message: message.into() });
    }

    /// Expand `${VAR}` from the environment; an unset variable is an error.
    fn expand(&mut self, path: &str, s: &str) -> Option<String> {
        if !s.contains("${") {
            return Some(s.to_string());
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                self.err(path, "unterminated ${ in value");
                return None;
            };
            let name = &after[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.err(path, "invalid variable name in ${...}");
                return None;
            }
            match (self.env)(name) {
                Some(v) => out.push_str(&v),
                None => {
                    self.err(path, format!("environment variable {name} is not set"));
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn duration(&mut self, path: &str, raw: &Option<String>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        let Some(s) = self.expand(path, raw) else { return default };
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(path, "must be greater than zero");
                default
            }
            Err(_) => {
                self.err(path, "not a duration (examples: 500ms, 10s, 5m)");
                default
            }
        }
    }

    fn socket(&mut self, path: &str, raw: &Option<String>, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default.parse().expect("default address");
        let Some(raw) = raw else { return fallback };
        let Some(s) = self.expand(path, raw) else { return fallback };
        s.parse().unwrap_or_else(|_| {
            self.err(path, "not an IP:port address (example: 127.0.0.1:15001)");
            fallback
        })
    }
}

/// Check everything and build the policy, or return every error found.
pub(super) fn check(
    raw: RawPolicy,
    env: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<Policy, ConfigErrors> {
    let mut cx = Ctx { errors: Vec::new(), env };
    if raw.version != 1 {
        cx.err("version", "unsupported version (this credproxy reads version 1)");
    }
    let listen = listen(&mut cx, &raw);
    let instance_id = match &raw.instance_id {
        Some(s) => cx.expand("instance_id", s).unwrap_or_default(),
        None => default_instance_id().to_string(),
    };
    let audit = AuditSettings {
        file: match raw.audit.output.as_deref() {
            None | Some("stdout") => None,
            Some(p) => cx.expand("audit.output", p).map(PathBuf::from),
        },
        requests: match raw.audit.requests.as_deref() {
            None | Some("denied") => AuditRequests::Denied,
            Some("all") => AuditRequests::All,
            Some("none") => AuditRequests::None,
            Some(_) => {
                cx.err("audit.requests", "must be all, denied or none");
                AuditRequests::Denied
            }
        },
    };
    let mut resolve = Resolve::default();
    for (name, addr) in &raw.resolve {
        let path = format!("resolve.{name}");
        let pattern = host_pattern(&mut cx, &path, name);
        let ip = cx.expand(&path, addr).and_then(|a| a.parse::<IpAddr>().ok());
        match (pattern, ip) {
            (Some(p), Some(ip)) => resolve.entries.push((p, ip)),
            (_, None) => cx.err(path, "not an IP address"),
            _ => {}
        }
    }
    resolve.entries.sort_by_key(|(p, _)| match p {
        HostPattern::Exact(_) => 0,
        HostPattern::Suffix(s) => usize::MAX - s.len(),
    });
    let limits = limits(&mut cx, &raw.limits);
    let mut tools = Vec::new();
    for (name, t) in &raw.tools {
        tools.push(tool(&mut cx, name, t, now));
    }
    check_ties(&mut cx, &tools);
    if !cx.errors.is_empty() {
        return Err(ConfigErrors(cx.errors));
    }
    let index = crate::policy::RouteIndex::build(&tools);
    Ok(Policy { listen, instance_id, audit, resolve, limits, tools, index })
}

fn listen(cx: &mut Ctx<'_>, raw: &RawPolicy) -> Listen {
    let l = &raw.listen;
    let proxy = cx.socket("listen.proxy", &l.proxy, "127.0.0.1:15001");
    let admin = cx.socket("listen.admin", &l.admin, "127.0.0.1:15090");
    let control = cx.socket("listen.control", &l.control, "127.0.0.1:15091");
    let proxy_auth = l.proxy_auth_file.as_ref().and_then(|p| {
        let p = cx.expand("listen.proxy_auth_file", p)?;
        match std::fs::read_to_string(&p) {
            Ok(s) if !trim_newline(&s).is_empty() => Some(SecretString::from(trim_newline(&s).to_string())),
            Ok(_) => {
                cx.err("listen.proxy_auth_file", "the file is empty");
                None
            }
            Err(e) => {
                cx.err("listen.proxy_auth_file", format!("cannot read the file: {}", e.kind()));
                None
            }
        }
    });
    if !proxy.ip().is_loopback() && l.proxy_auth_file.is_none() {
        cx.err("listen.proxy", "a non-loopback proxy listener needs listen.proxy_auth_file");
    }
    if !control.ip().is_loopback() {
        cx.err("listen.control", "the control listener must be on loopback");
    }
    Listen { proxy, proxy_auth, admin, control }
}

/// Strip one trailing newline (`\n` or `\r\n`), as a Secret file usually ends.
pub(crate) fn trim_newline(s: &str) -> &str {
    s.strip_suffix("\r\n").or_else(|| s.strip_suffix('\n')).unwrap_or(s)
}

fn default_instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "credproxy".into());
        let mut b = [0u8; 3];
        let _ = aws_lc_rs::rand::fill(&mut b);
        format!("{host}-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
    })
}

fn limits(cx: &mut Ctx<'_>, raw: &RawLimits) -> Limits {
    let d = Limits::default();
    let mut n = |path: &str, v: Option<u64>, default: usize, min: u64, max: u64| match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => v as usize,
        Some(_) => {
            cx.err(path, format!("must be between {min} and {max}"));
            default
        }
    };
    let max_header_bytes = n("limits.max_header_bytes", raw.max_header_bytes, d.max_header_bytes, 8192, 1 << 20);
    let max_headers = n("limits.max_headers", raw.max_headers, d.max_headers, 8, 10_000);
    let max_connections = n("limits.max_connections", raw.max_connections, d.max_connections, 1, 1_000_000);
    Limits {
        header_read_timeout: cx.duration("limits.header_read_timeout", &raw.header_read_timeout, d.header_read_timeout),
        max_header_bytes,
        max_headers,
        connect_timeout: cx.duration("limits.connect_timeout", &raw.connect_timeout, d.connect_timeout),
        response_header_timeout: cx.duration(
            "limits.response_header_timeout",
            &raw.response_header_timeout,
            d.response_header_timeout,
        ),
        idle_timeout: cx.duration("limits.idle_timeout", &raw.idle_timeout, d.idle_timeout),
        max_connections,
    }
}

fn valid_tool_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn host_pattern(cx: &mut Ctx<'_>, path: &str, raw: &str) -> Option<HostPattern> {
    let s = cx.expand(path, raw)?;
    let host = normalize_host(&s);
    let (wild, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let is_ip = rest.parse::<IpAddr>().is_ok();
    let ok = !rest.is_empty()
        && (is_ip
            || rest.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            }));
    if !ok || (wild && is_ip) {
        cx.err(path, "not a host name, IP address or *.domain wildcard");
        return None;
    }
    Some(if wild { HostPattern::Suffix(format!(".{rest}")) } else { HostPattern::Exact(host) })
}

fn is_loopback_host(h: &HostPattern) -> bool {
    match h {
        HostPattern::Exact(h) => h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        HostPattern::Suffix(s) => s == ".localhost",
    }
}

fn tool(cx: &mut Ctx<'_>, name: &str, t: &RawTool, now: SystemTime) -> Tool {
    let base = format!("tools.{name}");
    if !valid_tool_name(name) {
        cx.err(&base, "tool names match ^[a-z][a-z0-9-]{0,62}$");
    }
    let credential = t.credential.as_ref().and_then(|c| credential(cx, &format!("{base}.credential"), c));
    let inject = inject(cx, &format!("{base}.inject"), t.inject.as_ref());
    let mut strip_headers = Vec::new();
    for (i, h) in t.strip_headers.iter().enumerate() {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => strip_headers.push(h),
            Err(_) => cx.err(format!("{base}.strip_headers[{i}]"), "not a header name"),
        }
    }
    let not_before = t.not_before.as_ref().and_then(|s| {
        let path = format!("{base}.not_before");
        let s = cx.expand(&path, s)?;
        match humantime::parse_rfc3339_weak(&s) {
            Ok(t) if t > now => {
                cx.err(path, "is in the future");
                None
            }
            Ok(t) => Some(t),
            Err(_) => {
                cx.err(path, "not an RFC 3339 time (example: 2026-11-26T10:00:00Z)");
                None
            }
        }
    });
    let ca = t.ca_file.as_ref().and_then(|p| {
        let path = format!("{base}.ca_file");
        let p = cx.expand(&path, p)?;
        match crate::proxy::forward::read_ca_file(std::path::Path::new(&p)) {
            Ok(certs) => Some((PathBuf::from(p), certs)),
            Err(m) => {
                cx.err(path, m);
                None
            }
        }
    });
    let mut routes = Vec::new();
    for (i, r) in t.routes.iter().enumerate() {
        if let Some(route) = route(cx, &format!("{base}.routes[{i}]"), r) {
            let cleartext = route.scheme == Scheme::Http && !is_loopback_host(&route.host);
            if credential.is_some() && cleartext && !t.allow_insecure_upstream {
                cx.err(
                    format!("{base}.routes[{i}].scheme"),
                    "a credential is never sent in cleartext: use https, or set allow_insecure_upstream",
                );
            }
            routes.push(route);
        }
    }
    if t.routes.is_empty() {
        cx.err(format!("{base}.routes"), "a tool needs at least one route");
    }
    let upstream = t.upstream.as_ref().and_then(|u| upstream(cx, &format!("{base}.upstream"), u, &routes));
    let (ca_file, ca_certs) = ca.map_or((None, Vec::new()), |(p, c)| (Some(p), c));
    Tool {
        name: name.to_string(),
        credential,
        required: t.required.unwrap_or(true),
        inject,
        strip_headers,
        not_before,
        selected_by_header: t.selected_by_header,
        upstream,
        ca_file,
        ca_certs,
        routes,
    }
}

fn credential(cx: &mut Ctx<'_>, path: &str, c: &RawCredential) -> Option<CredentialSpec> {
    match c {
        RawCredential::File { path: p } => {
            let p = cx.expand(&format!("{path}.path"), p)?;
            if p.is_empty() {
                cx.err(format!("{path}.path"), "must not be empty");
                return None;
            }
            Some(CredentialSpec::File { path: PathBuf::from(p) })
        }
        RawCredential::Env { var } => {
            let v = cx.expand(&format!("{path}.var"), var)?;
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                cx.err(format!("{path}.var"), "not an environment variable name");
                return None;
            }
            Some(CredentialSpec::Env { var: v })
        }
    }
}

/// Headers credproxy manages itself, which a tool may not inject into.
const RESERVED_INJECT: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "credproxy-tool",
    "cookie",
];

fn inject(cx: &mut Ctx<'_>, path: &str, raw: Option<&RawInject>) -> Inject {
    let default = Inject::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".into(), suffix: String::new() };
    let Some(raw) = raw else { return default };
    let kinds = [raw.header.is_some() || raw.value.is_some(), raw.query.is_some(), raw.basic.is_some()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        cx.err(path, "use exactly one of header/value, query or basic");
        return default;
    }
    if let Some(q) = &raw.query {
        let ok = !q.param.is_empty() && q.param.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        if !ok {
            cx.err(format!("{path}.query.param"), "a query parameter name is letters, digits and -_.~");
        }
        return Inject::Query { param: q.param.clone() };
    }
    if let Some(b) = &raw.basic {
        let Some(u) = b.username.as_ref().and_then(|u| cx.expand(&format!("{path}.basic.username"), u)) else {
            cx.err(format!("{path}.basic.username"), "required for file and env credentials");
            return default;
        };
        if u.contains(':') || u.chars().any(char::is_control) {
            cx.err(format!("{path}.basic.username"), "may not contain ':' or control characters");
        }
        return Inject::Basic { username: u };
    }
    let name = match raw.header.as_deref().map(|h| HeaderName::from_bytes(h.as_bytes())) {
        None => http::header::AUTHORIZATION,
        Some(Ok(h)) if RESERVED_INJECT.contains(&h.as_str()) => {
            cx.err(format!("{path}.header"), "credproxy manages this header itself");
            return default;
        }
        Some(Ok(h)) => h,
        Some(Err(_)) => {
            cx.err(format!("{path}.header"), "not a header name");
            return default;
        }
    };
    let template = match &raw.value {
        Some(v) => v.clone(),
        None if name == http::header::AUTHORIZATION => "Bearer {token}".into(),
        None => "{token}".into(),
    };
    let parts: Vec<&str> = template.split("{token}").collect();
    if parts.len() != 2 {
        cx.err(format!("{path}.value"), "must contain {token} exactly once");
        return default;
    }
    if template.bytes().any(|b| (b.is_ascii_control() && b != b'\t') || b >= 0x7f) {
        cx.err(format!("{path}.value"), "only visible ASCII, space and tab are allowed");
    }
    Inject::Header { name, prefix: parts[0].into(), suffix: parts[1].into() }
}

fn route(cx: &mut Ctx<'_>, path: &str, r: &RawRoute) -> Option<Route> {
    let scheme = match r.scheme.as_deref() {
        None | Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        Some(_) => {
            cx.err(format!("{path}.scheme"), "must be https or http");
            Scheme::Https
        }
    };
    let host = host_pattern(cx, &format!("{path}.host"), &r.host)?;
    let port = r.port.unwrap_or(scheme.default_port());
    if port == 0 {
        cx.err(format!("{path}.port"), "must be 1-65535");
    }
    let methods = r.methods.as_ref().map(|ms| {
        let mut out = Vec::new();
        for (i, m) in ms.iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) if m != http::Method::CONNECT => out.push(m),
                _ => cx.err(format!("{path}.methods[{i}]"), "not an HTTP method (CONNECT is not a route method)"),
            }
        }
        out
    });
    if methods.as_ref().is_some_and(Vec::is_empty) {
        cx.err(format!("{path}.methods"), "an empty list allows nothing; omit it to allow every method");
    }
    let mut paths = Vec::new();
    for (i, p) in r.paths.iter().flatten().enumerate() {
        match PathGlob::parse(p) {
            Ok(g) => paths.push(g),
            Err(m) => cx.err(format!("{path}.paths[{i}]"), m),
        }
    }
    if r.paths.as_ref().is_some_and(Vec::is_empty) {
        cx.err(format!("{path}.paths"), "an empty list allows nothing; omit it to allow every path");
    }
    Some(Route { scheme, host, port, methods, paths, allow_private: r.allow_private })
}

fn upstream(cx: &mut Ctx<'_>, path: &str, raw: &str, routes: &[Route]) -> Option<Upstream> {
    let s = cx.expand(path, raw)?;
    let uri: http::Uri = match s.parse() {
        Ok(u) => u,
        Err(_) => {
            cx.err(path, "not a URL");
            return None;
        }
    };
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => {
            cx.err(path, "must be an http:// or https:// URL");
            return None;
        }
    };
    let auth = uri.authority()?;
    if auth.as_str().contains('@') || uri.query().is_some() {
        cx.err(path, "may not contain userinfo or a query");
        return None;
    }
    let host = normalize_host(auth.host());
    let port = auth.port_u16().unwrap_or(scheme.default_port());
    let path_prefix = uri.path().trim_end_matches('/').to_string();
    let covered = routes.iter().any(|r| r.scheme == scheme && r.port == port && r.host.matches(&host));
    if !covered {
        cx.err(path, "no route of this tool covers the upstream's scheme, host and port");
    }
    Some(Upstream { scheme, host, port, path_prefix })
}

/// Two tools tie when routes of equal specificity can match the same request.
fn check_ties(cx: &mut Ctx<'_>, tools: &[Tool]) {
    for (a, ta) in tools.iter().enumerate() {
        for tb in &tools[a + 1..] {
            if ta.selected_by_header && tb.selected_by_header {
                continue;
            }
            for (i, ra) in ta.routes.iter().enumerate() {
                for (j, rb) in tb.routes.iter().enumerate() {
                    if routes_tie(ra, rb) {
                        cx.err(
                            format!("tools.{}.routes[{j}]", tb.name),
                            format!(
                                "ties with tools.{}.routes[{i}] (equally specific, can match the same request); \
                                 make one more specific or set selected_by_header on both",
                                ta.name
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn routes_tie(a: &Route, b: &Route) -> bool {
    if a.scheme != b.scheme || a.port != b.port || a.host != b.host {
        return false;
    }
    let methods_tie = match (&a.methods, &b.methods) {
        (None, None) => true,
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        _ => false,
    };
    if !methods_tie {
        return false;
    }
    match (a.paths.is_empty(), b.paths.is_empty()) {
        (true, true) => true,
        (false, false) => a
            .paths
            .iter()
            .any(|ga| b.paths.iter().any(|gb| ga.literal_prefix_len() == gb.literal_prefix_len() && ga.overlaps(gb))),
        _ => false,
    }
}
