//! One task per credential: start its source under a supervisor that restarts it after a panic,
//! and record every step (publish, failure, expiry, revocation) as metrics and audit events.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::sync::{mpsc, Mutex};
use tokio::task::AbortHandle;

use super::scopes::Scopes;
use super::vault::login::Logins;
use super::{Command, Slot, State, Token};
use crate::audit::{timestamp, Audit};
use crate::clock::Clock;
use crate::config::watch::FsWatch;
use crate::fields;
use crate::metrics::Metrics;
use crate::outbound::Upstreams;
use crate::policy::{CredentialSpec, Inject, Refresh};

/// What a credential task needs besides its source settings.
#[derive(Clone)]
pub struct CredCtx {
    /// The tool's name.
    pub tool: Arc<str>,
    /// Where tokens are published.
    pub slot: Arc<Slot>,
    /// How tokens are injected (for the pre-built header value).
    pub inject: Inject,
    /// Tokens issued before this are revoked.
    pub not_before: Option<SystemTime>,
    /// Audit events.
    pub audit: Audit,
    /// Metrics.
    pub metrics: Metrics,
    /// File watcher.
    pub watch: Arc<FsWatch>,
    /// Time.
    pub clock: Clock,
    /// Connect settings (`resolve`, timeouts) for token endpoints.
    pub upstreams: Arc<Upstreams>,
    /// Vault logins, shared by the tools whose login settings are equal.
    pub logins: Arc<Logins>,
}

fn secs(t: SystemTime) -> f64 {
    crate::clock::unix(t).as_secs_f64()
}

impl CredCtx {
    /// File and env sources (no expiry): publish a secret unless it is the one already published.
    pub fn offer(&self, secret: SecretString, issued_at: SystemTime) -> bool {
        let token = match Token::new(secret, &self.inject, issued_at, None) {
            Ok(t) => t,
            Err(e) => {
                self.failure("invalid_response", &e.to_string(), None);
                return false;
            }
        };
        if self.not_before.is_some_and(|nb| issued_at < nb) {
            if self.slot.state() != State::Revoked {
                self.revoked("not_before");
                tracing::warn!(tool = %self.tool, credential_id = %token.fingerprint, "token issued before not_before; not used");
            }
            return false;
        }
        if self.slot.current().is_some_and(|c| c.fingerprint == token.fingerprint) {
            return false;
        }
        self.publish(token);
        true
    }

    /// Publish a token: metrics, `credential.issued` (the first) or `credential.refreshed` audit.
    pub fn publish(&self, token: Token) {
        let source = self.slot.source;
        let (fp, exp, issued_at, lease) =
            (token.fingerprint.clone(), token.expires_at, token.issued_at, token.lease_id.clone());
        let scopes = token.scopes.clone();
        let previous = self.install(token);
        let m = &self.metrics;
        let tool: &str = &self.tool;
        m.credential_issued.with_label_values(&[tool]).set(secs(issued_at));
        m.credential_last_success.with_label_values(&[tool]).set(secs(self.clock.now()));
        m.credential_refreshes.with_label_values(&[tool, source, "ok"]).inc();
        self.expiry_metrics(issued_at, exp);
        self.scope_excess(scopes.as_deref(), previous.as_ref().and_then(|p| p.scopes.as_deref()), &fp);
        let event = if previous.is_some() { "credential.refreshed" } else { "credential.issued" };
        self.audit.emit(
            event,
            fields! {"tool" => tool, "source" => source, "credential_id" => &fp,
            "expires_at" => exp.map(timestamp), "lease_id" => lease},
        );
        tracing::info!(tool, source, credential_id = %fp, "{event}");
    }

    /// The expiry and lifetime gauges of a token issued at `issued_at` (absent without expiry).
    fn expiry_metrics(&self, issued_at: SystemTime, exp: Option<SystemTime>) {
        let (m, tool): (_, &str) = (&self.metrics, &self.tool);
        match exp {
            Some(e) => {
                m.credential_expiration.with_label_values(&[tool]).set(secs(e));
                let life = e.duration_since(issued_at).unwrap_or_default();
                m.credential_lifetime.with_label_values(&[tool]).set(life.as_secs_f64());
            }
            None => {
                let _ = m.credential_expiration.remove_label_values(&[tool]);
                let _ = m.credential_lifetime.remove_label_values(&[tool]);
            }
        }
    }

    /// The scope-excess gauge of a new token (absent for a source without scopes), and
    /// `credential.scope_excess` when its excess differs from the previous token's.
    fn scope_excess(&self, scopes: Option<&Scopes>, before: Option<&Scopes>, fp: &str) {
        let (m, tool): (_, &str) = (&self.metrics, &self.tool);
        let Some(s) = scopes else {
            let _ = m.credential_scope_excess.remove_label_values(&[tool]);
            return;
        };
        let excess = s.excess();
        m.credential_scope_excess.with_label_values(&[tool]).set(excess.len() as i64);
        // Said once per change (as a set), not at every refresh.
        if !excess.is_empty() && before.map(Scopes::excess_set) != Some(s.excess_set()) {
            self.audit.emit(
                "credential.scope_excess",
                fields! {"tool" => tool, "source" => self.slot.source, "credential_id" => fp,
                "requested" => &s.requested, "granted" => &s.granted, "excess" => &excess, "stated_by" => s.stated_by},
            );
            tracing::warn!(tool, excess = %excess.join(" "), "the authority granted scopes that were not requested");
        }
    }

    /// The current token's lease was renewed: the same secret with a later expiry and its first
    /// issue time; `credential.renewed`, counted as a renewal only.
    pub fn renewed(&self, token: Token) {
        let (fp, exp, lease, issued_at) =
            (token.fingerprint.clone(), token.expires_at, token.lease_id.clone(), token.issued_at);
        self.install(token);
        let (m, tool): (_, &str) = (&self.metrics, &self.tool);
        m.credential_renewals.with_label_values(&[tool, "ok"]).inc();
        if exp.is_some() {
            self.expiry_metrics(issued_at, exp);
        }
        self.audit.emit(
            "credential.renewed",
            fields! {"tool" => tool, "source" => self.slot.source, "credential_id" => &fp,
            "expires_at" => exp.map(timestamp), "lease_id" => lease},
        );
        tracing::info!(tool, credential_id = %fp, "credential.renewed");
    }

    /// A renewal the authority refused (a new token is fetched instead).
    pub fn renewal_failed(&self, reason: &'static str, message: &str) {
        self.metrics.credential_renewals.with_label_values(&[&self.tool, "error"]).inc();
        tracing::warn!(tool = %self.tool, reason, "lease renewal failed; reading a new secret: {message}");
    }

    /// The token was read again and is unchanged: clear any failure, no event.
    pub fn confirmed(&self, token: Token) {
        if self.slot.current().is_none_or(|c| c.fingerprint != token.fingerprint) {
            return self.publish(token);
        }
        self.install(token);
        self.metrics.credential_last_success.with_label_values(&[&self.tool]).set(secs(self.clock.now()));
    }

    /// Put `token` in the slot and mark the credential valid with no failures; returns the
    /// token it replaced. The one step publish, renewal and confirmation share.
    fn install(&self, token: Token) -> Option<Arc<Token>> {
        let previous = self.slot.publish(token);
        let tool: &str = &self.tool;
        self.metrics.credential_valid.with_label_values(&[tool]).set(1);
        self.metrics.credential_consecutive_failures.with_label_values(&[tool]).set(0);
        previous
    }

    /// Record a failed fetch with a reason from the fixed set and a message without secrets.
    /// Returns the attempt number (failures since the last success).
    pub fn failure(&self, reason: &'static str, message: &str, retry_at: Option<SystemTime>) -> u32 {
        let source = self.slot.source;
        let tool: &str = &self.tool;
        let attempt = self.slot.record_failure(format!("{reason}: {message}"));
        self.metrics.credential_refreshes.with_label_values(&[tool, source, "error"]).inc();
        self.metrics.credential_refresh_errors.with_label_values(&[tool, source, reason]).inc();
        self.metrics.credential_consecutive_failures.with_label_values(&[tool]).set(i64::from(attempt));
        // The token still being served, if any, and until when.
        let current = self.slot.current();
        self.audit.emit(
            "credential.refresh_failed",
            fields! {"tool" => tool, "source" => source, "reason" => reason, "message" => message,
            "attempt" => attempt, "retry_at" => retry_at.map(timestamp),
            "credential_id" => current.as_ref().map(|t| t.fingerprint.clone()),
            "expires_at" => current.as_ref().and_then(|t| t.expires_at).map(timestamp),
            "lease_id" => current.as_ref().and_then(|t| t.lease_id.clone())},
        );
        tracing::warn!(tool, source, reason, attempt, "credential fetch failed: {message}");
        attempt
    }

    /// The token reached its end (expiry less margin) with nothing to replace it: empty the slot.
    pub fn expired(&self) {
        let Some(t) = self.slot.clear(State::Expired) else { return };
        self.metrics.credential_valid.with_label_values(&[&self.tool]).set(0);
        self.audit.emit(
            "credential.expired",
            fields! {"tool" => &*self.tool, "source" => self.slot.source, "credential_id" => &t.fingerprint,
            "expires_at" => t.expires_at.map(timestamp), "lease_id" => t.lease_id.clone()},
        );
        tracing::warn!(tool = %self.tool, credential_id = %t.fingerprint, "credential expired; requests get 503 until a new one is fetched");
    }

    /// Drop the token at once for `reason`; returns it (for revocation at the authority).
    pub fn revoked(&self, reason: &'static str) -> Option<Arc<Token>> {
        let t = self.slot.clear(State::Revoked);
        self.metrics.credential_valid.with_label_values(&[&self.tool]).set(0);
        self.metrics.credential_revocations.with_label_values(&[&self.tool, reason]).inc();
        self.audit.emit(
            "credential.revoked",
            fields! {"tool" => &*self.tool, "source" => self.slot.source, "reason" => reason,
            "credential_id" => t.as_ref().map(|t| t.fingerprint.clone()),
            "expires_at" => t.as_ref().and_then(|t| t.expires_at).map(timestamp),
            "lease_id" => t.as_ref().and_then(|t| t.lease_id.clone())},
        );
        tracing::warn!(tool = %self.tool, reason, "credential revoked");
        t
    }
}

/// Commands a rotating credential's task accepts before it blocks senders (they use `try_send`).
pub const COMMAND_QUEUE: usize = 8;

/// Start a credential: `file` and `env` are read once now (so a credential that is there serves
/// the first request) and `file` then watched; rotating sources run the lifecycle, taking
/// commands from `rx`. Dropping the handle stops the task.
pub fn spawn(spec: CredentialSpec, refresh: Refresh, cx: CredCtx, rx: Option<mpsc::Receiver<Command>>) -> TaskHandle {
    let run_cx = cx.clone();
    match (spec, rx) {
        (CredentialSpec::Env { var }, _) => {
            super::env::run(&var, &cx);
            TaskHandle(None)
        }
        (CredentialSpec::File { path }, _) => {
            let mut last_error = super::file::prime(&path, &cx);
            supervise(cx, move || {
                let (path, cx, last_error) = (path.clone(), run_cx.clone(), last_error.take());
                async move { super::file::run(&path, &cx, last_error).await }
            })
        }
        (spec, Some(rx)) => {
            // The receiver outlives a panicking run: the lock is released on unwind.
            let rx = Arc::new(Mutex::new(rx));
            supervise(cx, move || {
                let (spec, cx, rx) = (spec.clone(), run_cx.clone(), rx.clone());
                async move { super::lifecycle::run_spec(&spec, refresh, &cx, &mut *rx.lock().await).await }
            })
        }
        // `Shared::install` makes a command channel for every rotating source.
        (_, None) => TaskHandle(None),
    }
}

/// Run `run()` as the credential's task; when it panics, count it and start it again a second
/// later. The other credentials' tasks are untouched.
pub fn supervise<F, Fut>(cx: CredCtx, mut run: F) -> TaskHandle
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(async move {
        loop {
            let inner = tokio::spawn(run());
            // Aborting the supervisor (its handle dropped) aborts the run too.
            let _run = TaskHandle(Some(inner.abort_handle()));
            match inner.await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    cx.metrics.credential_task_restarts.with_label_values(&[&cx.tool]).inc();
                    cx.slot.record_failure("task_panicked: restarting".into());
                    tracing::error!(tool = %cx.tool, "credential task panicked; restarting in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
    });
    TaskHandle(Some(handle.abort_handle()))
}

/// Aborts a credential's task when dropped (a reload replaced or removed the credential).
#[derive(Debug)]
pub struct TaskHandle(Option<AbortHandle>);

impl TaskHandle {
    /// Abort `task` when this is dropped.
    pub fn new(task: AbortHandle) -> Self {
        TaskHandle(Some(task))
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
