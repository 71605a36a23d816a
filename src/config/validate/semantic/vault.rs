//! Semantic checks of a `vault` credential: the address, the login, the path and its fields.

use std::path::PathBuf;
use std::time::Duration;

use super::credential::{ca_file, endpoint, file, lifetime, nonempty};
use super::Ctx;
use crate::config::{RawClientCert, RawVault, RawVaultLogin};
use crate::policy::*;

/// Where the kubelet mounts a pod's ServiceAccount token.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Vault's address, namespace, CA, timeout and login: shared by credentials and client certificates.
#[allow(clippy::too_many_arguments)]
fn vault_login(
    cx: &mut Ctx<'_>,
    path: &str,
    addr: &str,
    namespace: &Option<String>,
    ca: &Option<String>,
    timeout: &Option<String>,
    login: &RawVaultLogin,
) -> Option<VaultLogin> {
    let addr = endpoint(cx, &format!("{path}.addr"), addr);
    if let Some(a) = &addr {
        if a.path() != "/" || a.query().is_some() {
            cx.err(format!("{path}.addr"), "Vault's address is scheme, host and port only (no path)");
        }
    }
    let namespace = namespace.as_ref().and_then(|n| nonempty(cx, &format!("{path}.namespace"), n));
    if namespace.as_ref().is_some_and(|n| n.bytes().any(|b| !(0x21..0x7f).contains(&b))) {
        cx.err(
            format!("{path}.namespace"),
            "a namespace is visible ASCII without spaces (it is sent as X-Vault-Namespace)",
        );
    }
    if ca.is_some() && addr.as_ref().is_some_and(|a| a.scheme_str() == Some("http")) {
        cx.err(format!("{path}.ca_file"), "Vault is reached over plain http here: a ca_file would not be used");
    }
    let ca_certs = ca_file(cx, path, ca);
    let timeout = cx.duration(&format!("{path}.timeout"), timeout, Duration::from_secs(10));
    let method = self::login(cx, &format!("{path}.login"), login);
    Some(VaultLogin { addr: addr?, namespace, ca_certs: ca_certs?, timeout, method: method? })
}

/// A Vault path: no `/v1/`, no empty, `.` or `..` segments, a plain alphabet.
fn vault_path(cx: &mut Ctx<'_>, at: &str, raw: &str) -> Option<String> {
    let read = nonempty(cx, at, raw)?;
    let read = read.trim_matches('/').to_string();
    if read.starts_with("v1/") || read.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        cx.err(at, "a Vault path without /v1/, empty, . or .. segments (example: database/creds/readonly)");
    }
    if read.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"-_./@+=".contains(&b))) {
        cx.err(at, "letters, digits and -_./@+= only");
    }
    Some(read)
}

pub(super) fn client_cert(cx: &mut Ctx<'_>, path: &str, c: &RawClientCert) -> Option<ClientCertSpec> {
    if cx.expand(&format!("{path}.source"), &c.source).as_deref() != Some("vault") {
        cx.err(format!("{path}.source"), "client certificates come from vault (its PKI engine)");
    }
    let login = vault_login(cx, path, &c.addr, &c.namespace, &c.ca_file, &c.timeout, &c.login);
    let at = format!("{path}.path");
    let issue = vault_path(cx, &at, &c.path)?;
    let segments: Vec<&str> = issue.split('/').collect();
    if segments.len() < 3 || segments[segments.len() - 2] != "issue" {
        cx.err(&at, "a PKI role's issue path, MOUNT/issue/ROLE");
    }
    let common_name = nonempty(cx, &format!("{path}.common_name"), &c.common_name)?;
    let ttl = cx.duration(&format!("{path}.ttl"), &c.ttl, Duration::from_secs(3600));
    if ttl < Duration::from_secs(10) {
        cx.err(format!("{path}.ttl"), "at least 10s");
    }
    Some(ClientCertSpec { login: login?, path: issue, common_name, ttl })
}

pub(super) fn vault(cx: &mut Ctx<'_>, path: &str, v: &RawVault) -> Option<CredentialSpec> {
    let login = vault_login(cx, path, &v.addr, &v.namespace, &v.ca_file, &v.timeout, &v.login);
    let read = vault_path(cx, &format!("{path}.path"), &v.path)?;
    let kind = if read.starts_with("identity/oidc/token/") {
        VaultKind::Identity
    } else if is_kv(&read) {
        let at = format!("{path}.refresh_interval");
        let every = cx.duration(&at, &v.refresh_interval, Duration::from_secs(60));
        if every < Duration::from_secs(1) {
            cx.err(&at, "at least 1s");
        }
        VaultKind::Kv { refresh_interval: every }
    } else {
        VaultKind::Lease
    };
    if v.refresh_interval.is_some() && !matches!(kind, VaultKind::Kv { .. }) {
        cx.err(format!("{path}.refresh_interval"), "only for KV version 2 paths (MOUNT/data/...)");
    }
    if matches!(kind, VaultKind::Kv { .. }) {
        for (field, set) in [
            ("default_ttl", v.default_ttl.is_some()),
            ("max_ttl", v.max_ttl.is_some()),
            ("expiry_margin", v.expiry_margin.is_some()),
        ] {
            if set {
                cx.err(
                    format!("{path}.{field}"),
                    "a KV value has no lifetime: it is read again every refresh_interval",
                );
            }
        }
    }
    let fields = match (&v.field, &v.fields, kind) {
        (Some(_), Some(_), _) => {
            cx.err(format!("{path}.fields"), "use field (one value) or fields (username and password), not both");
            return None;
        }
        (Some(f), None, _) => vec![nonempty(cx, &format!("{path}.field"), f)?],
        (None, None, VaultKind::Identity) => vec!["token".to_string()],
        (None, None, _) => {
            cx.err(format!("{path}.field"), "name the field injected (or fields: [username, password])");
            return None;
        }
        (None, Some(_), VaultKind::Identity) => {
            cx.err(format!("{path}.fields"), "an identity token is one value: use field");
            return None;
        }
        (None, Some(fs), _) => {
            if fs.len() != 2 {
                cx.err(format!("{path}.fields"), "two fields, username then password (for inject.basic: {})");
                return None;
            }
            let mut out = Vec::new();
            for (i, f) in fs.iter().enumerate() {
                out.push(nonempty(cx, &format!("{path}.fields[{i}]"), f)?);
            }
            out
        }
    };
    let life = lifetime(cx, path, &v.default_ttl, &v.max_ttl, &v.expiry_margin, v.revoke_on_shutdown);
    Some(CredentialSpec::Vault(Box::new(VaultSpec { login: login?, path: read, kind, fields, life })))
}

/// A KV version 2 read: a `data` segment after the mount (which may itself be nested), then the
/// secret's path (`secret/data/x`, `teams/kv/data/x`).
fn is_kv(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    segments.iter().enumerate().any(|(i, s)| *s == "data" && i >= 1 && i + 1 < segments.len())
}

fn login(cx: &mut Ctx<'_>, path: &str, l: &RawVaultLogin) -> Option<LoginMethod> {
    let method = cx.expand(&format!("{path}.method"), &l.method)?;
    // Fields of other methods are refused rather than silently ignored.
    let allowed: &[&str] = match method.as_str() {
        "jwt" | "kubernetes" => &["mount", "role", "jwt_file"],
        "approle" => &["mount", "role", "role_id", "secret_id_file"],
        "token" => &["token_file"],
        _ => {
            cx.err(format!("{path}.method"), "must be jwt, kubernetes, approle or token");
            return None;
        }
    };
    let given = [
        ("mount", l.mount.is_some()),
        ("role", l.role.is_some()),
        ("jwt_file", l.jwt_file.is_some()),
        ("role_id", l.role_id.is_some()),
        ("secret_id_file", l.secret_id_file.is_some()),
        ("token_file", l.token_file.is_some()),
    ];
    for (name, set) in given {
        if set && !allowed.contains(&name) {
            cx.err(format!("{path}.{name}"), format!("not a setting of the {method} login"));
        }
    }
    let required = |cx: &mut Ctx<'_>, name: &str, v: &Option<String>| -> Option<String> {
        match v {
            Some(v) => nonempty(cx, &format!("{path}.{name}"), v),
            None => {
                cx.err(format!("{path}.{name}"), format!("the {method} login needs {name}"));
                None
            }
        }
    };
    let mount = match &l.mount {
        Some(m) => {
            let m = nonempty(cx, &format!("{path}.mount"), m)?;
            let m = m.trim_matches('/').to_string();
            let name = |s: &str| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if !m.split('/').all(name) {
                cx.err(format!("{path}.mount"), "an auth mount path: letters, digits, - _ . and / (example: jwt)");
            }
            m
        }
        None => method.clone(),
    };
    let segment = |cx: &mut Ctx<'_>, name: &str, v: String| {
        if v.contains(['/', '?', '#', '%']) || v.chars().any(char::is_control) {
            cx.err(format!("{path}.{name}"), "one name, without / ? # %");
        }
        v
    };
    Some(match method.as_str() {
        "jwt" => {
            let role = required(cx, "role", &l.role).map(|r| segment(cx, "role", r));
            let jwt_file = required(cx, "jwt_file", &l.jwt_file).map(PathBuf::from);
            LoginMethod::Jwt { mount, role: role?, jwt_file: jwt_file? }
        }
        "kubernetes" => {
            let role = required(cx, "role", &l.role).map(|r| segment(cx, "role", r));
            let jwt_file = match &l.jwt_file {
                None => Some(PathBuf::from(SERVICE_ACCOUNT_TOKEN)),
                Some(_) => file(cx, format!("{path}.jwt_file"), &l.jwt_file),
            };
            LoginMethod::Kubernetes { mount, role: role?, jwt_file: jwt_file? }
        }
        "approle" => {
            let role =
                l.role.as_ref().and_then(|r| nonempty(cx, &format!("{path}.role"), r)).map(|r| segment(cx, "role", r));
            let role_id = required(cx, "role_id", &l.role_id);
            let secret_id_file = required(cx, "secret_id_file", &l.secret_id_file).map(PathBuf::from);
            LoginMethod::AppRole { mount, role, role_id: role_id?, secret_id_file: secret_id_file? }
        }
        _ => LoginMethod::Token { token_file: required(cx, "token_file", &l.token_file).map(PathBuf::from)? },
    })
}

/// Logins are named in metrics by their label: two different logins may not share one.
pub(super) fn distinct_labels(cx: &mut Ctx<'_>, tools: &[Tool]) {
    let mut seen: Vec<(String, &VaultLogin)> = Vec::new();
    let logins = tools.iter().flat_map(|t| {
        let cred = match &t.credential {
            Some(CredentialSpec::Vault(v)) => Some((&v.login, "credential")),
            _ => None,
        };
        cred.into_iter().chain(t.client_cert.as_ref().map(|c| (&c.login, "client_certificate"))).map(move |l| (t, l))
    });
    for (t, (login, field)) in logins {
        let label = login.label();
        match seen.iter().find(|(l, _)| *l == label) {
            Some((_, other)) if **other != *login => cx.err(
                format!("tools.{}.{field}.login", t.name),
                format!("another login is also named {label} but its settings differ (addr, namespace, ca_file, timeout or the login's own fields); logins are named METHOD:MOUNT/ROLE (token logins: token; approle: set role to tell them apart), so give every use of one login the same settings"),
            ),
            Some(_) => {}
            None => seen.push((label, login)),
        }
    }
}
