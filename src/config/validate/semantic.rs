//! Semantic checks of a parsed policy: every error collected with its path, then one `Policy`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, ConfigErrors};
use crate::config::{RawInterception, RawLimits, RawPolicy};
use crate::policy::*;
use tools::{check_ties, host_pattern, tool};

mod credential;
mod tools;
mod vault;

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

    /// Expand and parse a URL.
    fn uri(&mut self, path: &str, raw: &str) -> Option<http::Uri> {
        let s = self.expand(path, raw)?;
        s.parse().map_err(|_| self.err(path, "not a URL")).ok()
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
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("report") => Mode::Report,
        Some(_) => {
            cx.err("mode", "must be enforce or report");
            Mode::Enforce
        }
    };
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
        fingerprint_key: secret_file(&mut cx, "audit.fingerprint_key_file", &raw.audit.fingerprint_key_file),
        credential_query_params: names(&mut cx, "audit.credential_query_params", &raw.audit.credential_query_params),
        credential_cookies: names(&mut cx, "audit.credential_cookies", &raw.audit.credential_cookies),
    };
    if audit.fingerprint_key.as_ref().is_some_and(|k| k.expose_secret().len() < crate::digest::Keyed::MIN_KEY_BYTES) {
        cx.err("audit.fingerprint_key_file", "the key must be at least 16 bytes (32 random bytes are best)");
    }
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
        tools.push(tool(&mut cx, name, t, now, &resolve));
    }
    check_ties(&mut cx, &tools);
    vault::distinct_labels(&mut cx, &tools);
    let interception = raw.interception.as_ref().and_then(|i| interception(&mut cx, i));
    if !cx.errors.is_empty() {
        return Err(ConfigErrors(cx.errors));
    }
    let index = crate::policy::RouteIndex::build(&tools);
    Ok(Policy { mode, listen, instance_id, audit, resolve, limits, interception, tools, index })
}

fn listen(cx: &mut Ctx<'_>, raw: &RawPolicy) -> Listen {
    let l = &raw.listen;
    let proxy = cx.socket("listen.proxy", &l.proxy, "127.0.0.1:15001");
    let admin = cx.socket("listen.admin", &l.admin, "127.0.0.1:15090");
    let raw_control = match &l.control {
        None => Some(ControlAddr::DEFAULT.to_string()),
        Some(raw) => cx.expand("listen.control", raw),
    };
    let control = raw_control
        .map(|s| ControlAddr::parse(&s))
        .unwrap_or_else(|| ControlAddr::parse(ControlAddr::DEFAULT))
        .unwrap_or_else(|m| {
            cx.err("listen.control", m);
            ControlAddr::parse(ControlAddr::DEFAULT).expect("the default parses")
        });
    let proxy_auth = secret_file(cx, "listen.proxy_auth_file", &l.proxy_auth_file);
    let control_auth = secret_file(cx, "listen.control_auth_file", &l.control_auth_file);
    if !proxy.ip().is_loopback() && l.proxy_auth_file.is_none() {
        cx.err("listen.proxy", "a non-loopback proxy listener needs listen.proxy_auth_file");
    }
    if matches!(control, ControlAddr::Tcp(a) if !a.ip().is_loopback()) && l.control_auth_file.is_none() {
        cx.err("listen.control", "a TCP control listener off loopback needs listen.control_auth_file");
    }
    Listen { proxy, proxy_auth, admin, control, control_auth }
}

/// A secret read from a file named in the policy (one trailing newline trimmed; empty refused).
fn secret_file(cx: &mut Ctx<'_>, path: &str, file: &Option<String>) -> Option<SecretString> {
    let p = cx.expand(path, file.as_ref()?)?;
    match std::fs::read_to_string(&p) {
        Ok(s) if !trim_newline(&s).is_empty() => Some(SecretString::from(trim_newline(&s).to_string())),
        Ok(_) => {
            cx.err(path, "the file is empty");
            None
        }
        Err(e) => {
            cx.err(path, format!("cannot read the file: {}", e.kind()));
            None
        }
    }
}

/// Names of query parameters or cookies: non-empty, printable ASCII without `=`, `;`, `&` or spaces.
fn names(cx: &mut Ctx<'_>, path: &str, list: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let Some(name) = cx.expand(&format!("{path}[{i}]"), raw) else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && !b"=;&".contains(&b)) {
            cx.err(format!("{path}[{i}]"), "not a parameter or cookie name (printable ASCII without = ; &)");
            continue;
        }
        out.push(name);
    }
    out
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
        // The kernel's random UUID: no crypto library initialised at start for a name suffix.
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
        let suffix: String = uuid.chars().filter(char::is_ascii_hexdigit).take(6).collect();
        format!("{host}-{suffix}")
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

fn interception(cx: &mut Ctx<'_>, raw: &RawInterception) -> Option<Interception> {
    let out = |cx: &mut Ctx<'_>, field: &str, v: &Option<String>| {
        let path = format!("interception.{field}");
        let p = cx.expand(&path, v.as_ref()?)?;
        if p.is_empty() || p.ends_with('/') {
            cx.err(path, "must be a file path");
            return None;
        }
        Some(PathBuf::from(p))
    };
    let ca_cert_out = out(cx, "ca_cert_out", &raw.ca_cert_out);
    let ca_bundle_out = out(cx, "ca_bundle_out", &raw.ca_bundle_out);
    let java_truststore_out = out(cx, "java_truststore_out", &raw.java_truststore_out);
    for (field, v) in [("ca_cert_out", &ca_cert_out), ("ca_bundle_out", &ca_bundle_out)] {
        if v.is_none() && !cx.errors.iter().any(|e| e.path == format!("interception.{field}")) {
            cx.err(format!("interception.{field}"), "is required (or run with --ca-dir)");
        }
    }
    let day = Duration::from_secs(24 * 3600);
    let ca_validity = cx.duration("interception.ca_validity", &raw.ca_validity, Interception::DEFAULT_VALIDITY);
    if !(day..=3650 * day).contains(&ca_validity) {
        cx.err("interception.ca_validity", "must be between 1d and 3650d");
    }
    let leaf_cache_size = match raw.leaf_cache_size {
        None => Interception::DEFAULT_LEAF_CACHE,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(_) => {
            cx.err("interception.leaf_cache_size", "must be between 1 and 1000000");
            Interception::DEFAULT_LEAF_CACHE
        }
    };
    let files = [&ca_cert_out, &ca_bundle_out, &java_truststore_out];
    let named: Vec<&PathBuf> = files.iter().filter_map(|f| f.as_ref()).collect();
    if (1..named.len()).any(|i| named[..i].contains(&named[i])) {
        cx.err("interception", "ca_cert_out, ca_bundle_out and java_truststore_out must be different files");
    }
    Some(Interception {
        ca_cert_out: ca_cert_out?,
        ca_bundle_out: ca_bundle_out?,
        java_truststore_out,
        ca_validity,
        leaf_cache_size,
    })
}
