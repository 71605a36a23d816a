//! Attaching a tool's credential to a request: strip what the agent sent, inject the pre-built
//! header (or query parameter), and what an upstream `401` retry needs.

use http::header::HeaderMap;
use http::{Method, Uri};

use super::target::Target;
use crate::creds::{Command, Slot, Token};
use crate::error::ProxyError;
use crate::policy::Inject;
use std::sync::Arc;
use std::time::SystemTime;

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
pub(super) const FORCED_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The one place a request waits on a credential: the refresh a `401` forced.
pub(super) const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The header a token goes in (`None` for query injection).
pub(super) fn injected_header(inject: &Inject) -> Option<http::HeaderName> {
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
        .authority(target.authority())
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
