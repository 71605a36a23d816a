//! A tool's client certificate from Vault's PKI engine (`pki/issue/ROLE`): issued with the pod's
//! own login, presented by the tool's upstream TLS client (mTLS), and rotated like a token — one
//! loop that re-issues at `refresh.at` of its lifetime and drops it near its end. New connections
//! take the new certificate; pooled ones keep theirs, and pools are never shared between tools.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::Method;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};

use super::login::Logins;
use crate::audit::{timestamp, Audit};
use crate::clock::{unit_random, Clock};
use crate::creds::refresher::TaskHandle;
use crate::creds::schedule;
use crate::creds::source::FetchError;
use crate::fields;
use crate::metrics::Metrics;
use crate::policy::{ClientCertSpec, Lifetime, Refresh};

/// An issued certificate with its key, ready for handshakes.
pub struct Issued {
    key: Arc<CertifiedKey>,
    /// The serial number as Vault prints it (`aa:bb:…`): not a secret.
    pub serial: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Its `notAfter`.
    pub expires_at: SystemTime,
    /// Presented only before this (its end less the margin).
    valid_until: SystemTime,
}

/// The tool's current client certificate; the upstream TLS client asks it at every handshake.
pub struct CertSlot {
    current: ArcSwapOption<Issued>,
    clock: Clock,
    failures: std::sync::atomic::AtomicU32,
    last_error: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serial = self.current.load().as_ref().map(|i| i.serial.clone());
        f.debug_struct("CertSlot").field("serial", &serial).finish_non_exhaustive()
    }
}

impl CertSlot {
    /// The certificate in use, if any.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    /// Failed issues since the last success, and the last one's reason and message.
    pub fn failures(&self) -> (u32, Option<String>) {
        let n = self.failures.load(std::sync::atomic::Ordering::Acquire);
        (n, self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn record(&self, failures: u32, error: Option<String>) {
        self.failures.store(failures, std::sync::atomic::Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The certificate, if it may be presented at `now`.
    pub fn usable(&self, now: SystemTime) -> Option<Arc<Issued>> {
        self.current.load_full().filter(|i| now < i.valid_until)
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.usable(self.clock.now()).map(|i| i.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What the certificate's loop reports to.
pub struct CertCtx {
    /// The tool.
    pub tool: Arc<str>,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit events.
    pub audit: Audit,
    /// Time.
    pub clock: Clock,
    /// Vault logins (shared with the tools' credentials).
    pub logins: Arc<Logins>,
}

/// Start the tool's certificate loop; the slot is empty until the first issue.
pub fn spawn(spec: ClientCertSpec, refresh: Refresh, cx: CertCtx) -> (Arc<CertSlot>, TaskHandle) {
    let slot = Arc::new(CertSlot {
        current: ArcSwapOption::empty(),
        clock: cx.clock.clone(),
        failures: Default::default(),
        last_error: Default::default(),
    });
    let task = tokio::spawn(run(spec, refresh, cx, slot.clone()));
    (slot, TaskHandle::new(task.abort_handle()))
}

async fn run(spec: ClientCertSpec, refresh: Refresh, cx: CertCtx, slot: Arc<CertSlot>) {
    let login = cx.logins.get(&spec.login);
    let (clock, tool): (_, &str) = (cx.clock.clone(), &cx.tool);
    let mut end: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let started = (clock.now(), clock.mono());
        match issue(&spec, &login, &cx).await {
            Ok(issued) => {
                failures = 0;
                slot.record(0, None);
                let ttl = issued.expires_at.duration_since(started.0).unwrap_or_default();
                let margin = schedule::margin(ttl, &Lifetime::default());
                end = Some(started.1 + ttl.saturating_sub(margin));
                let (serial, exp) = (issued.serial.clone(), issued.expires_at);
                let event = if slot.current.swap(Some(Arc::new(issued))).is_some() {
                    "client_certificate.refreshed"
                } else {
                    "client_certificate.issued"
                };
                cx.metrics.client_cert_issues.with_label_values(&[tool, "ok"]).inc();
                let exp_secs = crate::clock::unix(exp).as_secs_f64();
                cx.metrics.client_cert_expiration.with_label_values(&[tool]).set(exp_secs);
                cx.audit.emit(event, fields! {"tool" => tool, "serial" => &serial, "expires_at" => timestamp(exp)});
                tracing::info!(tool, serial = %serial, "{event}");
                let after = schedule::refresh_after(ttl, &refresh, unit_random());
                sleep_until(started.1 + after).await;
            }
            Err(e) => {
                failures += 1;
                slot.record(failures, Some(format!("{}: {}", e.reason, e.message)));
                let left = end.map(|e| e.saturating_duration_since(clock.mono()));
                let delay = schedule::backoff(failures, &e, left, unit_random());
                cx.metrics.client_cert_issues.with_label_values(&[tool, "error"]).inc();
                cx.audit.emit(
                    "client_certificate.failed",
                    fields! {"tool" => tool, "reason" => e.reason, "message" => &e.message, "attempt" => failures,
                    "retry_at" => timestamp(clock.now() + delay)},
                );
                tracing::warn!(tool, reason = e.reason, "client certificate issue failed: {}", e.message);
                let retry = clock.mono() + delay;
                // The certificate in use is dropped at its end if no new one comes first.
                if let Some(e) = end.filter(|e| *e < retry) {
                    sleep_until(e).await;
                    end = None;
                    if slot.current.swap(None).is_some() {
                        cx.metrics.client_cert_expiration.with_label_values(&[tool]).set(0.0);
                        cx.audit.emit("client_certificate.expired", fields! {"tool" => tool});
                    }
                }
                sleep_until(retry).await;
            }
        }
    }
}

/// `POST pki/issue/ROLE` and the chain and key as rustls wants them.
async fn issue(spec: &ClientCertSpec, login: &super::login::Login, cx: &CertCtx) -> Result<Issued, FetchError> {
    let token = login.token(|| cx.clock.now(), spec.login.timeout).await?;
    let body = json!({"common_name": spec.common_name, "ttl": format!("{}s", spec.ttl.as_secs())});
    let v = login.client.call(Method::POST, &spec.path, Some(token.secret()), Some(&body), &[]).await;
    let v = v.inspect_err(|e| {
        if e.reason == "vault_denied" {
            login.refused(&token);
        }
    })?;
    let d = &v["data"];
    let bad = |m: &str| FetchError::new("invalid_response", format!("Vault's PKI answer: {m}"));
    let cert = |v: &Value| -> Result<CertificateDer<'static>, FetchError> {
        let pem = v.as_str().ok_or_else(|| bad("no certificate"))?;
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| bad("a certificate is not PEM"))
    };
    let mut chain = vec![cert(&d["certificate"])?];
    for ca in d["ca_chain"].as_array().map(Vec::as_slice).unwrap_or_default() {
        chain.push(cert(ca)?);
    }
    let key_pem = d["private_key"].as_str().ok_or_else(|| bad("no private_key"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad("the private key is not PEM"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|_| bad("the key does not fit the certificate"))?;
    let serial = d["serial_number"].as_str().unwrap_or("?").to_string();
    let expires_at = d["expiration"]
        .as_u64()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .ok_or_else(|| bad("no expiration"))?;
    let now = cx.clock.now();
    let ttl = expires_at.duration_since(now).map_err(|_| bad("the certificate has expired"))?;
    let valid_until = expires_at - schedule::margin(ttl, &Lifetime::default());
    Ok(Issued { key: Arc::new(key), serial, issued_at: now, expires_at, valid_until })
}
