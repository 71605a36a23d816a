//! Credentials: the token type, the per-tool slot the request path reads, and the store of slots.
//!
//! The request path only ever calls [`Slot::header`] (or [`Slot::query_value`]): one atomic load,
//! no lock, no await, no I/O. Sources publish into the slot from their own task.

pub mod authority;
pub mod env;
pub mod exec;
pub mod file;
pub mod jwt;
pub mod lifecycle;
pub mod oauth;
pub mod refresher;
pub mod schedule;
pub mod source;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ::http::HeaderValue;
use arc_swap::ArcSwapOption;
use base64::Engine;
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

/// `sha256:` + the first 12 hex digits of the SHA-256 of `secret`.
pub fn fingerprint(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut s = String::with_capacity(19);
    s.push_str("sha256:");
    for b in &d.as_ref()[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

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
                let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{raw}"));
                let mut v = HeaderValue::try_from(format!("Basic {b64}")).map_err(|_| TokenError::BadBytes)?;
                v.set_sensitive(true);
                (Some(v), None)
            }
            Inject::Query { .. } => (None, Some(percent_encode(raw))),
        };
        let fingerprint = fingerprint(raw);
        Ok(Token { fingerprint, secret, issued_at, expires_at, valid_until: expires_at, lease_id: None, header, query })
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

/// A credential's lifecycle state, as the control API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not fetched yet.
    Pending = 0,
    /// A usable token is published.
    Valid = 1,
    /// The last fetch failed; a previous token may still be served.
    Failing = 2,
    /// The token expired and nothing replaced it.
    Expired = 3,
    /// The token was revoked (for instance by `not_before`).
    Revoked = 4,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Valid => "valid",
            State::Failing => "failing",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Valid,
            2 => State::Failing,
            3 => State::Expired,
            4 => State::Revoked,
            _ => State::Pending,
        }
    }
}

/// What the control API, the request path and shutdown ask of a rotating credential's task.
#[derive(Debug)]
pub enum Command {
    /// Fetch a new token now (control API `rotate`, or an upstream `401`); the current one
    /// serves until the new one is published.
    Refresh {
        /// `rotate` or `upstream_401`.
        reason: &'static str,
    },
    /// Drop the token at once, revoke it at the authority where possible, fetch a new one.
    Revoke {
        /// `api` or `not_before`.
        reason: &'static str,
    },
    /// Re-check the schedule against the wall clock (the request path saw an expired token).
    Check,
    /// Revoke at the authority if `revoke_on_shutdown`, then stop; answers when done.
    Shutdown(tokio::sync::oneshot::Sender<()>),
}

/// One tool's published credential plus the status the control API shows.
#[derive(Debug)]
pub struct Slot {
    token: ArcSwapOption<Token>,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    last_error: Mutex<Option<String>>,
    next_refresh: Mutex<Option<SystemTime>>,
    /// Monotonic milliseconds (since `epoch`) of the last 401-forced refresh.
    forced_ms: AtomicU64,
    epoch: tokio::time::Instant,
    /// Woken whenever a token is published.
    published: tokio::sync::Notify,
    /// The task's command channel (rotating sources only).
    control: Option<tokio::sync::mpsc::Sender<Command>>,
    /// The source name (`file`, `env`, ...).
    pub source: &'static str,
}

impl Slot {
    /// An empty slot for a source.
    pub fn new(source: &'static str, control: Option<tokio::sync::mpsc::Sender<Command>>) -> Self {
        Slot {
            token: ArcSwapOption::empty(),
            state: AtomicU8::new(State::Pending as u8),
            consecutive_failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
            next_refresh: Mutex::new(None),
            forced_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            published: tokio::sync::Notify::new(),
            control,
            source,
        }
    }

    /// Send a command to the credential's task without waiting; false when it has no task or
    /// its queue is full (a command of the same kind is then already pending).
    pub fn command(&self, c: Command) -> bool {
        self.control.as_ref().is_some_and(|tx| tx.try_send(c).is_ok())
    }

    /// The task's command channel.
    pub fn control(&self) -> Option<&tokio::sync::mpsc::Sender<Command>> {
        self.control.as_ref()
    }

    /// Whether an upstream `401` may force a refresh now: at most once per `every`. Lock-free.
    pub fn try_force(&self, every: std::time::Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + every.as_millis() as u64;
        let last = self.forced_ms.load(Ordering::Acquire);
        now >= last + every.as_millis() as u64
            && self.forced_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Wait (at most `limit`) until a token other than `fingerprint` is published and usable.
    pub async fn wait_new(
        &self,
        fingerprint: &str,
        now: impl Fn() -> SystemTime,
        limit: std::time::Duration,
    ) -> Option<Arc<Token>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.published.notified();
            if let Some(t) = self.usable(now()).filter(|t| t.fingerprint != fingerprint) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// When the task plans its next fetch.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        *self.next_refresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record when the task plans its next fetch.
    pub fn set_next_refresh(&self, at: Option<SystemTime>) {
        *self.next_refresh.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// The current token, if one is published.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.token.load_full()
    }

    /// Request path: the published token, if it is usable at `now` (never an expired one).
    pub fn usable(&self, now: SystemTime) -> Option<Arc<Token>> {
        self.token.load_full().filter(|t| t.usable_at(now))
    }

    /// Publish a new token; returns the previous one.
    pub fn publish(&self, token: Token) -> Option<Arc<Token>> {
        self.state.store(State::Valid as u8, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let old = self.token.swap(Some(Arc::new(token)));
        self.published.notify_waiters();
        old
    }

    /// Install a still-valid token from the previous policy version's slot (no event: it was
    /// already announced).
    pub fn carry_over(&self, token: Arc<Token>) {
        self.state.store(State::Valid as u8, Ordering::Release);
        self.token.store(Some(token));
    }

    /// Drop the token (revoked or expired).
    pub fn clear(&self, state: State) -> Option<Arc<Token>> {
        self.state.store(state as u8, Ordering::Release);
        self.token.swap(None)
    }

    /// Record a failed fetch; the published token (if any) stays.
    pub fn record_failure(&self, message: String) -> u32 {
        // "expired" and "revoked" say more than "failing" while nothing is published.
        let keep = self.token.load().is_none() && matches!(self.state(), State::Expired | State::Revoked);
        if !keep {
            self.state.store(State::Failing as u8, Ordering::Release);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The lifecycle state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    /// The last error message (never contains a secret).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
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
        let t = Token::new(SecretString::from("p w"), &Inject::Basic { username: "u".into() }, now, None).unwrap();
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
