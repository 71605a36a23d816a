//! The `file` source: a token in a file (a mounted Secret), re-read when its folder changes.
//!
//! Survives renames and ConfigMap/Secret `..data` symlink swaps (the folder is watched, the path
//! re-opened each time), trims one trailing newline, and ignores an empty or whitespace-only read
//! (a writer truncates before it writes): the previous token stays and the file is read again soon.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use super::refresher::CredCtx;
use crate::config::validate::trim_newline;

/// Largest credential file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Poll interval when the folder cannot be watched, and a safety net when it can.
const POLL: Duration = Duration::from_secs(60);
/// Retry interval after an empty or failed read.
const RETRY: Duration = Duration::from_millis(500);
/// Let a burst of events settle before reading.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Read, publish, and wait for the next change, forever.
pub async fn run(path: &Path, cx: &CredCtx) {
    let (changed, watched) = cx.watch.subscribe(path);
    let poll = if watched { POLL } else { Duration::from_secs(2) };
    let mut last_error: Option<String> = None;
    loop {
        let wait = match read(path).await {
            Ok(Some((secret, mtime))) => {
                last_error = None;
                cx.offer(secret, mtime, None);
                poll
            }
            Ok(None) => RETRY,
            Err(msg) => {
                // Report a persistent error once, not every retry.
                if last_error.as_deref() != Some(msg.as_str()) {
                    cx.failure("unreachable", &msg);
                    last_error = Some(msg);
                }
                RETRY.max(Duration::from_secs(2))
            }
        };
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `Ok(None)` for an empty or whitespace-only file.
async fn read(path: &Path) -> Result<Option<(SecretString, std::time::SystemTime)>, String> {
    use tokio::io::AsyncReadExt;
    let show = path.display();
    let file = tokio::fs::File::open(path).await.map_err(|e| format!("cannot open {show}: {}", e.kind()))?;
    let meta = file.metadata().await.map_err(|e| format!("cannot stat {show}: {}", e.kind()))?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("cannot read {show}: {}", e.kind()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{show} is larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(buf).map_err(|_| format!("{show} is not UTF-8"))?;
    let token = trim_newline(&text);
    if token.trim().is_empty() {
        return Ok(None);
    }
    let mtime = meta.modified().unwrap_or_else(|_| std::time::SystemTime::now());
    Ok(Some((SecretString::from(token.to_string()), mtime)))
}
