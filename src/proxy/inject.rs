//! Attaching a tool's credential to a request: strip what the agent sent, inject the pre-built
//! header (or query parameter), and what an upstream `401` retry needs.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::HeaderMap;
use http::{Method, Request, Uri};

use super::target::Target;
use crate::body::UpstreamBody;
use crate::clock::Clock;
use crate::creds::{Command, Slot, Token};
use crate::error::ProxyError;
use crate::policy::path::percent_decode;
use crate::policy::{Inject, Tool};

/// Remove what the agent must not send (the tool's strip list, any case, every copy), then attach
/// the tool's token as a header. Returns the token used (its query form is the caller's to add).
/// The request path's one touch of a credential: a lock-free slot load, no await.
pub fn strip_and_inject(
    headers: &mut HeaderMap,
    strip: &[http::HeaderName],
    credential: Option<(&Slot, &Inject)>,
    max_header_bytes: usize,
    now: SystemTime,
) -> Result<Option<Arc<Token>>, ProxyError> {
    crate::body::strip_named(headers, strip);
    crate::body::strip_announced_trailers(headers, strip);
    let Some((slot, inject)) = credential else { return Ok(None) };
    let Some(token) = slot.usable(now) else {
        // A token past its end that the task has not cleared yet: the host was suspended, or
        // its wall clock jumped. Ask the task to look at the schedule again.
        if slot.current().is_some() {
            slot.command(Command::Check);
        }
        return Err(ProxyError::CredentialUnavailable);
    };
    let Some(name) = injected_header(inject) else { return Ok(Some(token)) };
    let value = token.header_value().ok_or(ProxyError::CredentialUnavailable)?.clone();
    if head_bytes(headers) + name.as_str().len() + value.len() + 4 > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    headers.insert(name, value);
    Ok(Some(token))
}

/// The one place a request waits on a credential: the refresh a `401` forced.
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An upstream `401` to `used`: force one refresh of a rotating credential (at most once per
/// [`crate::creds::FORCED_REFRESH_EVERY`]) and, when the request kept its `headers` for a retry, wait up to
/// [`RETRY_WAIT`] for the new token and return the request to send again with it.
pub(super) async fn after_401(
    slot: &Slot,
    clock: &Clock,
    tool: &Tool,
    target: &Target,
    method: &Method,
    used: &Token,
    headers: Option<HeaderMap>,
) -> Result<Option<(Request<UpstreamBody>, Arc<Token>)>, ProxyError> {
    if slot.control().is_none() || slot.forced.try_take().is_err() {
        return Ok(None);
    }
    slot.command(Command::Refresh { reason: "upstream_401" });
    tracing::warn!(tool = %tool.name, credential_id = %used.fingerprint, "upstream answered 401; refreshing the credential");
    let Some(mut headers) = headers else { return Ok(None) };
    let Some(new) = slot.wait_new(&used.fingerprint, clock, RETRY_WAIT).await else { return Ok(None) };
    if let (Some(v), Some(name)) = (new.header_value(), injected_header(&tool.inject)) {
        headers.insert(name, v.clone());
    }
    let mut again = Request::new(UpstreamBody::empty());
    *again.method_mut() = method.clone();
    *again.uri_mut() = upstream_uri(target, &tool.inject, Some(&new))?;
    *again.headers_mut() = headers;
    Ok(Some((again, new)))
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The header a token goes in (`None` for query injection).
fn injected_header(inject: &Inject) -> Option<http::HeaderName> {
    match inject {
        Inject::Header { name, .. } => Some(name.clone()),
        Inject::Basic { .. } => Some(http::header::AUTHORIZATION),
        Inject::Query { .. } => None,
    }
}

/// The upstream URL: the target, with the token's query parameter for query injection.
pub(super) fn upstream_uri(target: &Target, inject: &Inject, token: Option<&Token>) -> Result<Uri, ProxyError> {
    let query = match (inject, token) {
        (Inject::Query { param }, Some(t)) => {
            Some(with_param(target.query.as_deref(), param, t.query_value().unwrap_or("")))
        }
        _ => target.query.clone(),
    };
    target_uri(target, query.as_deref())
}

/// The target's URL with this query.
pub(super) fn target_uri(target: &Target, query: Option<&str>) -> Result<Uri, ProxyError> {
    let pq = match query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.clone(),
    };
    Uri::builder()
        .scheme(target.scheme.as_str())
        .authority(target.authority()?)
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("cannot build the upstream URL"))
}

/// Replace `param` in a query string with the token (already percent-encoded). The agent's own
/// parameters are compared by their decoded names, so `%6Bey=x` goes as surely as `key=x`.
fn with_param(query: Option<&str>, param: &str, value: &str) -> String {
    let mut out = String::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or(pair);
        if decode(key) != param.as_bytes() {
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(param);
    out.push('=');
    out.push_str(value);
    out
}

/// Percent-decode with `+` as a space, as forms do (a malformed escape stays as it is).
pub(super) fn decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    std::borrow::Cow::Owned(percent_decode(s.replace('+', " ").as_bytes()))
}

/// Response fields that can carry a URL back to the agent.
const URL_FIELDS: [http::HeaderName; 4] = [
    http::header::LOCATION,
    http::header::CONTENT_LOCATION,
    http::header::LINK,
    http::HeaderName::from_static("refresh"),
];

/// Query injection: an upstream may hand the URL it was called with back in a redirect or a
/// `Link`. Remove the injected parameter from every URL-carrying response field; a field that
/// still holds the token in any form after that is dropped whole.
pub(super) fn scrub_response(headers: &mut HeaderMap, param: &str, token: &Token) {
    use secrecy::ExposeSecret;
    let secret = token.secret().expose_secret();
    for field in &URL_FIELDS {
        if !headers.contains_key(field) {
            continue;
        }
        let values: Vec<http::HeaderValue> = headers.get_all(field).iter().cloned().collect();
        headers.remove(field);
        for v in values {
            let text = String::from_utf8_lossy(v.as_bytes());
            if !holds(&text, secret) {
                headers.append(field, v);
                continue;
            }
            let cleaned = remove_param(&text, param, secret);
            match http::HeaderValue::from_str(&cleaned) {
                Ok(v) if !holds(&cleaned, secret) => {
                    headers.append(field, v);
                }
                _ => tracing::warn!(field = %field, "dropped a response field that carried the injected credential"),
            }
        }
    }
}

/// Does `text` hold the secret, raw or percent-encoded in any way, up to four encodings deep
/// (a login redirect's `return_to` carries the original URL encoded once more)?
fn holds(text: &str, secret: &str) -> bool {
    let found = |b: &[u8]| b.windows(secret.len()).any(|w| w == secret.as_bytes());
    let mut layer = text.as_bytes().to_vec();
    for _ in 0..5 {
        let plus: Vec<u8> = layer.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        if found(&layer) || found(&percent_decode(&plus)) {
            return true;
        }
        let next = percent_decode(&layer);
        if next == layer {
            return false;
        }
        layer = next;
    }
    true
}

/// Remove every `param=VALUE` (after `?` or `&`) whose decoded value is the secret.
fn remove_param(text: &str, param: &str, secret: &str) -> String {
    const END: &[char] = &['&', '#', '>', '"', '\'', ' ', ';', ',', '<'];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['?', '&']) {
        let (sep, after) = (&rest[i..=i], &rest[i + 1..]);
        out.push_str(&rest[..i]);
        let end = after.find(END).unwrap_or(after.len());
        let pair = &after[..end];
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let hit = decode(k) == param.as_bytes()
            && (decode(v) == secret.as_bytes() || percent_decode(v.as_bytes()) == secret.as_bytes());
        if hit {
            // Keep a `?` for the parameters that follow; drop the pair and its separator.
            let tail = &after[end..];
            match (sep, tail.strip_prefix('&')) {
                ("?", Some(t)) => {
                    out.push('?');
                    rest = t;
                }
                _ => rest = tail,
            }
        } else {
            out.push_str(sep);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn head_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_replaced() {
        assert_eq!(with_param(None, "key", "T"), "key=T");
        assert_eq!(with_param(Some("a=1&key=agent&b=2"), "key", "T"), "a=1&b=2&key=T");
        assert_eq!(with_param(Some("key"), "key", "T"), "key=T");
        // Names compare decoded: encoded and plus forms of the agent's own parameter go too.
        assert_eq!(with_param(Some("%6Bey=x&a=1&k%65y=y&%6b%65%79"), "key", "T"), "a=1&key=T");
        assert_eq!(with_param(Some("api+key=x"), "api key", "T"), "api key=T");
    }

    fn token(secret: &str) -> Token {
        let inject = Inject::Query { param: "key".into() };
        Token::new(secret.to_string().into(), &inject, std::time::SystemTime::now(), None).unwrap()
    }

    fn scrubbed(field: &'static str, value: &str, secret: &str) -> Vec<String> {
        let mut h = HeaderMap::new();
        h.insert(http::HeaderName::from_static(field), value.parse().unwrap());
        h.insert("x-other", "kept".parse().unwrap());
        scrub_response(&mut h, "key", &token(secret));
        assert_eq!(h["x-other"], "kept");
        h.get_all(field).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn injected_query_value_never_comes_back_in_url_fields() {
        let s = "sk-T0k/en+1";
        let enc = "sk-T0k%2Fen%2B1";
        assert_eq!(scrubbed("location", &format!("/v1/items/?key={enc}"), s), ["/v1/items/"]);
        assert_eq!(scrubbed("location", &format!("/v1/items?a=1&key={enc}&b=2"), s), ["/v1/items?a=1&b=2"]);
        assert_eq!(scrubbed("location", &format!("/v1/items?key={enc}&b=2"), s), ["/v1/items?b=2"]);
        assert_eq!(scrubbed("content-location", "https://x/?KEY=1&key=sk-T0k%2fen%2b1", s), ["https://x/?KEY=1"]);
        assert_eq!(
            scrubbed("link", &format!("<https://api.example/v1?page=2&key={enc}>; rel=\"next\""), s),
            ["<https://api.example/v1?page=2>; rel=\"next\""]
        );
        assert_eq!(
            scrubbed("refresh", &format!("0; url=/next?key={s}"), "sk-plain"),
            [format!("0; url=/next?key={s}")]
        );
        assert_eq!(scrubbed("refresh", "0; url=/next?key=sk-plain", "sk-plain"), ["0; url=/next"]);
        // The token under another name, or in the path: the field goes whole.
        assert!(scrubbed("location", &format!("/v1/{enc}/x"), s).is_empty());
        assert!(scrubbed("location", &format!("/v1/x?token={enc}"), s).is_empty());
        // Encoded once more inside another parameter (a login page's return_to): dropped.
        let twice = "/login?return_to=%2Fv1%3Fkey%3Dsk-T0k%252Fen%252B1";
        assert!(scrubbed("location", twice, s).is_empty());
        // Unrelated URLs pass untouched.
        assert_eq!(scrubbed("location", "/v1/next?key=other", s), ["/v1/next?key=other"]);
    }
}
