//! Talking to token endpoints as a careful client: form POSTs over the shared hyper/rustls
//! connector, no redirects, capped bodies, `Retry-After`, RFC 6749 §5.1/§5.2 answers checked,
//! and errors reported by code — never by echoing what the server sent.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::source::{oauth_error_code, Expiry, FetchError};
use crate::error::ProxyError;
use crate::outbound::TokenClient;

/// Largest token-endpoint body read.
pub const MAX_BODY: usize = 1024 * 1024;

/// An authority's answer, status and headers kept for error classification.
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_BODY`]).
    pub body: Bytes,
}

/// POST `form` to `url` within `timeout`, with HTTP Basic client authentication when given
/// (RFC 6749 §2.3.1: both parts form-encoded first).
pub async fn post_form(
    client: &TokenClient,
    url: &Uri,
    form: &[(&str, &str)],
    basic: Option<(&str, &SecretString)>,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        body.finish()
    };
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| FetchError::local("cannot build the token request"))?;
    if let Some((id, secret)) = basic {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", enc(id), enc(secret.expose_secret()));
        let mut v = HeaderValue::try_from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            .map_err(|_| FetchError::local("the client secret cannot go in a header"))?;
        v.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, v);
    }
    send(client, req, timeout, "the authority").await
}

/// Send `req` within `timeout` and read the answer (at most [`MAX_BODY`]); `who` names the
/// server in messages.
pub async fn send(
    client: &TokenClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    who: &str,
) -> Result<Answer, FetchError> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| classify_client_error(&e, who))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                FetchError::new("invalid_response", "the answer is larger than 1 MiB")
            } else {
                FetchError::new("unreachable", "the connection failed while reading the answer")
            }
        })?;
        Ok(Answer { status: parts.status, headers: parts.headers, body: body.to_bytes() })
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
        Err(FetchError::new("timeout", format!("no answer within {}", humantime::format_duration(timeout))))
    })
}

/// A client error as a fetch failure: the request path's classification, in the fetch's words.
fn classify_client_error(e: &hyper_util::client::legacy::Error, who: &str) -> FetchError {
    match crate::outbound::client_error(e) {
        ProxyError::UpstreamTimeout => FetchError::new("timeout", format!("connecting to {who} timed out")),
        ProxyError::UpstreamTls(m) => FetchError::new("unreachable", format!("TLS with {who} failed: {m}")),
        other => FetchError::new("unreachable", format!("cannot reach {who}: {other}")),
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86400)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
impl Answer {
    /// An answer with this status and body and no headers (unit tests of answer checks).
    pub(crate) fn of(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }
}

/// A successful token answer (RFC 6749 §5.1, RFC 8693 §2.2.1).
pub struct Issued {
    /// `access_token`.
    pub access_token: SecretString,
    /// From `expires_in`, else the JWT's `exp`, else unknown.
    pub expiry: Expiry,
    /// A rotated refresh token.
    pub refresh_token: Option<SecretString>,
    /// RFC 8693 `issued_token_type`.
    pub issued_token_type: Option<String>,
    /// The granted `scope`, when the answer states it.
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    access_token: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    issued_token_type: Option<String>,
    scope: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
}

/// Check an answer: a token on 2xx; otherwise the failure by its code, status or kind.
pub fn issued(a: &Answer, now: SystemTime) -> Result<Issued, FetchError> {
    let s = a.status;
    if !s.is_success() {
        let code = serde_json::from_slice::<ErrorBody>(&a.body).ok().and_then(|b| b.error);
        let mut e = match (s, code.as_deref().and_then(oauth_error_code)) {
            (StatusCode::TOO_MANY_REQUESTS, _) => FetchError::new("rate_limited", "429 Too Many Requests"),
            (s, _) if s.is_server_error() => FetchError::new("http_5xx", format!("status {}", s.as_u16())),
            (_, Some(code)) => {
                FetchError::permanent(code, format!("the authority answered {code} (status {})", s.as_u16()))
            }
            (s, None) if s.is_redirection() => {
                FetchError::new("invalid_response", format!("status {} (redirects are not followed)", s.as_u16()))
            }
            (s, None) => {
                FetchError::new("invalid_response", format!("status {} without an OAuth error code", s.as_u16()))
            }
        };
        e.retry_after = retry_after(&a.headers, now);
        return Err(e);
    }
    let bad = |m: &str| FetchError::new("invalid_response", m.to_string());
    let b: Body = serde_json::from_slice(&a.body).map_err(|_| bad("the answer is not a JSON token response"))?;
    let token = match b.access_token {
        Some(serde_json::Value::String(t)) if !t.is_empty() => t,
        _ => return Err(bad("the answer has no access_token")),
    };
    if token.len() > super::MAX_TOKEN_BYTES {
        return Err(bad("the access_token is longer than 8 KiB"));
    }
    let expiry = match b.expires_in {
        None | Some(serde_json::Value::Null) => jwt_exp(&token).map_or(Expiry::Unknown, Expiry::At),
        Some(v) => {
            let n = match &v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| bad("expires_in is not a number"))?;
            if n.is_nan() || n < 1.0 {
                return Err(bad("expires_in is zero or negative"));
            }
            let stated = Duration::from_secs_f64(n.min(1e9));
            // A JWT's own `exp` binds at the resource server; with whole-second claims it can
            // fall up to a second before now + expires_in. The earlier of the two wins.
            match jwt_exp(&token) {
                Some(exp) if exp < now + stated => Expiry::At(exp),
                _ => Expiry::In(stated),
            }
        }
    };
    Ok(Issued {
        access_token: SecretString::from(token),
        expiry,
        refresh_token: b.refresh_token.filter(|r| !r.is_empty()).map(SecretString::from),
        issued_token_type: b.issued_token_type,
        // A string (RFC 6749 §5.1); anything else is treated as not stated.
        scope: b.scope.and_then(|v| v.as_str().map(str::to_owned)),
    })
}

/// The claims of a JWT, read without verifying: they only inform (a refresh schedule, the
/// scopes granted), never authorise.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// The `exp` claim of a JWT, read without verifying (only to schedule the refresh).
pub fn jwt_exp(token: &str) -> Option<SystemTime> {
    let v = jwt_claims(token)?;
    let exp = v.get("exp")?.as_f64().filter(|e| *e > 0.0)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e11)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_forms() {
        let now = SystemTime::now();
        let ok = |b: &str| issued(&Answer::of(200, b), now).map(|i| i.expiry);
        assert_eq!(ok(r#"{"access_token":"t","expires_in":60}"#).unwrap(), Expiry::In(Duration::from_secs(60)));
        assert_eq!(ok(r#"{"access_token":"t","expires_in":"60"}"#).unwrap(), Expiry::In(Duration::from_secs(60)));
        assert_eq!(ok(r#"{"access_token":"t"}"#).unwrap(), Expiry::Unknown);
        assert!(ok(r#"{"access_token":"t","expires_in":0}"#).is_err());
        assert!(ok(r#"{"access_token":"t","expires_in":-5}"#).is_err());
        assert!(ok(r#"{"access_token":"t","expires_in":"soon"}"#).is_err());
        // A JWT's exp when expires_in is absent.
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":4000000000}"#);
        let jwt = format!("e30.{payload}.sig");
        let at = ok(&format!(r#"{{"access_token":"{jwt}"}}"#)).unwrap();
        assert_eq!(at, Expiry::At(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)));
        // With expires_in too, an earlier exp wins (whole-second claims).
        let soon = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 3;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{soon}}}"#));
        let at = ok(&format!(r#"{{"access_token":"e30.{payload}.sig","expires_in":4}}"#)).unwrap();
        assert_eq!(at, Expiry::At(SystemTime::UNIX_EPOCH + Duration::from_secs(soon)));
    }

    #[test]
    fn errors_by_code_never_by_body() {
        let now = SystemTime::now();
        let e =
            issued(&Answer::of(401, r#"{"error":"invalid_client","error_description":"secret s3cr3t wrong"}"#), now)
                .err()
                .unwrap();
        assert_eq!(e.reason, "invalid_client");
        assert!(e.permanent);
        assert!(!e.message.contains("s3cr3t"));
        let e = issued(&Answer::of(400, r#"{"error":"made_up_label"}"#), now).err().unwrap();
        assert_eq!(e.reason, "invalid_response");
        assert_eq!(issued(&Answer::of(502, "<html>"), now).err().unwrap().reason, "http_5xx");
        assert_eq!(issued(&Answer::of(302, ""), now).err().unwrap().reason, "invalid_response");
        assert_eq!(issued(&Answer::of(200, "{not json"), now).err().unwrap().reason, "invalid_response");
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::try_from(later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
    }
}
