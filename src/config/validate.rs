//! Raw policy -> validated [`Policy`]: parse with positions, then check everything, collecting
//! every error with its path in the document. No message ever echoes a value from the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::RawPolicy;
use crate::policy::Policy;

mod locate;
mod semantic;

pub(crate) use locate::line_of;
pub(crate) use semantic::trim_newline;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 32;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where in the document: `tools.github.routes[1].paths[0]`, or `(document)`.
    pub path: String,
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong; never contains a value from the file.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {}): {}", self.path, line, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} error{} in policy:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(path: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError { path: path.into(), line, message: message.into() }])
    }
}

/// What the command line sets over the policy file (`credproxy run --ca-dir`), applied to every
/// load and reload alike, so a reload never sees them as a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Turn interception on and write `ca.crt`, `ca-bundle.crt` and `truststore.p12` here.
    pub ca_dir: Option<PathBuf>,
    /// `listen.proxy` (`--proxy-listen`).
    pub proxy_listen: Option<std::net::SocketAddr>,
    /// `listen.admin` (`--admin-listen`).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// `listen.control` (`--control`).
    pub control: Option<crate::policy::ControlAddr>,
}

impl Overrides {
    fn apply(&self, raw: &mut RawPolicy) {
        // Set as text before validation, so the flags meet the same checks as the file (a
        // non-loopback proxy listener still needs `listen.proxy_auth_file`). The command line
        // refuses a `${` in a socket path, which expansion would otherwise read as a variable.
        if let Some(a) = self.proxy_listen {
            raw.listen.proxy = Some(a.to_string());
        }
        if let Some(a) = self.admin_listen {
            raw.listen.admin = Some(a.to_string());
        }
        if let Some(c) = &self.control {
            raw.listen.control = Some(c.to_string());
        }
        if let Some(dir) = &self.ca_dir {
            let out = |name: &str| Some(dir.join(name).to_string_lossy().into_owned());
            let block = raw.interception.get_or_insert_with(Default::default);
            block.ca_cert_out = out(CA_CERT_FILE);
            block.ca_bundle_out = out(CA_BUNDLE_FILE);
            block.java_truststore_out = out(TRUSTSTORE_FILE);
        }
    }
}

/// The CA certificate's file name under `--ca-dir`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The bundle's file name under `--ca-dir`.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.crt";
/// The Java trust store's file name under `--ca-dir`.
pub const TRUSTSTORE_FILE: &str = "truststore.p12";

/// Read and validate a policy file, with the process environment and the current time.
pub fn load_file(path: &Path) -> Result<Policy, ConfigErrors> {
    load_text(path, &Overrides::default()).map(|(_, policy)| policy)
}

/// [`load_file`] with overrides, also returning the text that was validated (the reloader's
/// starting point, so a change made just after start is never mistaken for the text in force).
pub fn load_text(path: &Path, overrides: &Overrides) -> Result<(String, Policy), ConfigErrors> {
    let text = read_capped(path).map_err(|m| ConfigErrors::one("(file)", None, m))?;
    let policy = parse_with(&text, &|name| std::env::var(name).ok(), SystemTime::now(), overrides)?;
    Ok((text, policy))
}

/// Read a file of at most [`MAX_POLICY_BYTES`].
pub fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() > MAX_POLICY_BYTES {
        return Err(format!("{} is larger than {MAX_POLICY_BYTES} bytes", path.display()));
    }
    String::from_utf8(buf).map_err(|_| format!("{} is not UTF-8", path.display()))
}

/// Validate policy text. `env` expands `${VAR}`; `now` bounds `not_before`.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>, now: SystemTime) -> Result<Policy, ConfigErrors> {
    parse_with(text, env, now, &Overrides::default())
}

/// [`parse`] with the command line's overrides applied before validation.
pub fn parse_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
    overrides: &Overrides,
) -> Result<Policy, ConfigErrors> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(ConfigErrors::one("(document)", None, format!("larger than {MAX_POLICY_BYTES} bytes")));
    }
    // First pass, untyped: syntax, duplicate keys, nesting depth.
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        // Keys are names from the schema or the user's tool names, never values: keep them.
        match msg.split_once(": duplicate entry with key ") {
            Some((path, key)) => ConfigErrors::one(path, line, format!("duplicate key {key}")),
            None if msg.starts_with("duplicate entry with key ") => {
                ConfigErrors::one("(document)", line, msg.replace("entry with key", "key"))
            }
            None => ConfigErrors::one("(document)", line, sanitize(msg)),
        }
    })?;
    if depth(&value) > MAX_DEPTH {
        return Err(ConfigErrors::one("(document)", None, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    // Second pass, typed, with the path of the first error.
    let de = serde_yaml::Deserializer::from_str(text);
    let mut raw: RawPolicy = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." || p.is_empty() => "(document)".to_string(),
            p => p,
        };
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        ConfigErrors::one(&path, line, sanitize(&inner.to_string()))
    })?;
    overrides.apply(&mut raw);
    semantic::check(raw, env, now).map_err(|mut errors| {
        for e in errors.0.iter_mut().filter(|e| e.line.is_none()) {
            e.line = locate::line_of(text, &e.path);
        }
        errors
    })
}

fn depth(v: &serde_yaml::Value) -> usize {
    match v {
        serde_yaml::Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
        serde_yaml::Value::Mapping(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_yaml::Value::Tagged(t) => 1 + depth(&t.value),
        _ => 0,
    }
}

/// Rewrite a serde/YAML message so that it names what was expected but never what was found:
/// `invalid type: string "sk-…", expected a boolean` becomes `invalid type, expected a boolean`.
pub fn sanitize(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    // serde_norway prefixes some messages with its own idea of the path: we report ours.
    const KINDS: [&str; 7] = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
        "missing field",
        "duplicate field",
    ];
    let msg = KINDS.iter().filter_map(|k| msg.find(k)).min().map_or(msg, |i| &msg[i..]);
    for kind in ["invalid type", "invalid value", "invalid length", "unknown variant"] {
        if let Some(rest) = msg.strip_prefix(kind) {
            return match rest.find("expected") {
                Some(i) => format!("{kind}, {}", &rest[i..]),
                None => kind.to_string(),
            };
        }
    }
    // Field names come from our schema, not from values: keep them.
    if ["unknown field", "missing field", "duplicate field"].iter().any(|p| msg.starts_with(p)) {
        return msg.to_string();
    }
    // Anything else: drop quoted spans, which may hold values.
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
