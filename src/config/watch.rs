//! Watch files through their parent folders (so a ConfigMap `..data` symlink swap is seen),
//! with one inotify watcher shared by the policy file and every file credential.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

type Subscribers = HashMap<PathBuf, Vec<(OsString, Weak<Notify>)>>;

/// A shared watcher: a subscriber's [`Notify`] fires when its file, or a `..`-prefixed entry beside
/// it (Kubernetes' atomic-writer swap), is created, changed, renamed or removed.
pub struct FsWatch {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    subs: Arc<Mutex<Subscribers>>,
}

fn dispatch(subs: &Mutex<Subscribers>, event: &notify::Event) {
    // Our own reads show up as access events: reacting to them would re-read forever.
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return;
    }
    let mut subs = subs.lock().unwrap_or_else(|e| e.into_inner());
    for path in &event.paths {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { continue };
        let swap = name.as_encoded_bytes().starts_with(b"..");
        if let Some(list) = subs.get_mut(dir) {
            list.retain(|(file, weak)| match weak.upgrade() {
                Some(n) => {
                    if swap || file == name {
                        n.notify_one();
                    }
                    true
                }
                None => false,
            });
        }
    }
}

impl FsWatch {
    /// Start the watcher. If the platform has none, subscribers fall back to polling.
    pub fn new() -> Arc<Self> {
        let subs: Arc<Mutex<Subscribers>> = Arc::default();
        let s = subs.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                dispatch(&s, &event);
            }
        });
        if let Err(e) = &watcher {
            tracing::warn!(error = %e, "no file watcher; changes are seen by polling only");
        }
        Arc::new(FsWatch { watcher: Mutex::new(watcher.ok()), subs })
    }

    /// Be notified of changes to `file` (by inotify on its folder, or by polling when the folder
    /// cannot be watched).
    pub fn subscribe(&self, file: &Path) -> Subscription {
        let notify = Arc::new(Notify::new());
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let name = file.file_name().map(OsString::from).unwrap_or_default();
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        let first = !subs.contains_key(&dir);
        subs.entry(dir.clone()).or_default().push((name, Arc::downgrade(&notify)));
        drop(subs);
        let mut watched = !first;
        if first {
            if let Some(w) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => watched = true,
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder; polling it"),
                }
            }
        }
        Subscription { notify, poll: if watched { SAFETY_POLL } else { FALLBACK_POLL } }
    }
}

/// Re-check this often even when the folder is watched (a safety net for missed events).
const SAFETY_POLL: Duration = Duration::from_secs(60);
/// Re-check this often when the folder cannot be watched.
const FALLBACK_POLL: Duration = Duration::from_secs(2);

/// One file's change notifications.
pub struct Subscription {
    notify: Arc<Notify>,
    poll: Duration,
}

impl Subscription {
    /// Wait until the file may have changed (then `debounce` more, so a burst of events settles),
    /// or until the poll interval or `at_most` has passed, whichever is first.
    pub async fn changed(&self, debounce: Duration, at_most: Option<Duration>) {
        let wait = at_most.map_or(self.poll, |d| d.min(self.poll));
        tokio::select! {
            _ = self.notify.notified() => tokio::time::sleep(debounce).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
