//! The one clock credentials use: monotonic time for schedules, wall time for expiry and claims.
//!
//! Production uses the system clocks. Tests use [`Clock::manual`], whose wall time follows
//! Tokio's (pausable) monotonic clock and can be jumped by hours to simulate a suspended laptop
//! or a skewed host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Cheap to clone; all clones share jumps.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Manual>>);

#[derive(Debug)]
struct Manual {
    wall: SystemTime,
    mono: Instant,
    jumped_ms: AtomicU64,
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Self {
        Clock(None)
    }

    /// Wall time = now + (Tokio time elapsed since this call) + jumps.
    pub fn manual() -> Self {
        Clock(Some(Arc::new(Manual { wall: SystemTime::now(), mono: Instant::now(), jumped_ms: AtomicU64::new(0) })))
    }

    /// Wall-clock now.
    #[inline]
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(m) => m.wall + m.mono.elapsed() + Duration::from_millis(m.jumped_ms.load(Ordering::Acquire)),
        }
    }

    /// Monotonic now (Tokio's clock, so paused-time tests control it).
    #[inline]
    pub fn mono(&self) -> Instant {
        Instant::now()
    }

    /// Move wall time forward (a manual clock only; ignored on the system clock).
    pub fn jump(&self, by: Duration) {
        if let Some(m) = &self.0 {
            m.jumped_ms.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
        }
    }
}

/// Time since the Unix epoch (zero before it): metric timestamps and JWT claims.
pub fn unix(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// A uniform random number in [0, 1), for jitter.
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    // The system RNG does not fail on supported platforms; 0.5 (no jitter) if it ever did.
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn manual_wall_follows_tokio_time_and_jumps() {
        let c = Clock::manual();
        let t0 = c.now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(c.now().duration_since(t0).unwrap().as_secs(), 30);
        c.jump(Duration::from_secs(7200));
        assert_eq!(c.now().duration_since(t0).unwrap().as_secs(), 7230);
    }

    #[test]
    fn unit_random_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
