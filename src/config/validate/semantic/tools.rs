//! Semantic checks of one tool: credential, injection, routes, base URL; and ties between tools.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use http::header::HeaderName;

use super::credential::{credential, refresh};
use super::Ctx;
use crate::config::{RawInject, RawRoute, RawTool};
use crate::policy::*;

fn valid_tool_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub(super) fn host_pattern(cx: &mut Ctx<'_>, path: &str, raw: &str) -> Option<HostPattern> {
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

/// May a credential go to this host in cleartext? Loopback addresses and `localhost` itself;
/// a `*.localhost` name only when `resolve` pins it (and every name under it) to loopback, since
/// the system resolver may send it anywhere.
fn is_loopback_host(h: &HostPattern, resolve: &Resolve) -> bool {
    let pinned = |covers: &dyn Fn(&HostPattern) -> bool, overlaps: &dyn Fn(&HostPattern) -> bool| {
        resolve.entries.iter().any(|(p, ip)| covers(p) && ip.is_loopback())
            && resolve.entries.iter().filter(|(p, _)| overlaps(p)).all(|(_, ip)| ip.is_loopback())
    };
    match h {
        HostPattern::Exact(h) if h == "localhost" => true,
        HostPattern::Exact(h) => {
            h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
                || (h.ends_with(".localhost") && resolve.lookup(h).is_some_and(|ip| ip.is_loopback()))
        }
        HostPattern::Suffix(s) => {
            s.ends_with(".localhost")
                && pinned(&|p| matches!(p, HostPattern::Suffix(r) if s.ends_with(r.as_str())), &|p| match p {
                    HostPattern::Exact(e) => e.ends_with(s.as_str()),
                    HostPattern::Suffix(r) => r.ends_with(s.as_str()) || s.ends_with(r.as_str()),
                })
        }
    }
}

pub(super) fn tool(cx: &mut Ctx<'_>, name: &str, t: &RawTool, now: SystemTime, resolve: &Resolve) -> Tool {
    let base = format!("tools.{name}");
    if !valid_tool_name(name) {
        cx.err(&base, "tool names match ^[a-z][a-z0-9-]{0,62}$");
    }
    let credential = t.credential.as_ref().and_then(|c| credential(cx, &format!("{base}.credential"), c));
    let inject = inject(cx, &format!("{base}.inject"), t.inject.as_ref());
    // Two values (username and password) go only into `inject.basic: {}`, and it takes only them.
    let two_fields = matches!(&credential, Some(CredentialSpec::Vault(v)) if v.fields.len() == 2);
    match (&inject, two_fields) {
        (Inject::Basic { username: None }, false) if credential.is_some() => cx.err(
            format!("{base}.inject.basic.username"),
            "required unless the credential is a vault secret with two fields (username, password)",
        ),
        (Inject::Basic { username: None }, _) | (_, false) => {}
        (_, true) => cx.err(
            format!("{base}.credential.fields"),
            "a vault credential with two fields is injected as inject.basic: {} (username and password)",
        ),
    }
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
        match crate::certs::read_ca_file(std::path::Path::new(&p)) {
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
            let cleartext = route.scheme == Scheme::Http && !is_loopback_host(&route.host, resolve);
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
    let client_cert = t
        .client_certificate
        .as_ref()
        .and_then(|c| super::vault::client_cert(cx, &format!("{base}.client_certificate"), c));
    if client_cert.is_some() && !routes.iter().any(|r| r.scheme == Scheme::Https) {
        cx.err(format!("{base}.client_certificate"), "a client certificate needs an https route to present it on");
    }
    let (ca_file, ca_certs) = ca.map_or((None, Vec::new()), |(p, c)| (Some(p), c));
    Tool {
        name: name.to_string(),
        credential,
        required: t.required.unwrap_or(true),
        refresh: refresh(cx, &format!("{base}.refresh"), t.refresh.as_ref()),
        inject,
        strip_headers,
        not_before,
        selected_by_header: t.selected_by_header,
        upstream,
        ca_file,
        ca_certs,
        client_cert,
        routes,
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
        let Some(raw_user) = &b.username else {
            // The credential must then be `username:password`: checked with the credential.
            return Inject::Basic { username: None };
        };
        let Some(u) = cx.expand(&format!("{path}.basic.username"), raw_user) else { return default };
        if u.contains(':') || u.chars().any(char::is_control) {
            cx.err(format!("{path}.basic.username"), "may not contain ':' or control characters");
        }
        return Inject::Basic { username: Some(u) };
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
    let uri = cx.uri(path, raw)?;
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
    let Ok(authority) = authority(scheme, &host, port).parse() else {
        cx.err(path, "not a valid host and port");
        return None;
    };
    Some(Upstream { scheme, host, port, path_prefix, authority })
}

/// Two tools tie when routes of equal specificity can match the same request.
pub(super) fn check_ties(cx: &mut Ctx<'_>, tools: &[Tool]) {
    for ((ta, i, ra), (tb, j, rb)) in crate::policy::cross_tool_route_pairs(tools) {
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
