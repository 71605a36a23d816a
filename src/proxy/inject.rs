//! Attaching a tool's credential to a request: strip what the agent sent, inject the pre-built
//! header (or query parameter), and what an upstream `401` retry needs.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::HeaderMap;
use http::{Method, Request, Uri};

use super::body::UpstreamBody;
use super::target::Target;
use crate::clock::Clock;
use crate::creds::{Command, Slot, Token};
use crate::error::ProxyError;
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
    for name in strip {
        headers.remove(name);
    }
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

/// An upstream `401` forces a refresh at most this often per tool.
const FORCED_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The one place a request waits on a credential: the refresh a `401` forced.
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An upstream `401` to `used`: force one refresh of a rotating credential (at most once per
/// [`FORCED_REFRESH_EVERY`]) and, when the request kept its `headers` for a retry, wait up to
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
    if slot.control().is_none() || !slot.try_force(FORCED_REFRESH_EVERY) {
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
    let pq = match &query {
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

/// Replace `param` in a query string with the token (already percent-encoded).
fn with_param(query: Option<&str>, param: &str, value: &str) -> String {
    let mut out = String::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or(pair);
        if key != param {
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(param);
    out.push('=');
    out.push_str(value);
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
    }
}
