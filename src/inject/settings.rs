//! The pod template's `credproxy.dev/*` annotations, read and checked in full before anything in
//! the object changes: a bad value is an error naming its annotation, never a half-injected pod.

use serde_yaml::{Mapping, Value};

use super::contract as c;
use super::{InjectError, Options};

/// What a pod template asks for.
#[derive(Debug)]
pub enum Wanted {
    /// No `credproxy.dev/inject: "true"`.
    No,
    /// `credproxy.dev/status: injected`: done before, with these settings (containers added
    /// since, by another webhook or an edit, still get the variables and the CA).
    Already(Box<Settings>),
    /// Inject with these settings.
    Yes(Box<Settings>),
}

/// Everything the sidecar and the app containers get, from the annotations and the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The sidecar's image.
    pub image: String,
    /// The proxy port on loopback.
    pub proxy_port: u16,
    /// The admin port on the pod IP.
    pub admin_port: u16,
    /// CPU request, CPU limit, memory request, memory limit.
    pub resources: [String; 4],
    /// The policy ConfigMap.
    pub policy: String,
    /// The Secret, when named.
    pub secrets: Option<String>,
    /// The projected token's audience, when set.
    pub token_audience: Option<String>,
    /// Added to `NO_PROXY` after loopback.
    pub no_proxy: Vec<String>,
    /// Set in every app container.
    pub agent_env: Vec<(String, String)>,
    /// Our variables replace the user's.
    pub override_env: bool,
}

/// Read the annotations at `at` (`spec.template.metadata.annotations`, say).
pub fn read(annotations: Option<&Value>, at: &str, opts: &Options) -> Result<Wanted, InjectError> {
    let map = match annotations {
        None | Some(Value::Null) => return Ok(Wanted::No),
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(InjectError::new(at, "must be a mapping of strings")),
    };
    let a = Annotations { map, at };
    // Only a pod that asks for the sidecar is held to our annotations: a stray one elsewhere
    // never blocks a pod that did not opt in.
    if !a.flag(c::INJECT)? {
        return Ok(Wanted::No);
    }
    for key in map.keys() {
        if let Some(k) = key.as_str().filter(|k| k.starts_with(c::PREFIX)) {
            if !c::ANNOTATIONS.contains(&k) {
                return Err(a.err(k, format!("unknown annotation; known: {}", c::ANNOTATIONS.join(", "))));
            }
        }
    }
    let already = a.get(c::STATUS)? == Some(c::INJECTED);
    let Some(policy) = a.get(c::POLICY)? else {
        return Err(a.err(c::POLICY, "missing: name the ConfigMap holding the policy (key policy.yaml)"));
    };
    let policy = a.object_name(c::POLICY, policy)?;
    let secrets = a.get(c::SECRETS)?.map(|s| a.object_name(c::SECRETS, s)).transpose()?;
    let token_audience = a.get(c::TOKEN_AUDIENCE)?.map(|s| a.token(c::TOKEN_AUDIENCE, s)).transpose()?;
    let image = match a.get(c::IMAGE)? {
        Some(s) => a.token(c::IMAGE, s)?,
        None => opts.image.clone(),
    };
    let proxy_port = a.port(c::PROXY_PORT, c::DEFAULT_PROXY_PORT)?;
    let admin_port = a.port(c::ADMIN_PORT, c::DEFAULT_ADMIN_PORT)?;
    if proxy_port == admin_port {
        return Err(a.err(c::ADMIN_PORT, format!("{admin_port} is also the proxy port")));
    }
    let cpu = a.pair(c::CPU_REQUEST, c::DEFAULT_CPU_REQUEST, c::CPU_LIMIT, c::DEFAULT_CPU_LIMIT)?;
    let mem = a.pair(c::MEMORY_REQUEST, c::DEFAULT_MEMORY_REQUEST, c::MEMORY_LIMIT, c::DEFAULT_MEMORY_LIMIT)?;
    let no_proxy = match a.get(c::NO_PROXY)? {
        None => Vec::new(),
        Some(s) => list(s)
            .map(|h| a.token(c::NO_PROXY, h).and_then(|h| a.no_comma(c::NO_PROXY, h)))
            .collect::<Result<_, _>>()?,
    };
    let agent_env = match a.get(c::AGENT_ENV)? {
        None => Vec::new(),
        Some(s) => list(s).map(|kv| a.env_pair(kv)).collect::<Result<_, _>>()?,
    };
    let override_env = a.flag(c::OVERRIDE_ENV)?;
    let settings = Box::new(Settings {
        image,
        proxy_port,
        admin_port,
        resources: [cpu.0, cpu.1, mem.0, mem.1],
        policy,
        secrets,
        token_audience,
        no_proxy,
        agent_env,
        override_env,
    });
    Ok(if already { Wanted::Already(settings) } else { Wanted::Yes(settings) })
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

struct Annotations<'a> {
    map: &'a Mapping,
    at: &'a str,
}

impl<'a> Annotations<'a> {
    fn err(&self, key: &str, message: impl Into<String>) -> InjectError {
        InjectError::new(format!("{}[\"{key}\"]", self.at), message)
    }

    fn get(&self, key: &str) -> Result<Option<&'a str>, InjectError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.err(key, "must be a string (quote it: \"true\", \"15001\")")),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, InjectError> {
        match self.get(key)? {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(self.err(key, "must be \"true\" or \"false\"")),
        }
    }

    /// A value of one word: no whitespace or control characters, not empty.
    fn token(&self, key: &str, s: &str) -> Result<String, InjectError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 1024 || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(self.err(key, "must be one non-empty word without spaces"));
        }
        Ok(s.to_string())
    }

    fn no_comma(&self, key: &str, s: String) -> Result<String, InjectError> {
        if s.contains('*') {
            return Err(
                self.err(key, "a wildcard would send every request past credproxy; name hosts or .domain suffixes")
            );
        }
        match s.contains(['|', '"', '\'', '\\']) {
            true => Err(self.err(key, format!("{s:?} is not a host name, domain suffix or address"))),
            false => Ok(s),
        }
    }

    /// A ConfigMap or Secret name: an RFC 1123 subdomain.
    fn object_name(&self, key: &str, s: &str) -> Result<String, InjectError> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        match ok {
            true => Ok(s.to_string()),
            false => Err(self.err(key, format!("{s:?} is not a valid object name (lowercase RFC 1123 subdomain)"))),
        }
    }

    fn port(&self, key: &str, default: u16) -> Result<u16, InjectError> {
        match self.get(key)? {
            None => Ok(default),
            Some(s) => s
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| self.err(key, format!("{s:?} is not a port (1-65535)"))),
        }
    }

    fn quantity(&self, key: &str, default: &str) -> Result<(String, f64), InjectError> {
        let s = self.get(key)?.unwrap_or(default);
        match quantity(s) {
            Some(v) => Ok((s.to_string(), v)),
            None => Err(self.err(key, format!("{s:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"))),
        }
    }

    /// A request and its limit; the request may not exceed the limit.
    fn pair(&self, req: &str, req_d: &str, lim: &str, lim_d: &str) -> Result<(String, String), InjectError> {
        let (r, rv) = self.quantity(req, req_d)?;
        let (l, lv) = self.quantity(lim, lim_d)?;
        if rv > lv {
            let key = if self.map.contains_key(req) { req } else { lim };
            return Err(self.err(key, format!("the request {r} is above the limit {l}")));
        }
        Ok((r, l))
    }

    /// Errors name the variable, never its value: a value may be a key someone pasted in.
    fn env_pair(&self, kv: &str) -> Result<(String, String), InjectError> {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(self.err(c::AGENT_ENV, "an entry is not NAME=VALUE (entries are separated by commas)"));
        };
        let k = k.trim();
        let name_ok = k.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-');
        if !name_ok {
            return Err(self.err(c::AGENT_ENV, format!("{k:?} is not a variable name")));
        }
        if c::INJECTED_ENV.contains(&k) {
            return Err(self.err(c::AGENT_ENV, format!("{k} is the injector's own variable; it cannot be set here")));
        }
        if v.chars().any(char::is_control) {
            return Err(self.err(c::AGENT_ENV, format!("the value of {k} holds a control character")));
        }
        Ok((k.to_string(), v.to_string()))
    }
}

/// A Kubernetes quantity's value (`100m` → 0.1, `64Mi` → 67108864), or `None` when malformed.
pub fn quantity(s: &str) -> Option<f64> {
    let split = s.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let digits = num.replace('.', "");
    if digits.is_empty() || num.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => {
            let exp = e.strip_prefix(['e', 'E'])?;
            let exp: i32 = exp.parse().ok().filter(|_| !exp.is_empty() && !exp.starts_with('+'))?;
            10f64.powi(exp)
        }
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_reads_them() {
        assert_eq!(quantity("100m"), Some(0.1));
        assert_eq!(quantity("1"), Some(1.0));
        assert_eq!(quantity("0.5"), Some(0.5));
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("2G"), Some(2e9));
        for bad in ["", "m", "1.2.3", "10 m", "-1", "1x", "1e", "1e+3", "Mi", ".", "1mi"] {
            assert_eq!(quantity(bad), None, "{bad:?}");
        }
    }
}
