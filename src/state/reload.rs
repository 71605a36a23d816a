//! A new policy text becoming the one in force: validated, refused when it changes what only a
//! restart applies, installed otherwise (audited, counted, and loud about a mode change); and the
//! watcher that feeds it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::validate::read_capped;
use crate::fields;
use crate::policy::{Mode, Policy};

use super::Shared;

impl Shared {
    /// Validate new policy text: install it if valid, else keep the running one. Returns success.
    /// A policy that changes what only a restart applies (the listeners, their authentication,
    /// `instance_id`, `audit.output`) is rejected whole: a reload never weakens what the running
    /// listeners enforce.
    pub fn reload(&self, text: &str) -> bool {
        let now = SystemTime::now();
        self.metrics.config_last_reload_timestamp.set(crate::clock::unix(now).as_secs_f64());
        let parsed = crate::config::parse_with(text, &|name| std::env::var(name).ok(), now, &self.overrides);
        let rejected = match parsed {
            Ok(policy) => {
                let fields = restart_fields(&self.live.load().policy, &policy);
                let covered = match (fields.is_empty(), self.tls.get()) {
                    (true, Some(tls)) => tls.cover(&policy.intercepted_hosts()).map(|_| ()),
                    _ => Ok(()),
                };
                if let Err(e) = covered {
                    tracing::error!(path = %self.config_path.display(), error = %e, "policy rejected: its new intercepted hosts need a CA that could not be made; the running policy stays");
                    self.reject(fields! {"reason" => "ca_failed", "message" => e.to_string()});
                    return false;
                }
                if fields.is_empty() {
                    let tools = policy.tools.len();
                    let (from, to) = (self.live.load().policy.mode, policy.mode);
                    self.install(Arc::new(policy));
                    if from != to {
                        self.audit.emit("config.mode_changed", fields! {"from" => from.as_str(), "to" => to.as_str()});
                        announce_mode(to);
                    }
                    self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                    self.metrics.config_last_reload_success.set(1);
                    self.audit.emit(
                        "config.reloaded",
                        fields! {"path" => self.config_path.display().to_string(), "tools" => tools},
                    );
                    tracing::info!(path = %self.config_path.display(), tools, "policy reloaded");
                    return true;
                }
                tracing::error!(
                    path = %self.config_path.display(),
                    fields = %fields.join(", "),
                    "policy rejected: these fields take effect only at a restart; the running policy stays"
                );
                fields! {"reason" => "restart_required", "fields" => fields}
            }
            Err(errors) => {
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(path = %self.config_path.display(), "policy rejected; the running policy stays\n{errors}");
                fields! {"reason" => "invalid", "errors" => list}
            }
        };
        self.reject(rejected);
        false
    }

    fn reject(&self, why: serde_json::Map<String, serde_json::Value>) {
        self.metrics.config_reloads.with_label_values(&["error"]).inc();
        self.metrics.config_last_reload_success.set(0);
        let mut f = fields! {"path" => self.config_path.display().to_string()};
        f.extend(why);
        self.audit.emit("config.rejected", f);
    }

    /// Watch the policy file's folder and reload on change, debounced, until the process ends.
    /// `loaded` is the text in force: any other text found later is a change, however soon.
    pub fn spawn_reloader(self: &Arc<Self>, loaded: String) -> tokio::task::JoinHandle<()> {
        let shared = Arc::downgrade(self);
        let changes = self.watch.subscribe(&self.config_path);
        let path = self.config_path.clone();
        let read = move || {
            let path = path.clone();
            async move { tokio::task::spawn_blocking(move || read_capped(&path).ok()).await.ok().flatten() }
        };
        tokio::spawn(async move {
            let mut last = Some(loaded);
            loop {
                changes.changed(Duration::from_millis(200), None).await;
                // Read once (capped), compare, and validate those same bytes.
                let Some(text) = read().await.filter(|t| last.as_ref() != Some(t)) else { continue };
                let Some(shared) = shared.upgrade() else { return };
                // Off the runtime's threads: a reload may generate a CA and write its files.
                let text = tokio::task::spawn_blocking(move || {
                    shared.reload(&text);
                    text
                })
                .await;
                let Ok(text) = text else { continue };
                last = Some(text);
            }
        })
    }
}

/// Say loudly, in the operational log, which mode is now in force.
pub fn announce_mode(mode: Mode) {
    match mode {
        Mode::Report => tracing::warn!(
            mode = "report",
            "REPORT MODE: the policy is NOT enforced. Requests no route allows are forwarded with the \
             agent's own credentials and audited as request.would_deny; set mode: enforce to deny them"
        ),
        Mode::Enforce => {
            tracing::info!(mode = "enforce", "the policy is enforced: requests no route allows are denied")
        }
    }
}

/// The fields that differ between the running policy and a new one and take effect only at a
/// restart (the bound listeners, what they demand, the instance's identity, the audit output).
fn restart_fields(old: &Policy, new: &Policy) -> Vec<&'static str> {
    use secrecy::ExposeSecret;
    // Compared in place: no copy of a secret is made.
    fn secret(s: &Option<secrecy::SecretString>) -> Option<&str> {
        s.as_ref().map(|s| s.expose_secret())
    }
    let (a, b) = (&old.listen, &new.listen);
    [
        ("listen.proxy", a.proxy != b.proxy),
        ("listen.proxy_auth_file", secret(&a.proxy_auth) != secret(&b.proxy_auth)),
        ("listen.admin", a.admin != b.admin),
        ("listen.control", a.control != b.control),
        ("listen.control_auth_file", secret(&a.control_auth) != secret(&b.control_auth)),
        ("instance_id", old.instance_id != new.instance_id),
        ("audit.output", old.audit.file != new.audit.file),
        ("interception", old.interception != new.interception),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
