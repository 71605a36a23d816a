//! One task per credential: run its source, publish tokens, and record every step as metrics and audit.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use tokio::task::JoinHandle;

use super::{Slot, State, Token};
use crate::audit::Audit;
use crate::config::watch::FsWatch;
use crate::fields;
use crate::metrics::Metrics;
use crate::policy::{CredentialSpec, Inject};

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
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl CredCtx {
    /// Publish a fetched secret unless it is the one already published. Returns whether it was new.
    pub fn offer(&self, secret: SecretString, issued_at: SystemTime, expires_at: Option<SystemTime>) -> bool {
        let source = self.slot.source;
        let token = match Token::new(secret, &self.inject, issued_at, expires_at) {
            Ok(t) => t,
            Err(e) => {
                self.failure("invalid_response", &e.to_string());
                return false;
            }
        };
        if let Some(nb) = self.not_before {
            if issued_at < nb {
                if self.slot.state() != State::Revoked {
                    self.slot.clear(State::Revoked);
                    self.metrics.credential_valid.with_label_values(&[&self.tool]).set(0);
                    self.metrics.credential_revocations.with_label_values(&[&self.tool, "not_before"]).inc();
                    self.audit.emit(
                        "credential.revoked",
                        fields! {"tool" => &*self.tool, "source" => source, "credential_id" => &token.fingerprint,
                        "reason" => "not_before", "lease_id" => serde_json::Value::Null},
                    );
                    tracing::warn!(tool = %self.tool, credential_id = %token.fingerprint, "token issued before not_before; not used");
                }
                return false;
            }
        }
        if self.slot.current().is_some_and(|c| c.fingerprint == token.fingerprint) {
            return false;
        }
        let (fp, exp) = (token.fingerprint.clone(), token.expires_at);
        let previous = self.slot.publish(token);
        let m = &self.metrics;
        let tool: &str = &self.tool;
        m.credential_valid.with_label_values(&[tool]).set(1);
        m.credential_issued.with_label_values(&[tool]).set(secs(issued_at));
        m.credential_last_success.with_label_values(&[tool]).set(secs(SystemTime::now()));
        m.credential_consecutive_failures.with_label_values(&[tool]).set(0);
        m.credential_refreshes.with_label_values(&[tool, source, "ok"]).inc();
        match exp {
            Some(e) => m.credential_expiration.with_label_values(&[tool]).set(secs(e)),
            None => {
                let _ = m.credential_expiration.remove_label_values(&[tool]);
            }
        }
        let event = if previous.is_some() { "credential.refreshed" } else { "credential.issued" };
        self.audit.emit(
            event,
            fields! {"tool" => tool, "source" => source, "credential_id" => &fp,
            "expires_at" => exp.map(crate::audit::timestamp), "lease_id" => serde_json::Value::Null},
        );
        tracing::info!(tool, source, credential_id = %fp, "{event}");
        true
    }

    /// Record a failed fetch with a reason from the fixed set and a message without secrets.
    pub fn failure(&self, reason: &'static str, message: &str) {
        let source = self.slot.source;
        let tool: &str = &self.tool;
        let attempt = self.slot.record_failure(message.to_string());
        self.metrics.credential_refreshes.with_label_values(&[tool, source, "error"]).inc();
        self.metrics.credential_refresh_errors.with_label_values(&[tool, source, reason]).inc();
        self.metrics.credential_consecutive_failures.with_label_values(&[tool]).set(i64::from(attempt));
        self.audit.emit(
            "credential.refresh_failed",
            fields! {"tool" => tool, "source" => source, "reason" => reason, "message" => message,
            "attempt" => attempt, "retry_at" => serde_json::Value::Null},
        );
        tracing::warn!(tool, source, reason, attempt, "credential fetch failed: {message}");
    }
}

/// Fetch once now (at load time, so a credential that is there serves the first request), then
/// start the credential's task. Dropping the handle stops it.
pub fn spawn(spec: CredentialSpec, cx: CredCtx) -> TaskHandle {
    let path = match spec {
        // Read once, at start: nothing to watch.
        CredentialSpec::Env { var } => {
            super::env::run(&var, &cx);
            return TaskHandle(None);
        }
        CredentialSpec::File { path } => path,
    };
    let mut last_error = super::file::prime(&path, &cx);
    let handle = tokio::spawn(async move {
        loop {
            let run = tokio::spawn({
                let (path, cx, last_error) = (path.clone(), cx.clone(), last_error.take());
                async move { super::file::run(&path, &cx, last_error).await }
            });
            match run.await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    cx.metrics.credential_task_restarts.with_label_values(&[&cx.tool]).inc();
                    tracing::error!(tool = %cx.tool, "credential task panicked; restarting in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
    });
    TaskHandle(Some(handle))
}

/// Aborts the credential task when dropped (a reload replaced or removed the credential).
#[derive(Debug)]
pub struct TaskHandle(Option<JoinHandle<()>>);

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
