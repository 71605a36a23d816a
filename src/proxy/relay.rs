//! Upgraded connections (WebSocket, CONNECT tunnels): relay bytes both ways while holding the
//! agent connection's place under `max_connections`, until either side closes, nothing moves
//! for `idle_timeout`, or a shutdown's deadline passes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

/// Held, through its guard, by every open agent connection; [`Open::closed`] resolves when the
/// last one is dropped.
#[derive(Clone)]
pub struct Tracker {
    _held: mpsc::Sender<()>,
}

/// The far end of the [`Tracker`]s: shutdown waits on it.
pub struct Open(mpsc::Receiver<()>);

/// A tracker to hand out and its far end.
pub fn tracker() -> (Tracker, Open) {
    let (tx, rx) = mpsc::channel(1);
    (Tracker { _held: tx }, Open(rx))
}

impl Open {
    /// Resolves once every tracker has been dropped (nothing is ever sent on it).
    pub async fn closed(&mut self) {
        while self.0.recv().await.is_some() {}
    }

    /// How many trackers are still held.
    pub fn count(&self) -> usize {
        self.0.sender_strong_count()
    }
}

/// One agent connection's hold on the limits: its `max_connections` permit, its place in
/// `connections_active` and in graceful shutdown. Shared by the connection and any relay it
/// starts; released when the last of them ends.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    active: IntGauge,
    _tracker: Tracker,
    /// Fires when a shutdown's deadline has passed: relays stop then.
    stop: watch::Receiver<bool>,
    /// Fires when a shutdown begins: connections served inside a tunnel drain then.
    draining: Option<watch::Receiver<bool>>,
}

impl ConnGuard {
    /// Count the connection in.
    pub fn new(permit: OwnedSemaphorePermit, active: IntGauge, tracker: Tracker, stop: watch::Receiver<bool>) -> Self {
        active.inc();
        ConnGuard { _permit: permit, active, _tracker: tracker, stop, draining: None }
    }

    /// Also tell connections served inside this one's tunnel when a shutdown begins.
    pub fn draining_on(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.draining = Some(shutdown);
        self
    }
}

impl ConnGuard {
    /// Resolves when a shutdown begins (never, without [`ConnGuard::draining_on`]).
    pub async fn draining(&self) {
        match self.draining.clone() {
            Some(mut rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Resolves when a shutdown's deadline has passed.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Relay between `a` and `b` until either side closes, no byte moves either way for `idle`,
/// or the guard's stop fires. The guard is held until then.
pub async fn relay<A, B>(a: A, b: B, idle: Duration, guard: Arc<ConnGuard>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let silence = Silence::new();
    let mut a = silence.watch(a);
    let mut b = silence.watch(b);
    let mut stop = guard.stop.clone();
    let idle_watch = silence.lasting(idle);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "relay ended with an error");
            }
        }
        () = idle_watch => tracing::debug!("relay closed after idle_timeout without traffic"),
        _ = stop.wait_for(|s| *s) => tracing::debug!("relay closed at the shutdown deadline"),
    }
    drop(guard);
}

/// When bytes last moved on the streams it watches.
#[derive(Clone)]
pub struct Silence {
    last: Arc<AtomicU64>,
    start: Instant,
}

impl Default for Silence {
    fn default() -> Self {
        Self::new()
    }
}

impl Silence {
    /// Starting now.
    pub fn new() -> Self {
        Silence { last: Arc::new(AtomicU64::new(0)), start: Instant::now() }
    }

    /// `s`, noting here each time bytes move on it.
    pub fn watch<S>(&self, s: S) -> Active<S> {
        Active { inner: s, last: self.last.clone(), start: self.start }
    }

    /// Resolves once no byte has moved for `idle`: one wakeup per idle period at most, however
    /// busy the streams.
    pub async fn lasting(&self, idle: Duration) {
        loop {
            let since_start = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + since_start + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that notes when bytes last moved.
pub struct Active<S> {
    inner: S,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S> Active<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guard() -> (Arc<ConnGuard>, IntGauge, Arc<tokio::sync::Semaphore>, watch::Sender<bool>) {
        let sem = Arc::new(tokio::sync::Semaphore::new(1));
        let gauge = IntGauge::new("g", "g").unwrap();
        let (tx, rx) = watch::channel(false);
        let g = ConnGuard::new(sem.clone().try_acquire_owned().unwrap(), gauge.clone(), tracker().0, rx);
        (Arc::new(g), gauge, sem, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn holds_its_place_until_idle_then_lets_go() {
        let (guard, gauge, sem, _stop) = guard();
        let (mut agent, a) = tokio::io::duplex(64);
        let (b, mut upstream) = tokio::io::duplex(64);
        let mut task = tokio::spawn(relay(a, b, Duration::from_secs(30), guard));
        assert_eq!(gauge.get(), 1);
        assert_eq!(sem.available_permits(), 0);
        // (Paused time: each timeout below is the relay's end awaited for that many virtual
        // seconds.) It does not end in the first 20 s; traffic then keeps it open past 30 s.
        assert!(tokio::time::timeout(Duration::from_secs(20), &mut task).await.is_err());
        agent.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(
            tokio::time::timeout(Duration::from_secs(25), &mut task).await.is_err(),
            "closed although bytes moved 25 s ago"
        );
        assert_eq!(gauge.get(), 1);
        // Then 30 s of silence since the ping ends it and frees the permit.
        tokio::time::timeout(Duration::from_secs(6), task).await.expect("closed 30 s after the last byte").unwrap();
        assert_eq!(gauge.get(), 0);
        assert_eq!(sem.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_shutdown_deadline() {
        let (guard, gauge, _sem, stop) = guard();
        let (_agent, a) = tokio::io::duplex(64);
        let (b, _upstream) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(a, b, Duration::from_secs(3600), guard));
        tokio::task::yield_now().await;
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(gauge.get(), 0);
    }
}
