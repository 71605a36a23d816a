//! The lifecycle's arithmetic, pure: a token's lifetime and margin, when to refresh, how long to
//! back off. The random part comes in as `u` in [0, 1) so tests can pin it.

use std::time::{Duration, SystemTime};

use super::source::{Expiry, FetchError};
use crate::policy::{Lifetime, Refresh};

/// Never fetch more often than this, whatever the authority says.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// The first backoff step.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The backoff cap (and the delay after a permanent error).
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// The token's lifetime from what the authority stated, at `now`: `default_ttl` when unstated,
/// clamped to `max_ttl`. An expiry that is already past (or a zero lifetime) is refused.
pub fn lifetime(expiry: Expiry, now: SystemTime, life: &Lifetime) -> Result<Duration, FetchError> {
    let ttl = match expiry {
        Expiry::In(d) => d,
        Expiry::At(t) => t.duration_since(now).unwrap_or(Duration::ZERO),
        Expiry::Unknown => life.default_ttl,
        Expiry::Never { .. } => return Err(FetchError::local("a token without expiry has no lifetime")),
    };
    if ttl < MIN_DELAY {
        return Err(FetchError::new("invalid_response", "the token expires in less than a second"));
    }
    Ok(ttl.min(life.max_ttl))
}

/// How long before expiry a token stops being injected: `expiry_margin`, at most a tenth of the lifetime.
pub fn margin(ttl: Duration, life: &Lifetime) -> Duration {
    life.expiry_margin.min(ttl / 10)
}

/// When to fetch the next token, counted from the moment this one was obtained:
/// `ttl × (at ± jitter)`, never sooner than [`MIN_DELAY`].
pub fn refresh_after(ttl: Duration, r: &Refresh, u: f64) -> Duration {
    let frac = (r.at + r.jitter * (2.0 * u - 1.0)).clamp(0.0, 1.0);
    ttl.mul_f64(frac).max(MIN_DELAY)
}

/// The delay before retry number `attempt` (1 for the first failure): full jitter over
/// `min(cap, base × 2^(attempt-1))`; a permanent error waits the cap; a `Retry-After` is
/// honoured; all capped so an attempt still happens while the current token has `left`
/// (its time until it stops being injected); never below [`MIN_DELAY`].
pub fn backoff(attempt: u32, err: &FetchError, left: Option<Duration>, u: f64) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    let mut d = if err.permanent { BACKOFF_CAP } else { ceiling.mul_f64(u) };
    if let Some(ra) = err.retry_after {
        d = d.max(ra);
    }
    if let Some(left) = left {
        d = d.min(left.saturating_sub(MIN_DELAY));
    }
    d.max(MIN_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life() -> Lifetime {
        Lifetime::default()
    }

    #[test]
    fn lifetime_from_each_form() {
        let now = SystemTime::now();
        assert_eq!(lifetime(Expiry::In(Duration::from_secs(60)), now, &life()).unwrap(), Duration::from_secs(60));
        let at = now + Duration::from_secs(90);
        assert_eq!(lifetime(Expiry::At(at), now, &life()).unwrap(), Duration::from_secs(90));
        assert_eq!(lifetime(Expiry::Unknown, now, &life()).unwrap(), Duration::from_secs(300));
        // Absurdly large is clamped; zero and past are refused.
        let huge = Expiry::In(Duration::from_secs(10_u64.pow(12)));
        assert_eq!(lifetime(huge, now, &life()).unwrap(), Duration::from_secs(86400));
        assert_eq!(lifetime(Expiry::In(Duration::ZERO), now, &life()).unwrap_err().reason, "invalid_response");
        assert!(lifetime(Expiry::At(now - Duration::from_secs(5)), now, &life()).is_err());
    }

    #[test]
    fn margin_is_at_most_a_tenth() {
        assert_eq!(margin(Duration::from_secs(3600), &life()), Duration::from_secs(5));
        assert_eq!(margin(Duration::from_secs(4), &life()), Duration::from_millis(400));
    }

    #[test]
    fn refresh_at_half_life_with_jitter() {
        let r = Refresh::default();
        let ttl = Duration::from_secs(100);
        assert_eq!(refresh_after(ttl, &r, 0.5), Duration::from_secs(50));
        assert_eq!(refresh_after(ttl, &r, 0.0), Duration::from_secs(40));
        assert!(refresh_after(ttl, &r, 0.999_999) <= Duration::from_secs(60));
        // Never a hot loop on tiny lifetimes.
        assert_eq!(refresh_after(Duration::from_millis(10), &r, 0.5), MIN_DELAY);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let e = FetchError::new("unreachable", "down");
        let top: Vec<u64> = (1..=9).map(|a| backoff(a, &e, None, 0.999_999).as_secs()).collect();
        assert_eq!(top, [1, 1, 3, 7, 15, 31, 59, 59, 59]);
        for a in 1..20 {
            let d = backoff(a, &e, None, 0.0);
            assert_eq!(d, MIN_DELAY, "full jitter may go to the floor, never below");
            assert!(backoff(a, &e, None, 0.999_999) <= BACKOFF_CAP);
        }
        let p = FetchError::permanent("invalid_client", "bad secret");
        assert_eq!(backoff(1, &p, None, 0.0), BACKOFF_CAP);
    }

    #[test]
    fn retry_after_honoured_but_not_past_the_tokens_end() {
        let mut e = FetchError::new("rate_limited", "429");
        e.retry_after = Some(Duration::from_secs(30));
        assert_eq!(backoff(1, &e, None, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(1, &e, Some(Duration::from_secs(10)), 0.0), Duration::from_secs(9));
        let p = FetchError::permanent("invalid_client", "x");
        assert_eq!(backoff(3, &p, Some(Duration::from_millis(500)), 0.0), MIN_DELAY);
    }
}
