//! A thin client for the Vault HTTP API on the shared outbound client: JSON in and out,
//! `X-Vault-Token` and `X-Vault-Namespace`, redirects only to the configured address, and
//! failures by status with Vault's own `errors` as text that never carries a secret.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::creds::authority::{self, Answer};
use crate::creds::source::FetchError;
use crate::outbound::{TokenClient, Upstreams};
use crate::policy::VaultLogin;

/// Redirects followed for one call (a standby node points at the active one, on the same address).
const MAX_REDIRECTS: usize = 3;
/// Longest Vault error text kept.
const MAX_ERROR_TEXT: usize = 300;

/// One Vault address with its TLS settings and namespace.
pub struct VaultClient {
    client: TokenClient,
    addr: Uri,
    namespace: Option<HeaderValue>,
    timeout: Duration,
}

impl VaultClient {
    /// A client for `login`'s address, built on the shared connector.
    pub fn new(login: &VaultLogin, upstreams: &Upstreams) -> Self {
        let tls = login.addr.scheme_str() == Some("https");
        VaultClient {
            client: upstreams.token_client(&login.ca_certs, tls),
            addr: login.addr.clone(),
            namespace: login.namespace.as_ref().and_then(|n| HeaderValue::try_from(n.as_str()).ok()),
            timeout: login.timeout,
        }
    }

    /// `METHOD /v1/PATH` with an optional token and JSON body. Returns the JSON answer (`Null`
    /// for an empty 2xx). `secrets` are the values sent (a JWT, a secret id) that must never
    /// appear in an error message, whatever Vault echoes.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<&Value>,
        secrets: &[&str],
    ) -> Result<Value, FetchError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut secrets = secrets.to_vec();
        if let Some(t) = token {
            secrets.push(t.expose_secret());
        }
        let mut uri = self.uri(&format!("/v1/{path}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let answer = self.send(&method, uri.clone(), token, body.clone()).await?;
            if answer.status == StatusCode::TEMPORARY_REDIRECT || answer.status == StatusCode::PERMANENT_REDIRECT {
                uri = self.redirect(&answer)?;
                continue;
            }
            return answer_json(&answer, SystemTime::now(), &secrets);
        }
        Err(FetchError::new("invalid_response", format!("Vault redirected more than {MAX_REDIRECTS} times")))
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, FetchError> {
        let mut parts = self.addr.clone().into_parts();
        parts.path_and_query =
            Some(path_and_query.parse().map_err(|_| FetchError::local("the Vault path is not a valid URL path"))?);
        Uri::from_parts(parts).map_err(|_| FetchError::local("cannot build the Vault URL"))
    }

    /// A redirect is followed only to the configured address (scheme, host and port): a token
    /// never goes anywhere else.
    fn redirect(&self, answer: &Answer) -> Result<Uri, FetchError> {
        let refused = || FetchError::new("invalid_response", "Vault redirected to another address; not followed");
        let loc = answer.headers.get(LOCATION).and_then(|l| l.to_str().ok()).ok_or_else(refused)?;
        let target: Uri = loc.parse().map_err(|_| refused())?;
        let same = match (target.scheme(), target.authority()) {
            (None, None) => true,
            (Some(s), Some(a)) => Some(s) == self.addr.scheme() && Some(a) == self.addr.authority(),
            _ => false,
        };
        let path = target.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if !same || !path.starts_with("/v1/") {
            return Err(refused());
        }
        self.uri(path)
    }

    async fn send(
        &self,
        method: &Method,
        uri: Uri,
        token: Option<&SecretString>,
        body: Bytes,
    ) -> Result<Answer, FetchError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(ACCEPT, "application/json")
            .body(Full::new(body.clone()))
            .map_err(|_| FetchError::local("cannot build the Vault request"))?;
        let h = req.headers_mut();
        if !body.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(t) = token {
            let mut v = HeaderValue::try_from(t.expose_secret())
                .map_err(|_| FetchError::local("the Vault token cannot go in a header"))?;
            v.set_sensitive(true);
            h.insert("x-vault-token", v);
        }
        if let Some(ns) = &self.namespace {
            h.insert("x-vault-namespace", ns.clone());
        }
        // Vault's own "request" header guards against browser-based CSRF on some endpoints.
        h.insert("x-vault-request", HeaderValue::from_static("true"));
        authority::send(&self.client, req, self.timeout, "Vault").await
    }
}

/// A Vault answer as JSON, or the failure its status means.
pub fn answer_json(a: &Answer, now: SystemTime, secrets: &[&str]) -> Result<Value, FetchError> {
    let s = a.status;
    if s.is_success() {
        if a.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&a.body)
            .map_err(|_| FetchError::new("invalid_response", "Vault's answer is not JSON"));
    }
    let text = error_text(&a.body, secrets);
    let said = |what: &str| match &text {
        Some(t) => format!("Vault answered {} ({what}): {t}", s.as_u16()),
        None => format!("Vault answered {} ({what})", s.as_u16()),
    };
    let mut e = match s {
        StatusCode::TOO_MANY_REQUESTS => FetchError::new("rate_limited", said("rate limited or a standby node")),
        StatusCode::SERVICE_UNAVAILABLE => FetchError::new("vault_unavailable", said("sealed or in maintenance")),
        s if s.is_server_error() => FetchError::new("http_5xx", said("server error")),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            FetchError::permanent("vault_denied", said("permission denied"))
        }
        StatusCode::BAD_REQUEST => FetchError::permanent("vault_invalid_request", said("refused")),
        StatusCode::NOT_FOUND => FetchError::permanent("vault_not_found", said("nothing at this path")),
        _ => FetchError::new("invalid_response", said("unexpected")),
    };
    e.retry_after = authority::retry_after(&a.headers, now);
    Err(e)
}

/// Vault's `errors` list, joined, stripped of anything secret-looking and capped.
pub fn error_text(body: &[u8], secrets: &[&str]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let errors: Vec<&str> = v.get("errors")?.as_array()?.iter().filter_map(Value::as_str).collect();
    if errors.is_empty() {
        return None;
    }
    let mut text = errors.join("; ");
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(*s, "[redacted]");
    }
    // Every run of token characters is judged on its own, whatever separates it (`token=…`).
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        out.push_str(if secret_like(run) { "[redacted]" } else { run });
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "._~+/-".contains(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    let mut out: String = out.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    Some(out)
}

/// A run that may be a token: a Vault token (`hvs.`, `hvb.`, `hvr.`, `s.`, `b.`, `r.`), a JWT,
/// or any run of 24 or more token characters (paths and lease ids are redacted too: safer).
fn secret_like(run: &str) -> bool {
    let vault = ["hvs.", "hvb.", "hvr.", "s.", "b.", "r."].iter().any(|p| run.starts_with(p) && run.len() >= 16);
    vault || run.starts_with("eyJ") || run.len() >= 24
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn redirect_to(location: Option<&str>) -> Result<Uri, FetchError> {
        let login = VaultLogin {
            addr: "https://vault.internal:8200".parse().unwrap(),
            namespace: None,
            ca_certs: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            method: crate::policy::LoginMethod::Token { token_file: "/t".into() },
        };
        let client = VaultClient::new(&login, &Upstreams::new());
        let mut headers = HeaderMap::new();
        if let Some(l) = location {
            headers.insert(LOCATION, HeaderValue::from_str(l).unwrap());
        }
        client.redirect(&Answer { status: StatusCode::TEMPORARY_REDIRECT, headers, body: Bytes::new() })
    }

    #[test]
    fn redirects_go_only_to_the_configured_address() {
        let ok = redirect_to(Some("https://vault.internal:8200/v1/secret/data/x")).unwrap();
        assert_eq!(ok.to_string(), "https://vault.internal:8200/v1/secret/data/x");
        let relative = redirect_to(Some("/v1/sys/leases/renew")).unwrap();
        assert_eq!(relative.to_string(), "https://vault.internal:8200/v1/sys/leases/renew");
        for refused in [
            Some("https://evil.example:8200/v1/secret/data/x"),
            Some("http://vault.internal:8200/v1/secret/data/x"),
            Some("https://vault.internal:8201/v1/secret/data/x"),
            Some("https://vault.internal:8200/ui/"),
            Some("//evil.example/v1/x"),
            None,
        ] {
            let e = redirect_to(refused).unwrap_err();
            assert_eq!(e.reason, "invalid_response", "{refused:?}");
        }
    }

    #[test]
    fn statuses_map_to_reasons() {
        let now = SystemTime::now();
        let reason = |s: u16| answer_json(&Answer::of(s, r#"{"errors":["x"]}"#), now, &[]).unwrap_err();
        assert_eq!(reason(429).reason, "rate_limited");
        assert!(!reason(429).permanent);
        assert_eq!(reason(503).reason, "vault_unavailable");
        assert!(!reason(503).permanent);
        assert_eq!(reason(500).reason, "http_5xx");
        assert_eq!(reason(403).reason, "vault_denied");
        assert!(reason(403).permanent);
        assert_eq!(reason(400).reason, "vault_invalid_request");
        assert!(reason(400).permanent);
        assert_eq!(reason(404).reason, "vault_not_found");
        assert_eq!(answer_json(&Answer::of(204, ""), now, &[]).unwrap(), Value::Null);
        assert_eq!(answer_json(&Answer::of(200, "{not json"), now, &[]).unwrap_err().reason, "invalid_response");
    }

    #[test]
    fn error_text_never_carries_a_secret() {
        let body = r#"{"errors":["invalid secret id 9f1c-secret-id-0042 for role; token hvs.CAESIJ0123456789abcdefghij rejected", "jwt eyJhbGciOi.eyJzdWIi.sig bad", "token=s.H0HBGUIUohhbR3pnv\n\t* password:AbcdefghijklmnopqrstuvwxyZ"]}"#;
        let t = error_text(body.as_bytes(), &["9f1c-secret-id-0042"]).unwrap();
        assert!(!t.contains("9f1c-secret-id-0042"), "{t}");
        assert!(!t.contains("hvs.CAESIJ"), "{t}");
        assert!(!t.contains("eyJhbGciOi"), "{t}");
        assert!(!t.contains("s.H0HBGUIU") && !t.contains("Abcdefghijklmnop"), "{t}");
        assert!(t.contains("invalid secret id [redacted] for role"), "{t}");
        assert!(t.contains("token=[redacted]") && t.contains("password:[redacted]"), "{t}");
        let e = answer_json(&Answer::of(400, body), SystemTime::now(), &["9f1c-secret-id-0042"]).unwrap_err();
        assert!(!e.message.contains("9f1c") && e.message.starts_with("Vault answered 400"), "{}", e.message);
        let long = format!(r#"{{"errors":["{}"]}}"#, "word ".repeat(200));
        assert!(error_text(long.as_bytes(), &[]).unwrap().chars().count() <= MAX_ERROR_TEXT + 1);
        assert_eq!(error_text(b"<html>", &[]), None);
    }
}
