//! Semantic checks of a tool's `credential:` and `refresh:` settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::Ctx;
use crate::config::{RawCredential, RawExec, RawJwt, RawOAuth, RawRefresh};
use crate::policy::*;

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

pub(super) fn credential(cx: &mut Ctx<'_>, path: &str, c: &RawCredential) -> Option<CredentialSpec> {
    match c {
        RawCredential::File { path: p } => {
            let p = nonempty(cx, &format!("{path}.path"), p)?;
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
        RawCredential::OAuth2ClientCredentials(o) => oauth(cx, path, o, Kind::ClientCredentials),
        RawCredential::OAuth2TokenExchange(o) => oauth(cx, path, o, Kind::TokenExchange),
        RawCredential::OAuth2RefreshToken(o) => oauth(cx, path, o, Kind::RefreshToken),
        RawCredential::Jwt(j) => jwt(cx, path, j),
        RawCredential::Exec(e) => exec(cx, path, e),
        RawCredential::Vault(v) => super::vault::vault(cx, path, v),
    }
}

pub(super) fn refresh(cx: &mut Ctx<'_>, path: &str, r: Option<&RawRefresh>) -> Refresh {
    let d = Refresh::default();
    let Some(r) = r else { return d };
    let at = r.at.unwrap_or(d.at);
    let jitter = r.jitter.unwrap_or(d.jitter);
    if !(at > 0.0 && at < 1.0) {
        cx.err(format!("{path}.at"), "must be between 0 and 1 (a fraction of the token's lifetime)");
        return d;
    }
    if !(jitter >= 0.0 && at - jitter > 0.0 && at + jitter < 0.9) {
        cx.err(format!("{path}.jitter"), "at ± jitter must stay within (0, 0.9) of the lifetime");
        return d;
    }
    Refresh { at, jitter }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    ClientCredentials,
    TokenExchange,
    RefreshToken,
}

pub(super) fn nonempty(cx: &mut Ctx<'_>, path: &str, raw: &str) -> Option<String> {
    let s = cx.expand(path, raw)?;
    if s.is_empty() {
        cx.err(path, "must not be empty");
        return None;
    }
    Some(s)
}

pub(super) fn file(cx: &mut Ctx<'_>, path: String, raw: &Option<String>) -> Option<PathBuf> {
    raw.as_ref().and_then(|r| nonempty(cx, &path, r)).map(PathBuf::from)
}

/// A token or revocation endpoint: `https`, or `http` to a loopback host.
pub(super) fn endpoint(cx: &mut Ctx<'_>, path: &str, raw: &str) -> Option<http::Uri> {
    let uri = cx.uri(path, raw)?;
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Some(uri),
        Some("http") if loopback => Some(uri),
        Some("http") => {
            cx.err(path, "must be https (http only to a loopback host)");
            None
        }
        _ => {
            cx.err(path, "must be an absolute https URL");
            None
        }
    }
}

pub(super) fn lifetime(
    cx: &mut Ctx<'_>,
    path: &str,
    default_ttl: &Option<String>,
    max_ttl: &Option<String>,
    margin: &Option<String>,
    revoke_on_shutdown: bool,
) -> Lifetime {
    let d = Lifetime::default();
    let life = Lifetime {
        default_ttl: cx.duration(&format!("{path}.default_ttl"), default_ttl, d.default_ttl),
        max_ttl: cx.duration(&format!("{path}.max_ttl"), max_ttl, d.max_ttl),
        expiry_margin: cx.duration(&format!("{path}.expiry_margin"), margin, d.expiry_margin),
        revoke_on_shutdown,
    };
    if life.default_ttl > life.max_ttl {
        cx.err(format!("{path}.default_ttl"), "is longer than max_ttl");
    }
    life
}

fn oauth(cx: &mut Ctx<'_>, path: &str, o: &RawOAuth, kind: Kind) -> Option<CredentialSpec> {
    let token_url = endpoint(cx, &format!("{path}.token_url"), &o.token_url);
    let revocation_url = o.revocation_url.as_ref().and_then(|u| endpoint(cx, &format!("{path}.revocation_url"), u));
    let client_id = nonempty(cx, &format!("{path}.client_id"), &o.client_id);
    // Fields that belong to another grant are refused rather than silently ignored.
    let only = |cx: &mut Ctx<'_>, set: bool, field: &str, grant: Kind, name: &str| {
        if set && kind != grant {
            cx.err(format!("{path}.{field}"), format!("only for source: {name}"));
        }
    };
    let x = Kind::TokenExchange;
    only(cx, o.subject_token_file.is_some(), "subject_token_file", x, "oauth2_token_exchange");
    only(cx, o.subject_token_type.is_some(), "subject_token_type", x, "oauth2_token_exchange");
    only(cx, o.actor_token_file.is_some(), "actor_token_file", x, "oauth2_token_exchange");
    only(cx, o.actor_token_type.is_some(), "actor_token_type", x, "oauth2_token_exchange");
    only(cx, o.requested_token_type.is_some(), "requested_token_type", x, "oauth2_token_exchange");
    only(cx, o.refresh_token_file.is_some(), "refresh_token_file", Kind::RefreshToken, "oauth2_refresh_token");
    let grant = match kind {
        Kind::ClientCredentials => Grant::ClientCredentials,
        Kind::TokenExchange => {
            let subject = file(cx, format!("{path}.subject_token_file"), &o.subject_token_file);
            if o.subject_token_file.is_none() {
                cx.err(format!("{path}.subject_token_file"), "oauth2_token_exchange needs a subject_token_file");
            }
            let ty = |cx: &mut Ctx<'_>, f: &str, v: &Option<String>, d: &str| match v {
                Some(v) => nonempty(cx, &format!("{path}.{f}"), v),
                None => Some(d.to_string()),
            };
            let subject_token_type = ty(cx, "subject_token_type", &o.subject_token_type, JWT_TYPE)?;
            let actor_type = ty(cx, "actor_token_type", &o.actor_token_type, JWT_TYPE)?;
            let requested_token_type = ty(cx, "requested_token_type", &o.requested_token_type, ACCESS_TOKEN_TYPE)?;
            if o.actor_token_type.is_some() && o.actor_token_file.is_none() {
                cx.err(format!("{path}.actor_token_type"), "needs actor_token_file");
            }
            let actor = file(cx, format!("{path}.actor_token_file"), &o.actor_token_file).map(|f| (f, actor_type));
            Grant::TokenExchange { subject_token_file: subject?, subject_token_type, actor, requested_token_type }
        }
        Kind::RefreshToken => {
            if o.refresh_token_file.is_none() {
                cx.err(format!("{path}.refresh_token_file"), "oauth2_refresh_token needs a refresh_token_file");
            }
            Grant::RefreshToken {
                refresh_token_file: file(cx, format!("{path}.refresh_token_file"), &o.refresh_token_file)?,
            }
        }
    };
    let secret = file(cx, format!("{path}.client_secret_file"), &o.client_secret_file);
    let key = file(cx, format!("{path}.client_key_file"), &o.client_key_file);
    let auth_path = format!("{path}.client_auth");
    let method = o.client_auth.as_ref().and_then(|m| cx.expand(&auth_path, m));
    let client_auth = match (method.as_deref(), secret, key) {
        (None | Some("client_secret_basic"), Some(s), None) => ClientAuth::SecretBasic(s),
        (Some("client_secret_post"), Some(s), None) => ClientAuth::SecretPost(s),
        (None, None, None) => ClientAuth::None,
        (Some("private_key_jwt"), None, Some(key_file)) => {
            let alg_path = format!("{path}.client_key_alg");
            let alg = match o.client_key_alg.as_ref().and_then(|a| cx.expand(&alg_path, a)) {
                None => SignAlg::ES256,
                Some(a) => SignAlg::parse(&a).or_else(|| {
                    cx.err(&alg_path, "must be RS256, ES256 or EdDSA");
                    None
                })?,
            };
            let kid = o.client_key_id.as_ref().and_then(|k| nonempty(cx, &format!("{path}.client_key_id"), k));
            ClientAuth::PrivateKeyJwt { key_file, alg, kid }
        }
        (Some("private_key_jwt"), _, _) => {
            cx.err(auth_path, "private_key_jwt needs client_key_file and no client_secret_file");
            return None;
        }
        (Some("client_secret_basic" | "client_secret_post") | None, _, _) => {
            cx.err(
                auth_path,
                "client_secret_basic and client_secret_post need client_secret_file and no client_key_file",
            );
            return None;
        }
        (Some(_), _, _) => {
            cx.err(auth_path, "must be client_secret_basic, client_secret_post or private_key_jwt");
            return None;
        }
    };
    if !matches!(client_auth, ClientAuth::PrivateKeyJwt { .. })
        && (o.client_key_alg.is_some() || o.client_key_id.is_some())
    {
        cx.err(format!("{path}.client_key_alg"), "only with client_auth: private_key_jwt");
    }
    let ca_certs = ca_file(cx, path, &o.ca_file)?;
    let mut scopes = Vec::new();
    for (i, s) in o.scopes.iter().enumerate() {
        let at = format!("{path}.scopes[{i}]");
        let s = cx.expand(&at, s)?;
        if s.is_empty() || s.contains(' ') {
            cx.err(at, "a scope is one non-empty word");
        }
        scopes.push(s);
    }
    let audience = o.audience.as_ref().and_then(|a| nonempty(cx, &format!("{path}.audience"), a));
    let resource =
        o.resource.iter().enumerate().filter_map(|(i, r)| nonempty(cx, &format!("{path}.resource[{i}]"), r)).collect();
    if o.revoke_on_shutdown && o.revocation_url.is_none() {
        cx.err(format!("{path}.revoke_on_shutdown"), "needs revocation_url");
    }
    let timeout = cx.duration(&format!("{path}.timeout"), &o.timeout, Duration::from_secs(10));
    let life = lifetime(cx, path, &o.default_ttl, &o.max_ttl, &o.expiry_margin, o.revoke_on_shutdown);
    Some(CredentialSpec::OAuth(Box::new(OAuthSpec {
        grant,
        token_url: token_url?,
        client_id: client_id?,
        client_auth,
        scopes,
        audience,
        resource,
        revocation_url,
        ca_certs,
        timeout,
        life,
    })))
}

/// The certificates of an authority's `ca_file`, if it has one.
pub(super) fn ca_file(cx: &mut Ctx<'_>, path: &str, raw: &Option<String>) -> Option<Vec<CertificateDer<'static>>> {
    match raw {
        None => Some(Vec::new()),
        Some(p) => {
            let at = format!("{path}.ca_file");
            let p = cx.expand(&at, p)?;
            crate::certs::read_ca_file(std::path::Path::new(&p)).map_err(|m| cx.err(at, m)).ok()
        }
    }
}

fn jwt(cx: &mut Ctx<'_>, path: &str, j: &RawJwt) -> Option<CredentialSpec> {
    let key_file = nonempty(cx, &format!("{path}.key_file"), &j.key_file).map(PathBuf::from);
    let alg_path = format!("{path}.algorithm");
    let alg = cx.expand(&alg_path, &j.algorithm).and_then(|a| {
        SignAlg::parse(&a).or_else(|| {
            cx.err(&alg_path, "must be RS256, ES256 or EdDSA");
            None
        })
    });
    let kid = nonempty(cx, &format!("{path}.kid"), &j.kid);
    let issuer = nonempty(cx, &format!("{path}.issuer"), &j.issuer);
    let subject = nonempty(cx, &format!("{path}.subject"), &j.subject);
    let audience = nonempty(cx, &format!("{path}.audience"), &j.audience);
    let scopes =
        j.scopes.iter().enumerate().filter_map(|(i, s)| nonempty(cx, &format!("{path}.scopes[{i}]"), s)).collect();
    let ttl = cx.duration(&format!("{path}.ttl"), &j.ttl, Duration::from_secs(300));
    let life = lifetime(cx, path, &None, &None, &j.expiry_margin, false);
    if ttl > life.max_ttl {
        cx.err(format!("{path}.ttl"), "is longer than 24h");
    }
    Some(CredentialSpec::Jwt(Box::new(JwtSpec {
        key_file: key_file?,
        alg: alg?,
        kid: kid?,
        issuer: issuer?,
        subject: subject?,
        audience: audience?,
        scopes,
        ttl,
        life,
    })))
}

fn exec(cx: &mut Ctx<'_>, path: &str, e: &RawExec) -> Option<CredentialSpec> {
    let mut command = Vec::new();
    for (i, a) in e.command.iter().enumerate() {
        command.push(cx.expand(&format!("{path}.command[{i}]"), a)?);
    }
    if command.first().is_none_or(|c| c.is_empty()) {
        cx.err(format!("{path}.command"), "needs a program (a list: [program, args...])");
        return None;
    }
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in &e.env {
        let p = format!("{path}.env.{k}");
        let valid = !k.is_empty() && !k.contains(['=', '\0']);
        if !valid {
            cx.err(&p, "not an environment variable name");
        } else if let Some(v) = cx.expand(&p, v) {
            if v.contains('\0') {
                cx.err(&p, "a value may not contain NUL");
            }
            env.insert(k.clone(), v);
        }
    }
    let timeout = cx.duration(&format!("{path}.timeout"), &e.timeout, Duration::from_secs(10));
    let life = lifetime(cx, path, &e.default_ttl, &e.max_ttl, &e.expiry_margin, false);
    Some(CredentialSpec::Exec(Box::new(ExecSpec { command, env, timeout, life })))
}
