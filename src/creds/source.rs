//! What every rotating source returns, and the trait the lifecycle drives them through.

use std::future::Future;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use super::Token;

/// A freshly obtained token.
pub struct Fetched {
    /// The token.
    pub secret: SecretString,
    /// When it expires, as the authority stated it.
    pub expiry: Expiry,
    /// A Vault lease id, when there is one.
    pub lease_id: Option<String>,
    /// When the authority issued it, when it says (a KV version's creation time; a renewed
    /// lease keeps its first issue time). Else the moment the fetch began.
    pub issued_at: Option<SystemTime>,
    /// A new token, the same one with a longer lease, or the same one unchanged.
    pub kind: FetchKind,
    /// Requested and granted scopes (OAuth sources).
    pub scopes: Option<super::scopes::Scopes>,
}

impl Fetched {
    /// A new token with its stated expiry.
    pub fn new(secret: SecretString, expiry: Expiry) -> Self {
        Fetched { secret, expiry, lease_id: None, issued_at: None, kind: FetchKind::New, scopes: None }
    }
}

/// What a fetch brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A new token: `credential.issued` or `credential.refreshed`.
    New,
    /// The current token's lease renewed: `credential.renewed`, the issue time kept.
    Renewed,
    /// The current token read again and unchanged (a KV version already in use): no event.
    Unchanged,
}

/// How an authority stated a token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `expires_in` seconds from now.
    In(Duration),
    /// An absolute instant (a JWT's `exp`, a helper's `expires_at`).
    At(SystemTime),
    /// Not stated: the source's `default_ttl` applies.
    Unknown,
    /// It does not expire; read it again after this long (a KV secret).
    Never {
        /// When to read again.
        recheck: Duration,
    },
}

/// Why a fetch failed: a reason from a fixed set (a metric label) and a message without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// A label of `credproxy_credential_refresh_errors_total`.
    pub reason: &'static str,
    /// For status and logs; never contains a token, secret or response body.
    pub message: String,
    /// What a `Retry-After` asked for.
    pub retry_after: Option<Duration>,
    /// Fails the same way until the configuration changes (RFC 6749 §5.2 errors): back off to the cap.
    pub permanent: bool,
}

impl FetchError {
    /// A transient failure.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        FetchError { reason, message: message.into(), retry_after: None, permanent: false }
    }

    /// A failure that repeats until the configuration changes.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        FetchError { permanent: true, ..FetchError::new(reason, message) }
    }

    /// A local problem (a file credproxy needs is missing or unreadable, a key does not parse).
    pub fn local(message: impl Into<String>) -> Self {
        FetchError::new("local_error", message)
    }
}

/// The RFC 6749 §5.2 (and RFC 8693 §2.2.2) error codes reported by name; any other code is
/// reported as `invalid_response`, so a hostile server cannot mint metric labels.
pub fn oauth_error_code(code: &str) -> Option<&'static str> {
    const CODES: &[&str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "unsupported_token_type",
    ];
    CODES.iter().find(|c| **c == code).copied()
}

/// A token source the lifecycle drives. One value per credential task; it may keep state
/// between fetches (a rotated refresh token).
pub trait Source: Send + 'static {
    /// Obtain a new token.
    fn fetch(&mut self) -> impl Future<Output = Result<Fetched, FetchError>> + Send;

    /// Tell the authority a token is revoked (RFC 7009, a Vault lease), where the source can.
    fn revoke(&mut self, _token: &Token) -> impl Future<Output = Result<(), FetchError>> + Send {
        async { Ok(()) }
    }

    /// The next fetch must bring a new token (a rotate, an upstream `401`): no lease renewal.
    fn replace_next(&mut self) {}
}
