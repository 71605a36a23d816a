//! Accepting connections: every listener (proxy, admin, control, the injector's webhook) backs
//! off the same way when `accept` fails, instead of spinning on an error that persists.

use std::future::Future;
use std::time::Duration;

/// How long a listener waits after a failed accept (EMFILE and friends) before trying again.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// The next accepted connection from `accept`: a failure is logged and retried after
/// [`BACKOFF`]. Cancel-safe when `accept` is (Tokio's listeners are), so it can sit in a
/// `select!` beside a shutdown signal.
pub async fn next<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
