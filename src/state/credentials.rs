//! The credentials and client certificates of one policy version: what each was started with,
//! starting them, carrying a token over a reload, and revoking what a reload lets go.

use std::sync::Arc;
use std::time::SystemTime;

use super::Shared;
use crate::creds::lifecycle;
use crate::creds::refresher::{self, CredCtx, TaskHandle};
use crate::creds::vault::pki::{self, CertCtx, CertSlot};
use crate::creds::Slot;
use crate::policy::{ClientCertSpec, CredentialSpec, Inject, Refresh, Tool};

/// What a running credential was started with; a reload restarts it when any of it changes.
#[derive(PartialEq)]
pub(super) struct CredKey {
    pub(super) spec: CredentialSpec,
    pub(super) inject: Inject,
    pub(super) not_before: Option<SystemTime>,
    pub(super) refresh: Refresh,
}

pub(super) struct CredEntry {
    pub(super) key: CredKey,
    pub(super) slot: Arc<Slot>,
    pub(super) _task: TaskHandle,
}

/// A running client certificate; a reload restarts it when its settings change.
pub(super) struct CertEntry {
    pub(super) key: ClientCertSpec,
    pub(super) slot: Arc<CertSlot>,
    pub(super) _task: TaskHandle,
}

impl Shared {
    /// The tool's client certificate: the running one when its settings are unchanged.
    pub(super) fn client_cert(&self, tool: &Tool, name: &Arc<str>, spec: &ClientCertSpec) -> Arc<CertSlot> {
        // Keyed on the settings alone: a change of `refresh` timing keeps the certificate in use.
        let key = spec.clone();
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = certs.get(&tool.name).filter(|e| e.key == key) {
            return e.slot.clone();
        }
        let cx = CertCtx {
            tool: name.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            clock: self.clock.clone(),
            logins: self.logins.clone(),
        };
        let (slot, task) = pki::spawn(spec.clone(), tool.refresh, cx);
        certs.insert(tool.name.clone(), CertEntry { key, slot: slot.clone(), _task: task });
        slot
    }

    fn ctx(&self, name: &Arc<str>, inject: &Inject, not_before: Option<SystemTime>, slot: Arc<Slot>) -> CredCtx {
        CredCtx {
            tool: name.clone(),
            slot,
            inject: inject.clone(),
            not_before,
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            watch: self.watch.clone(),
            clock: self.clock.clone(),
            upstreams: self.upstreams.clone(),
            logins: self.logins.clone(),
        }
    }

    /// Revoke the Vault lease of a credential a reload removed or changed.
    pub(super) fn revoke_lease(&self, name: &str, e: &CredEntry) {
        let Some(t) = e.slot.current().filter(|t| t.lease_id.is_some()) else { return };
        let CredentialSpec::Vault(_) = &e.key.spec else { return };
        let cx = self.ctx(&Arc::from(name), &e.key.inject, e.key.not_before, e.slot.clone());
        cx.revoked("reload");
        if let Some(revoke) = lifecycle::revoke_once(&e.key.spec, cx, t) {
            tokio::spawn(revoke);
        }
    }

    /// Start `tool`'s credential (new, or its settings changed from `old`). A rotating credential
    /// is fetched at once; the old entry's still-valid token serves meanwhile only when the whole
    /// credential specification and injection form are unchanged (a change of refresh timing or
    /// `not_before`): a token from another authority, client, audience or scope never goes
    /// toward the new settings. A new `not_before` revokes it (then it is also revoked at
    /// the authority: fleet-wide revocation through the ConfigMap).
    pub(super) fn start_credential(
        &self,
        tool: &Tool,
        name: &Arc<str>,
        key: CredKey,
        old: Option<&CredEntry>,
    ) -> CredEntry {
        let spec = &key.spec;
        let (tx, rx) = match spec.lifetime() {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(refresher::COMMAND_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let slot = Arc::new(Slot::new(spec.source(), tx));
        let cx = self.ctx(name, &tool.inject, tool.not_before, slot.clone());
        if let (Some(e), Some(t)) = (old, old.and_then(|e| e.slot.current())) {
            let revoked = tool.not_before.is_some_and(|nb| t.issued_at < nb);
            if revoked && e.key.not_before != tool.not_before {
                cx.revoked("not_before");
                // Revoked here, at the authority below: not again as the old entry goes.
                e.slot.clear(crate::creds::State::Revoked);
                if let Some(revoke) = lifecycle::revoke_once(&e.key.spec, cx.clone(), t) {
                    tokio::spawn(revoke);
                }
            } else if !revoked
                && t.lease_id.is_none()
                && spec.lifetime().is_some()
                && e.key.spec == *spec
                && e.key.inject == tool.inject
            {
                slot.carry_over(t);
            }
        }
        let task = refresher::spawn(spec.clone(), tool.refresh, cx, rx);
        CredEntry { key, slot, _task: task }
    }
}
