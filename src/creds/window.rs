//! At most one event per interval, lock-free: a credential's upstream-`401` refresh trigger and
//! its control-API rotate/revoke each have one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One event per `every`.
#[derive(Debug)]
pub struct Window {
    every_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last event, plus `every` (so 0 means "never").
    last: AtomicU64,
}

/// A taken window, which [`Window::give_back`] can undo when the action did not happen.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    before: u64,
    at: u64,
}

impl Window {
    /// Open now; each take shuts it for `every`.
    pub fn new(every: Duration) -> Self {
        Window { every_ms: every.as_millis() as u64, epoch: Instant::now(), last: AtomicU64::new(0) }
    }

    /// Take the window now, or say how long until it opens.
    pub fn try_take(&self) -> Result<Taken, Duration> {
        loop {
            let now = self.epoch.elapsed().as_millis() as u64 + self.every_ms;
            let last = self.last.load(Ordering::Acquire);
            if now < last + self.every_ms {
                return Err(Duration::from_millis(last + self.every_ms - now));
            }
            if self.last.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Ok(Taken { before: last, at: now });
            }
        }
    }

    /// Undo a take whose action did not happen (unless another take came since).
    pub fn give_back(&self, t: Taken) {
        let _ = self.last.compare_exchange(t.at, t.before, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_event_per_interval_and_a_given_back_take_leaves_it_open() {
        let w = Window::new(Duration::from_secs(10));
        // An action that did not happen (the task was busy) leaves the window open.
        let t = w.try_take().unwrap();
        w.give_back(t);
        assert!(w.try_take().is_ok());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(w.try_take().unwrap_err(), Duration::from_secs(7));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(w.try_take().is_ok());
    }
}
