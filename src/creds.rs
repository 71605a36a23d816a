//! Credentials: the token type with its pre-built injection form, the per-tool slot, and the
//! sources and lifecycle that fill it.
//!
//! The request path only ever calls [`Slot::usable`] and reads the token's pre-built header or
//! query value: one atomic load, no lock, no await, no I/O. Sources publish from their own task.

pub mod authority;
pub mod env;
pub mod exec;
pub mod file;
pub mod jwt;
pub mod lifecycle;
pub mod oauth;
pub mod refresher;
pub mod schedule;
pub mod scopes;
mod slot;
pub mod source;
pub mod vault;
pub mod window;
pub mod writeback;

pub use slot::{Command, Slot, State, COMMAND_EVERY, FORCED_REFRESH_EVERY};

use std::time::SystemTime;

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::policy::Inject;

/// A token with what the request path needs pre-built. `Debug` never shows the secret.
pub struct Token {
    secret: SecretString,
    /// `sha256:` + 12 hex digits of the token: the only form ever logged.
    pub fingerprint: String,
    /// When it was issued (for a file: its modification time).
    pub issued_at: SystemTime,
    /// When it expires, if the source says.
    pub expires_at: Option<SystemTime>,
    /// Injected only before this (its expiry less the margin); `None`: no expiry.
    pub valid_until: Option<SystemTime>,
    /// A Vault lease id.
    pub lease_id: Option<String>,
    /// Requested and granted scopes (OAuth sources).
    pub scopes: Option<std::sync::Arc<scopes::Scopes>>,
    /// The header value to inject, marked sensitive (header and basic injection).
    header: Option<HeaderValue>,
    /// The percent-encoded token (query injection).
    query: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("fingerprint", &self.fingerprint)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Empty or whitespace only.
    Empty,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLong,
    /// Contains bytes that cannot go in a header (control characters, non-ASCII).
    BadBytes,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Empty => "the token is empty",
            TokenError::TooLong => "the token is longer than 8 KiB",
            TokenError::BadBytes => "the token contains characters not allowed in a header",
        })
    }
}

/// Largest token accepted.
pub const MAX_TOKEN_BYTES: usize = 8192;

pub use crate::digest::{fingerprint, hex};

impl Token {
    /// Build a token and its pre-built injection form for `inject`.
    pub fn new(
        secret: SecretString,
        inject: &Inject,
        issued_at: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> Result<Self, TokenError> {
        let raw = secret.expose_secret();
        if raw.trim().is_empty() {
            return Err(TokenError::Empty);
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if raw.bytes().any(|b| !(0x21..0x7f).contains(&b) && b != b' ') {
            return Err(TokenError::BadBytes);
        }
        let (header, query) = match inject {
            Inject::Header { prefix, suffix, .. } => {
                let mut v =
                    HeaderValue::try_from(format!("{prefix}{raw}{suffix}")).map_err(|_| TokenError::BadBytes)?;
                v.set_sensitive(true);
                (Some(v), None)
            }
            Inject::Basic { username } => {
                let pair = match username {
                    Some(u) => format!("{u}:{raw}"),
                    None if raw.contains(':') => raw.to_string(),
                    None => return Err(TokenError::BadBytes),
                };
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::try_from(format!("Basic {b64}")).map_err(|_| TokenError::BadBytes)?;
                v.set_sensitive(true);
                (Some(v), None)
            }
            Inject::Query { .. } => (None, Some(percent_encode(raw))),
        };
        let fingerprint = fingerprint(raw);
        Ok(Token {
            fingerprint,
            secret,
            issued_at,
            expires_at,
            valid_until: expires_at,
            lease_id: None,
            scopes: None,
            header,
            query,
        })
    }

    /// Stop injecting `margin` before expiry.
    pub fn with_margin(mut self, margin: std::time::Duration) -> Self {
        self.valid_until = self.expires_at.map(|e| e.checked_sub(margin).unwrap_or(e));
        self
    }

    /// Whether the token may be injected at `now` (before expiry less the margin).
    pub fn usable_at(&self, now: SystemTime) -> bool {
        self.valid_until.is_none_or(|e| now < e)
    }

    /// The pre-built, sensitive header value (header and basic injection).
    pub fn header_value(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }

    /// The percent-encoded token (query injection).
    pub fn query_value(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The secret itself; only sources and revocation use it.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bearer() -> Inject {
        Inject::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".into(), suffix: String::new() }
    }

    #[test]
    fn token_prebuilds_sensitive_header_and_fingerprint() {
        let t = Token::new(SecretString::from("abc"), &bearer(), SystemTime::now(), None).unwrap();
        assert_eq!(t.fingerprint, "sha256:ba7816bf8f01");
        let slot = Slot::new("file", None);
        assert!(slot.usable(SystemTime::now()).is_none());
        slot.publish(t);
        let t = slot.usable(SystemTime::now()).unwrap();
        let h = t.header_value().unwrap();
        assert_eq!(h, "Bearer abc");
        assert!(h.is_sensitive());
        assert!(!format!("{:?}", slot.current().unwrap()).contains("abc"));
    }

    #[test]
    fn expired_token_is_never_returned() {
        let now = SystemTime::now();
        let t = Token::new(SecretString::from("x"), &bearer(), now, Some(now + Duration::from_secs(10))).unwrap();
        let slot = Slot::new("file", None);
        slot.publish(t);
        assert!(slot.usable(now).is_some());
        assert!(slot.usable(now + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn basic_and_query_forms() {
        let now = SystemTime::now();
        let t =
            Token::new(SecretString::from("p w"), &Inject::Basic { username: Some("u".into()) }, now, None).unwrap();
        assert_eq!(t.header.as_ref().unwrap(), "Basic dTpwIHc=");
        let t = Token::new(SecretString::from("a/b c"), &Inject::Query { param: "key".into() }, now, None).unwrap();
        assert_eq!(t.query.as_deref(), Some("a%2Fb%20c"));
    }

    #[test]
    fn refuses_bad_tokens() {
        let now = SystemTime::now();
        for (s, e) in [("  ", TokenError::Empty), ("a\nb", TokenError::BadBytes), ("é", TokenError::BadBytes)] {
            assert_eq!(Token::new(SecretString::from(s), &bearer(), now, None).unwrap_err(), e);
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(Token::new(SecretString::from(long), &bearer(), now, None).unwrap_err(), TokenError::TooLong);
    }
}
