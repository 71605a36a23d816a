//! The `file` source: a token in a file (a mounted Secret), re-read when its folder changes.
//!
//! Survives renames and ConfigMap/Secret `..data` symlink swaps (the folder is watched, the path
//! re-opened each time), trims one trailing newline, and ignores an empty or whitespace-only read
//! (a writer truncates before it writes): the previous token stays and the file is read again soon.

use std::path::Path;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use super::refresher::CredCtx;
use crate::config::validate::trim_newline;

/// Largest credential file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Read again this soon after an empty read (a writer truncated and is about to write).
const EMPTY_RETRY: Duration = Duration::from_millis(500);
/// Read again this soon after a failed read.
const ERROR_RETRY: Duration = Duration::from_secs(2);
/// Let a burst of events settle before reading.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The first read, synchronous, at load time. Returns the error it reported, if any.
pub fn prime(path: &Path, cx: &CredCtx) -> Option<String> {
    match read_sync(path) {
        Ok(Some((secret, mtime))) => {
            cx.offer(secret, mtime);
            None
        }
        Ok(None) => None,
        Err(msg) => {
            cx.failure("local_error", &msg, None);
            Some(msg)
        }
    }
}

/// Wait for a change, read, publish; forever. `last_error` is what was already reported.
pub async fn run(path: &Path, cx: &CredCtx, mut last_error: Option<String>) {
    let changes = cx.watch.subscribe(path);
    loop {
        let retry = match read(path).await {
            Ok(Some((secret, mtime))) => {
                last_error = None;
                cx.offer(secret, mtime);
                None
            }
            Ok(None) => {
                tracing::debug!(tool = %cx.tool, "credential file is empty; the current token stays");
                Some(EMPTY_RETRY)
            }
            Err(msg) => {
                // Report a persistent error once, not every retry.
                if last_error.as_deref() != Some(msg.as_str()) {
                    cx.failure("local_error", &msg, None);
                    last_error = Some(msg);
                }
                Some(ERROR_RETRY)
            }
        };
        changes.changed(DEBOUNCE, retry).await;
    }
}

/// `Ok(None)` for an empty or whitespace-only file.
async fn read(path: &Path) -> Result<Option<(SecretString, SystemTime)>, String> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_sync(&owned)).await.unwrap_or_else(|_| Err("file read task failed".into()))
}

/// Read at most [`MAX_FILE_BYTES`] + 1 bytes (a path to a device or a huge file cannot exhaust memory).
fn read_sync(path: &Path) -> Result<Option<(SecretString, SystemTime)>, String> {
    use std::io::Read;
    let show = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {show}: {}", e.kind()))?;
    let mtime = file.metadata().and_then(|m| m.modified());
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read {show}: {}", e.kind()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{show} is larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(buf).map_err(|_| format!("{show} is not UTF-8"))?;
    let token = trim_newline(&text);
    if token.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some((SecretString::from(token.to_string()), mtime.unwrap_or_else(|_| SystemTime::now()))))
}

/// Read a secret another source needs (client secret, key, subject or refresh token), capped
/// like a `file` credential; empty is an error.
pub async fn read_secret(path: &Path) -> Result<SecretString, super::source::FetchError> {
    match read(path).await {
        Ok(Some((s, _))) => Ok(s),
        Ok(None) => Err(super::source::FetchError::local(format!("{} is empty", path.display()))),
        Err(m) => Err(super::source::FetchError::local(m)),
    }
}
