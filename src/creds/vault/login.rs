//! Vault logins: one per distinct login setting, shared by the tools that use it, each holding
//! this pod's own Vault token. One loop per login logs in, renews the token at `refresh.at` of
//! its TTL, logs in afresh when a renewal is refused or the token nears its max TTL, and revokes
//! it at shutdown when asked. Tools only read the published token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

mod run;

use super::client::VaultClient;
use crate::audit::{timestamp, Audit};
use crate::clock::Clock;
use crate::config::watch::FsWatch;
use crate::creds::source::FetchError;
use crate::creds::window::Window;
use crate::creds::Slot;
use crate::metrics::Metrics;
use crate::outbound::Upstreams;
use crate::policy::{Refresh, VaultLogin};

/// A tool's `403` makes the login start over at most this often.
const RELOGIN_EVERY: Duration = Duration::from_secs(10);
/// A token without expiry (a root or periodic token read from a file) is looked up this often.
const NO_EXPIRY_CHECK: Duration = Duration::from_secs(3600);

/// What every login needs from the process.
#[derive(Clone)]
pub struct LoginEnv {
    /// Metrics.
    pub metrics: Metrics,
    /// Audit events.
    pub audit: Audit,
    /// Time.
    pub clock: Clock,
    /// The shared connector.
    pub upstreams: Arc<Upstreams>,
    /// File watcher (token files).
    pub watch: Arc<FsWatch>,
}

/// Every login in use, by its settings.
pub struct Logins {
    map: Mutex<HashMap<VaultLogin, Arc<Login>>>,
    env: LoginEnv,
}

impl Logins {
    /// No logins yet.
    pub fn new(env: LoginEnv) -> Arc<Self> {
        Arc::new(Logins { map: Mutex::default(), env })
    }

    /// The login for `spec`, started on first use. A login renews at half its token's TTL,
    /// ± 10 % (the default `refresh`): it is shared, so no one tool's setting decides.
    pub fn get(&self, spec: &VaultLogin) -> Arc<Login> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(spec.clone()).or_insert_with(|| Login::start(spec, Refresh::default(), &self.env)).clone()
    }

    /// Keep only the logins in `keep`. The others' tools are gone; each stops when the last of
    /// its holders (a tool's task, a lease revocation under way) lets go. Its token is not
    /// revoked: that is for shutdown, and the tools' leases were revoked on their own.
    pub fn retain(&self, keep: &[&VaultLogin]) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|spec, login| {
            let kept = keep.contains(&spec);
            if !kept {
                let m = &self.env.metrics;
                let _ = m.vault_login_valid.remove_label_values(&[&login.label]);
                let _ = m.vault_login_expiration.remove_label_values(&[&login.label]);
            }
            kept
        });
    }

    /// Every login, for the control API.
    pub fn all(&self) -> Vec<Arc<Login>> {
        let mut all: Vec<_> = self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.label.cmp(&b.label));
        all
    }

    /// Stop every login, revoking the token of those `revoke` names; waits at most until `until`.
    pub async fn shutdown(&self, revoke: impl Fn(&VaultLogin) -> bool, until: Instant) {
        let mut acks = Vec::new();
        for login in self.all() {
            let (done, ack) = oneshot::channel();
            let cmd = LoginCommand::Shutdown { revoke: revoke(&login.spec), done };
            if login.commands.send(cmd).await.is_ok() {
                acks.push(ack);
            }
        }
        for ack in acks {
            if tokio::time::timeout_at(until, ack).await.is_err() {
                tracing::warn!("shutdown deadline reached before every Vault token was revoked");
                return;
            }
        }
    }
}

/// A Vault token and what is known of its lease.
pub struct VaultToken {
    secret: SecretString,
    /// `sha256:` + 12 hex of the token.
    pub fingerprint: String,
    /// When it was obtained.
    pub issued_at: SystemTime,
    /// When it expires (`None`: never, e.g. a root token).
    pub expires_at: Option<SystemTime>,
    /// Used only before this (its expiry less a margin).
    pub valid_until: Option<SystemTime>,
    /// Its end when no renewal can extend it (not renewable, or at its max TTL): the leases it
    /// creates end there too. `None` while it can still be renewed.
    pub final_end: Option<SystemTime>,
    /// The TTL it was created with (asked for again at each renewal).
    ttl: Duration,
    renewable: bool,
}

impl VaultToken {
    /// The token itself, for `X-Vault-Token`.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
}

/// A login's state, as the control API shows it.
#[derive(Default)]
struct Status {
    state: &'static str,
    failures: u32,
    last_error: Option<FetchError>,
    next_renewal: Option<SystemTime>,
}

enum LoginCommand {
    /// A tool could not reach Vault: watch for it to come back.
    Unreachable,
    /// A tool's read was refused with this token: log in again.
    Refused(String),
    /// Revoke the token when `revoke`, then stop.
    Shutdown { revoke: bool, done: oneshot::Sender<()> },
}

/// One login: its settings, its client, the published token and its status.
pub struct Login {
    /// The settings.
    pub spec: VaultLogin,
    /// `METHOD:MOUNT/ROLE` (or `token`): its name in metrics, status and audit.
    pub label: String,
    /// The client for this Vault address, shared with the login's tools.
    pub client: Arc<VaultClient>,
    token: ArcSwapOption<VaultToken>,
    status: Mutex<Status>,
    /// Woken at every login outcome, success or failure.
    published: Notify,
    waiters: Mutex<Vec<Weak<Slot>>>,
    relogin: Window,
    commands: mpsc::Sender<LoginCommand>,
}

impl Login {
    fn start(spec: &VaultLogin, refresh: Refresh, env: &LoginEnv) -> Arc<Login> {
        let (tx, rx) = mpsc::channel(8);
        let login = Arc::new(Login {
            spec: spec.clone(),
            label: spec.label(),
            client: Arc::new(VaultClient::new(spec, &env.upstreams)),
            token: ArcSwapOption::empty(),
            status: Mutex::new(Status { state: "pending", ..Status::default() }),
            published: Notify::new(),
            waiters: Mutex::default(),
            relogin: Window::new(RELOGIN_EVERY),
            commands: tx,
        });
        // The loop holds the login weakly: it ends when the last tool (and the registry) let go.
        tokio::spawn(run::run(Arc::downgrade(&login), env.clone(), refresh, rx));
        login
    }

    /// The current token when it is usable now; else the login's failure, or a wait of at most
    /// `wait` for the first login.
    pub async fn token(&self, now: impl Fn() -> SystemTime, wait: Duration) -> Result<Arc<VaultToken>, FetchError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.published.notified();
            if let Some(t) = self.usable(now()) {
                return Ok(t);
            }
            if let Some(e) = self.lock().last_error.clone() {
                return Err(FetchError {
                    message: format!("the Vault login {} failed: {}", self.label, e.message),
                    ..e
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(FetchError::new("timeout", format!("the Vault login {} has not finished", self.label)));
            }
        }
    }

    /// The token, if usable at `now`.
    pub fn usable(&self, now: SystemTime) -> Option<Arc<VaultToken>> {
        self.token.load_full().filter(|t| t.valid_until.is_none_or(|v| now < v))
    }

    /// A tool's read with `token` was refused: log in again (at most once per 10 s).
    pub fn refused(&self, token: &VaultToken) {
        if self.relogin.try_take().is_ok() {
            let _ = self.commands.try_send(LoginCommand::Refused(token.fingerprint.clone()));
        }
    }

    /// A tool could not reach Vault: the login watches `sys/health` and wakes the failing tools
    /// when Vault answers again.
    pub fn unreachable(&self) {
        let _ = self.commands.try_send(LoginCommand::Unreachable);
    }

    /// Wake `slot`'s task (when its reads are failing) after each new login or recovery.
    pub fn wake_on_recovery(&self, slot: &Arc<Slot>) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|s| s.strong_count() > 0);
        if !w.iter().any(|s| s.as_ptr() == Arc::as_ptr(slot)) {
            w.push(Arc::downgrade(slot));
        }
    }

    /// The control API's view: state, expiry, next renewal, failures, last error.
    pub fn describe(&self) -> Value {
        let t = self.token.load_full();
        let s = self.lock();
        json!({
            "login": self.label,
            "method": self.spec.method.name(),
            "state": s.state,
            "issued_at": t.as_ref().map(|t| timestamp(t.issued_at)),
            "expires_at": t.as_ref().and_then(|t| t.expires_at).map(timestamp),
            "next_renewal_at": s.next_renewal.map(timestamp),
            "consecutive_failures": s.failures,
            "last_error": s.last_error.as_ref().map(|e| format!("{}: {}", e.reason, e.message)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}
