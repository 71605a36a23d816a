//! The lifecycle of one rotating credential, the same for every source: fetch,
//! publish, sleep to the refresh point, back off on failure, empty the slot at the token's end,
//! and answer rotate/revoke/shutdown commands. One linear loop; the arithmetic is in `schedule`.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::refresher::CredCtx;
use super::schedule;
use super::source::{Expiry, FetchError, FetchKind, Source};
use super::{Command, Token};
use crate::clock::unit_random;
use crate::policy::{CredentialSpec, Lifetime, Refresh};

/// A fetch that outlives this is abandoned (sources apply their own, shorter, timeouts).
const FETCH_LIMIT: Duration = Duration::from_secs(300);
/// Revocation at the authority gets this long.
const REVOKE_LIMIT: Duration = Duration::from_secs(5);

/// Build the source for `spec` and run its lifecycle until the command channel closes.
pub async fn run_spec(spec: &CredentialSpec, refresh: Refresh, cx: &CredCtx, rx: &mut mpsc::Receiver<Command>) {
    match spec {
        CredentialSpec::OAuth(o) => run(super::oauth::OAuth::new(o, cx), o.life, refresh, cx, rx).await,
        CredentialSpec::Jwt(j) => run(super::jwt::JwtSource::new(j, cx.clock.clone()), j.life, refresh, cx, rx).await,
        CredentialSpec::Exec(e) => run(super::exec::Exec::new(e), e.life, refresh, cx, rx).await,
        CredentialSpec::Vault(v) => run(super::vault::VaultSource::new(v, refresh, cx), v.life, refresh, cx, rx).await,
        CredentialSpec::File { .. } | CredentialSpec::Env { .. } => {}
    }
}

/// A moment on both clocks (the token's end, the next fetch): monotonic for the schedule, wall
/// because a suspended host's monotonic clock stands still while tokens expire.
#[derive(Clone, Copy)]
struct At {
    mono: Instant,
    wall: SystemTime,
}

/// Run the lifecycle of one credential with `source`.
pub async fn run<S: Source>(
    mut source: S,
    life: Lifetime,
    refresh: Refresh,
    cx: &CredCtx,
    rx: &mut mpsc::Receiver<Command>,
) {
    let clock = cx.clock.clone();
    // A token carried over from the previous policy version keeps serving until the first fetch.
    let mut end: Option<At> = cx
        .slot
        .current()
        .and_then(|t| t.valid_until)
        .map(|w| At { mono: clock.mono() + w.duration_since(clock.now()).unwrap_or_default(), wall: w });
    let mut next = At { mono: clock.mono(), wall: clock.now() };
    loop {
        cx.slot.set_next_refresh(Some(next.wall));
        let forced = tokio::select! {
            biased;
            c = rx.recv() => match c {
                None => return,
                Some(Command::Check) => false,
                Some(Command::Refresh { reason }) => {
                    tracing::info!(tool = %cx.tool, reason, "credential refresh requested");
                    if reason == "upstream_401" {
                        cx.metrics.credential_revocations.with_label_values(&[&cx.tool, reason]).inc();
                    }
                    // A login that came back only retries a failing fetch; the rest want a new token.
                    if reason == "vault_login" {
                        cx.slot.consecutive_failures() > 0
                    } else {
                        source.replace_next();
                        true
                    }
                }
                Some(Command::Revoke { reason }) => {
                    end = None;
                    source.replace_next();
                    if let Some(t) = cx.revoked(reason) {
                        revoke_at_authority(&mut source, &t, cx).await;
                    }
                    true
                }
                Some(Command::Shutdown(done)) => return shut_down(&mut source, &life, cx, done).await,
            },
            _ = sleep_until(end.map_or(next.mono, |e| e.mono)), if end.is_some() => false,
            _ = sleep_until(next.mono) => false,
        };
        let past = |e: At| clock.mono() >= e.mono || clock.now() >= e.wall;
        if end.is_some_and(past) {
            end = None;
            cx.expired();
        }
        if !forced && !past(next) {
            continue;
        }
        // Fetch, still enforcing the current token's end while the authority is slow; a revoke
        // drops the token at once, a shutdown abandons the fetch.
        let (started_wall, started) = (clock.now(), clock.mono());
        let (mut revoked, mut shutdown) = (Vec::new(), None);
        let result = {
            let fetch = tokio::time::timeout(FETCH_LIMIT, source.fetch());
            tokio::pin!(fetch);
            loop {
                tokio::select! {
                    biased;
                    r = &mut fetch => break r.unwrap_or_else(|_| Err(FetchError::new("timeout", "the fetch did not finish"))),
                    c = rx.recv() => match c {
                        None => return,
                        Some(Command::Revoke { reason }) => {
                            end = None;
                            revoked.extend(cx.revoked(reason));
                        }
                        Some(Command::Shutdown(done)) => {
                            shutdown = Some(done);
                            break Err(FetchError::new("timeout", "abandoned at shutdown"));
                        }
                        // A fetch is already under way.
                        Some(Command::Refresh { .. } | Command::Check) => {}
                    },
                    _ = sleep_until(end.map_or(started, |e| e.mono)), if end.is_some() => {
                        end = None;
                        cx.expired();
                    }
                }
            }
        };
        // A renewal or re-read of the token just revoked must not bring it back.
        let revoked_during = !revoked.is_empty();
        if revoked_during {
            source.replace_next();
        }
        for t in revoked {
            revoke_at_authority(&mut source, &t, cx).await;
        }
        if let Some(done) = shutdown {
            return shut_down(&mut source, &life, cx, done).await;
        }
        cx.metrics
            .credential_refresh_duration
            .with_label_values(&[&cx.tool, cx.slot.source])
            .observe(started.elapsed().as_secs_f64());
        let built = result.and_then(|f| {
            let ttl = match f.expiry {
                Expiry::Never { recheck } => Err(recheck),
                stated => Ok(schedule::lifetime(stated, started_wall, &life)?),
            };
            let margin = ttl.map_or(Duration::ZERO, |ttl| schedule::margin(ttl, &life));
            let issued_at = f.issued_at.unwrap_or(started_wall);
            let mut token = Token::new(f.secret, &cx.inject, issued_at, ttl.ok().map(|ttl| started_wall + ttl))
                .map_err(|e| FetchError::new("invalid_response", e.to_string()))?
                .with_margin(margin);
            token.lease_id = f.lease_id;
            token.scopes = f.scopes.map(std::sync::Arc::new);
            Ok((token, ttl, margin, f.kind))
        });
        match built {
            // Whatever the fetch brought may be what was just revoked (a renewal, a lease read
            // while the revoke went out): it is dropped and a new one fetched at once.
            Ok(_) if revoked_during => {
                next = At { mono: clock.mono(), wall: clock.now() };
            }
            Ok((token, ttl, margin, kind)) => {
                // Lifetimes count from when the request was sent: never later than the authority's.
                let after = match ttl {
                    Ok(ttl) => {
                        end = Some(At { mono: started + (ttl - margin), wall: started_wall + (ttl - margin) });
                        schedule::refresh_after(ttl, &refresh, unit_random())
                    }
                    // No expiry: read again after `recheck`.
                    Err(recheck) => {
                        end = None;
                        recheck.max(schedule::MIN_DELAY)
                    }
                };
                match kind {
                    FetchKind::New => cx.publish(token),
                    FetchKind::Renewed => cx.renewed(token),
                    FetchKind::Unchanged => cx.confirmed(token),
                }
                next = At { mono: started + after, wall: started_wall + after };
            }
            Err(e) => {
                let left = end.map(|e| e.mono.saturating_duration_since(clock.mono()));
                let attempt = cx.slot.consecutive_failures() + 1;
                let delay = schedule::backoff(attempt, &e, left, unit_random());
                next = At { mono: clock.mono() + delay, wall: clock.now() + delay };
                cx.failure(e.reason, &e.message, Some(next.wall));
            }
        }
    }
}

/// Stop: revoke the current token at the authority first when `revoke_on_shutdown`.
async fn shut_down<S: Source>(source: &mut S, life: &Lifetime, cx: &CredCtx, done: tokio::sync::oneshot::Sender<()>) {
    if life.revoke_on_shutdown {
        if let Some(t) = cx.revoked("shutdown") {
            revoke_at_authority(source, &t, cx).await;
        }
    }
    let _ = done.send(());
}

/// Revoke `token` at the authority of `spec` (a token a reload's `not_before` revoked, or the
/// lease of a credential a reload removed or changed, whose task is gone). What the revocation
/// needs (the Vault login) is taken now, before a reload can let it go.
pub fn revoke_once(
    spec: &CredentialSpec,
    cx: CredCtx,
    token: std::sync::Arc<Token>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    enum Either {
        OAuth(Box<super::oauth::OAuth>),
        Vault(Box<super::vault::VaultSource>),
    }
    let mut source = match spec {
        CredentialSpec::OAuth(o) => Either::OAuth(Box::new(super::oauth::OAuth::new(o, &cx))),
        CredentialSpec::Vault(v) if token.lease_id.is_some() => {
            Either::Vault(Box::new(super::vault::VaultSource::for_revocation(v, &cx)))
        }
        _ => return None,
    };
    Some(async move {
        match &mut source {
            Either::OAuth(s) => revoke_at_authority(&mut **s, &token, &cx).await,
            Either::Vault(s) => revoke_at_authority(&mut **s, &token, &cx).await,
        }
    })
}

async fn revoke_at_authority<S: Source>(source: &mut S, t: &Token, cx: &CredCtx) {
    match tokio::time::timeout(REVOKE_LIMIT, source.revoke(t)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(tool = %cx.tool, reason = e.reason, "revocation at the authority failed: {}", e.message)
        }
        Err(_) => tracing::warn!(tool = %cx.tool, "revocation at the authority timed out"),
    }
}

#[cfg(test)]
mod tests;
