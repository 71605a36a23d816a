//! The login loop and its calls to Vault: log in (or look a file's token up), renew the token,
//! revoke it; and what each outcome does to the login's published token, status, metrics and audit.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::{Login, LoginCommand, LoginEnv, Status, VaultToken, NO_EXPIRY_CHECK};

/// The first look at `sys/health` after a tool found Vault unreachable, and the longest gap.
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_CAP: Duration = Duration::from_secs(10);
use crate::audit::timestamp;
use crate::clock::unit_random;
use crate::creds::source::FetchError;
use crate::creds::{fingerprint, schedule, Command};
use crate::fields;
use crate::policy::{LoginMethod, Refresh};

/// The login loop: act (log in or renew) when due, publish, sleep; back off on failure; drop
/// the token at its end; answer `Refused` and `Shutdown`.
pub(super) async fn run(login: Weak<Login>, env: LoginEnv, refresh: Refresh, mut rx: mpsc::Receiver<LoginCommand>) {
    let Some(me) = login.upgrade() else { return };
    let file = match &me.spec.method {
        LoginMethod::Token { token_file } => Some(env.watch.subscribe(token_file)),
        _ => None,
    };
    drop(me);
    let clock = env.clock.clone();
    let mut next = clock.mono();
    let mut end: Option<Instant> = None;
    let mut fresh = true;
    // While a tool finds Vault unreachable: when to look again, and the current interval.
    let mut probe: Option<(Instant, Duration)> = None;
    loop {
        let file_changed = async {
            match &file {
                Some(f) => f.changed(Duration::from_millis(200), None).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            c = rx.recv() => match c {
                None => return,
                Some(LoginCommand::Shutdown { revoke, done }) => {
                    if let (true, Some(l)) = (revoke, login.upgrade()) {
                        revoke_self(&l, &env).await;
                    }
                    let _ = done.send(());
                    return;
                }
                Some(LoginCommand::Unreachable) => {
                    probe = probe.or(Some((clock.mono() + PROBE_FIRST, PROBE_FIRST)));
                }
                Some(LoginCommand::Refused(fp)) => {
                    let Some(l) = login.upgrade() else { return };
                    let Some(current) = l.token.load_full().filter(|t| t.fingerprint == fp) else { continue };
                    // Log in again only when the token itself is dead (revoked, or Vault lost
                    // it); a policy that lacks a path refuses every token alike.
                    let alive = l.client.call(Method::GET, "auth/token/lookup-self", Some(&current.secret), None, &[]).await;
                    match alive {
                        Err(e) if e.reason == "vault_denied" => {
                            tracing::info!(login = %l.label, "Vault no longer knows the token; logging in again");
                            fresh = true;
                            next = clock.mono();
                        }
                        _ => tracing::warn!(login = %l.label, "Vault refused a tool's read with a live token: the policy of this login lacks that path"),
                    }
                }
            },
            _ = file_changed => {
                let Some(l) = login.upgrade() else { return };
                if token_file_changed(&l).await {
                    fresh = true;
                    next = clock.mono();
                }
            }
            // Vault unreachable for a tool: look at `sys/health` (no token) every 1 s, doubling to
            // 10 s, and wake the failing tools as soon as it answers, instead of leaving them to
            // their backoff of up to a minute.
            _ = sleep_until(probe.map_or(next, |p| p.0)), if probe.is_some() => {
                let Some(l) = login.upgrade() else { return };
                let every = probe.map_or(PROBE_FIRST, |p| p.1);
                match l.client.call(Method::GET, "sys/health", None, None, &[]).await {
                    Err(e) if matches!(e.reason, "unreachable" | "timeout") => {
                        let every = (every * 2).min(PROBE_CAP);
                        probe = Some((clock.mono() + every, every));
                    }
                    _ => {
                        probe = None;
                        tracing::info!(login = %l.label, "Vault answers again; the failing tools try at once");
                        wake_failing(&l);
                    }
                }
                continue;
            }
            _ = sleep_until(end.unwrap_or(next)), if end.is_some_and(|e| e < next) => {
                end = None;
                if let Some(l) = login.upgrade() {
                    expire(&l, &env);
                }
                continue;
            }
            _ = sleep_until(next) => {}
        }
        if clock.mono() < next {
            continue;
        }
        let Some(l) = login.upgrade() else { return };
        let (started_wall, started) = (clock.now(), clock.mono());
        let mut result = Err(FetchError::new("timeout", "not tried"));
        if !fresh {
            if let Some(current) = l.token.load_full() {
                result = renew_self(&l, &current, started_wall).await;
                match &result {
                    Ok(_) => env.metrics.vault_login_renewals.with_label_values(&[&l.label, "ok"]).inc(),
                    Err(e) => {
                        env.metrics.vault_login_renewals.with_label_values(&[&l.label, "error"]).inc();
                        tracing::warn!(login = %l.label, reason = e.reason, "Vault token renewal failed; logging in again: {}", e.message);
                    }
                }
            }
        }
        let renewed = result.is_ok();
        if !renewed {
            result = log_in(&l, started_wall).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            env.metrics.vault_logins.with_label_values(&[&l.label, outcome]).inc();
        }
        match result {
            Ok((mut token, capped)) => {
                if capped {
                    token.final_end = token.expires_at;
                }
                let ttl = token.expires_at.and_then(|e| e.duration_since(started_wall).ok());
                end = ttl.map(|t| started + t - schedule::margin(t, &Default::default()));
                let after = ttl.map_or(NO_EXPIRY_CHECK, |t| schedule::refresh_after(t, &refresh, unit_random()));
                fresh = capped || !token.renewable || ttl.is_none();
                next = started + after;
                publish(&l, &env, token, renewed, started_wall + after);
            }
            Err(e) => {
                let left = end.map(|e| e.saturating_duration_since(clock.mono()));
                let attempt = l.lock().failures + 1;
                let delay = schedule::backoff(attempt, &e, left, unit_random());
                next = clock.mono() + delay;
                fresh = true;
                failed(&l, &env, e, attempt, clock.now() + delay);
            }
        }
    }
}

/// Log in with the method's inputs (or, for a token file, look the token up). Returns the token
/// and whether it is already at its max TTL.
async fn log_in(l: &Login, now: SystemTime) -> Result<(VaultToken, bool), FetchError> {
    let (path, body, secret) = match &l.spec.method {
        LoginMethod::Jwt { mount, role, jwt_file } | LoginMethod::Kubernetes { mount, role, jwt_file } => {
            let jwt = crate::creds::file::read_secret(jwt_file).await?;
            (format!("auth/{mount}/login"), json!({"role": role, "jwt": jwt.expose_secret()}), jwt)
        }
        LoginMethod::AppRole { mount, role_id, secret_id_file, .. } => {
            let id = crate::creds::file::read_secret(secret_id_file).await?;
            (format!("auth/{mount}/login"), json!({"role_id": role_id, "secret_id": id.expose_secret()}), id)
        }
        LoginMethod::Token { token_file } => {
            let token = crate::creds::file::read_secret(token_file).await?;
            let v = l.client.call(Method::GET, "auth/token/lookup-self", Some(&token), None, &[]).await?;
            let d = &v["data"];
            let ttl = secs(&d["ttl"]).ok_or_else(|| bad("lookup-self has no ttl"))?;
            let creation = secs(&d["creation_ttl"]).filter(|c| !c.is_zero()).unwrap_or(ttl);
            let renewable = d["renewable"].as_bool().unwrap_or(false);
            return Ok((vault_token(token, now, ttl, creation, renewable), false));
        }
    };
    let v = l.client.call(Method::POST, &path, None, Some(&body), &[secret.expose_secret()]).await?;
    let (token, capped) = auth(&v, now, None)?;
    Ok((token, capped))
}

/// `auth/token/renew-self`, asking for the token's own TTL again.
async fn renew_self(l: &Login, t: &VaultToken, now: SystemTime) -> Result<(VaultToken, bool), FetchError> {
    let body = json!({"increment": format!("{}s", t.ttl.as_secs())});
    let v = l.client.call(Method::POST, "auth/token/renew-self", Some(&t.secret), Some(&body), &[]).await?;
    let (mut token, capped) = auth(&v, now, Some(t.ttl))?;
    if token.fingerprint != t.fingerprint {
        return Err(bad("renew-self answered another token"));
    }
    token.issued_at = t.issued_at;
    token.ttl = t.ttl;
    Ok((token, capped))
}

/// Read an `auth` block. `asked`: the TTL a renewal asked for; less granted means the max TTL.
fn auth(v: &Value, now: SystemTime, asked: Option<Duration>) -> Result<(VaultToken, bool), FetchError> {
    let a = &v["auth"];
    let token = a["client_token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| bad("no auth.client_token"))?;
    let ttl = secs(&a["lease_duration"]).ok_or_else(|| bad("no auth.lease_duration"))?;
    let renewable = a["renewable"].as_bool().unwrap_or(false);
    let capped = asked.is_some_and(|asked| ttl + Duration::from_secs(1) < asked);
    Ok((vault_token(SecretString::from(token.to_string()), now, ttl, ttl, renewable), capped))
}

fn vault_token(
    secret: SecretString,
    now: SystemTime,
    ttl: Duration,
    creation: Duration,
    renewable: bool,
) -> VaultToken {
    let expires_at = (!ttl.is_zero()).then(|| now + ttl);
    let valid_until = expires_at.map(|e| e - schedule::margin(ttl, &Default::default()));
    VaultToken {
        fingerprint: fingerprint(secret.expose_secret()),
        secret,
        issued_at: now,
        expires_at,
        valid_until,
        final_end: if renewable { None } else { expires_at },
        ttl: creation,
        renewable,
    }
}

fn secs(v: &Value) -> Option<Duration> {
    v.as_u64().map(Duration::from_secs)
}

fn bad(m: &str) -> FetchError {
    FetchError::new("invalid_response", format!("Vault's answer is not what was expected: {m}"))
}

/// Whether the token file now holds another token than the one in use.
async fn token_file_changed(l: &Login) -> bool {
    let LoginMethod::Token { token_file } = &l.spec.method else { return false };
    let Ok(t) = crate::creds::file::read_secret(token_file).await else { return false };
    l.token.load().as_ref().is_none_or(|c| c.fingerprint != fingerprint(t.expose_secret()))
}

fn publish(l: &Login, env: &LoginEnv, token: VaultToken, renewed: bool, next: SystemTime) {
    let label: &str = &l.label;
    // After a failure or with a new token, tools whose reads failed try again at once.
    let (exp, wake) = (token.expires_at, l.lock().failures > 0 || !renewed);
    l.token.store(Some(Arc::new(token)));
    *l.lock() = Status { state: "valid", failures: 0, last_error: None, next_renewal: Some(next) };
    l.published.notify_waiters();
    let m = &env.metrics;
    m.vault_login_valid.with_label_values(&[label]).set(1);
    match exp {
        Some(e) => m.vault_login_expiration.with_label_values(&[label]).set(crate::clock::unix(e).as_secs_f64()),
        None => {
            let _ = m.vault_login_expiration.remove_label_values(&[label]);
        }
    }
    let event = if renewed { "vault.login_renewed" } else { "vault.login" };
    env.audit
        .emit(event, fields! {"login" => label, "method" => l.spec.method.name(), "expires_at" => exp.map(timestamp)});
    tracing::info!(login = label, "{event}");
    if wake {
        wake_failing(l);
    }
}

/// Ask the tools of this login to fetch again (each task acts only when its reads are failing).
fn wake_failing(l: &Login) {
    let waiters = l.waiters.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for slot in waiters.iter().filter_map(Weak::upgrade) {
        slot.command(Command::Refresh { reason: "vault_login" });
    }
}

fn failed(l: &Login, env: &LoginEnv, e: FetchError, attempt: u32, retry_at: SystemTime) {
    let label: &str = &l.label;
    env.metrics.vault_login_errors.with_label_values(&[label, e.reason]).inc();
    env.audit.emit(
        "vault.login_failed",
        fields! {"login" => label, "method" => l.spec.method.name(), "reason" => e.reason,
        "message" => &e.message, "attempt" => attempt, "retry_at" => timestamp(retry_at)},
    );
    tracing::warn!(login = label, reason = e.reason, attempt, "Vault login failed: {}", e.message);
    let mut s = l.lock();
    s.state = if l.token.load().is_some() { "failing" } else { "failed" };
    s.failures = attempt;
    s.last_error = Some(e);
    s.next_renewal = Some(retry_at);
    drop(s);
    // Tools waiting for the first login learn why it failed.
    l.published.notify_waiters();
}

fn expire(l: &Login, env: &LoginEnv) {
    if l.token.swap(None).is_none() {
        return;
    }
    l.lock().state = "expired";
    env.metrics.vault_login_valid.with_label_values(&[&l.label]).set(0);
    env.audit.emit("vault.login_expired", fields! {"login" => &*l.label, "method" => l.spec.method.name()});
    tracing::warn!(login = %l.label, "Vault token expired with no new login; its tools' reads fail until one succeeds");
}

/// `auth/token/revoke-self` (a token read from a file is someone else's: left alone).
pub(super) async fn revoke_self(l: &Login, env: &LoginEnv) {
    if matches!(l.spec.method, LoginMethod::Token { .. }) {
        return;
    }
    let Some(t) = l.token.swap(None) else { return };
    l.lock().state = "revoked";
    env.metrics.vault_login_valid.with_label_values(&[&l.label]).set(0);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        l.client.call(Method::POST, "auth/token/revoke-self", Some(&t.secret), None, &[]),
    )
    .await;
    let ok = matches!(r, Ok(Ok(_)));
    env.audit.emit(
        "vault.login_revoked",
        fields! {"login" => &*l.label, "method" => l.spec.method.name(), "result" => if ok { "ok" } else { "error" }},
    );
    match r {
        Ok(Ok(_)) => tracing::info!(login = %l.label, "Vault token revoked"),
        Ok(Err(e)) => {
            tracing::warn!(login = %l.label, reason = e.reason, "Vault token revocation failed: {}", e.message)
        }
        Err(_) => tracing::warn!(login = %l.label, "Vault token revocation timed out"),
    }
}
