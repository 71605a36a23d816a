//! The per-tool slot the request path reads (one atomic load), the status the control API shows,
//! and the commands a credential's task accepts.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::window::Window;
use super::Token;
use crate::clock::Clock;

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

/// An upstream `401` forces a refresh at most this often per credential.
pub const FORCED_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Control-API rotate and revoke (one window for both) at most this often per credential: each
/// is an immediate call to the authority, and a loop must not get the client locked out there.
pub const COMMAND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One tool's published credential plus the status the control API shows.
#[derive(Debug)]
pub struct Slot {
    token: ArcSwapOption<Token>,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    last_error: Mutex<Option<String>>,
    next_refresh: Mutex<Option<SystemTime>>,
    /// An upstream `401` forces a refresh at most once per [`FORCED_REFRESH_EVERY`].
    pub forced: Window,
    /// Control-API rotate and revoke, together at most once per [`COMMAND_EVERY`].
    pub commands: Window,
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
            forced: Window::new(FORCED_REFRESH_EVERY),
            commands: Window::new(COMMAND_EVERY),
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

    /// Wait (at most `limit`) until a token other than `fingerprint` is published and usable.
    pub async fn wait_new(&self, fingerprint: &str, clock: &Clock, limit: std::time::Duration) -> Option<Arc<Token>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.published.notified();
            if let Some(t) = self.usable(clock.now()).filter(|t| t.fingerprint != fingerprint) {
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
