//! Watch files through their parent folders (so a ConfigMap `..data` symlink swap is seen),
//! with one inotify watcher shared by the policy file and every file credential.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

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

    /// Be notified of changes to `file`. Returns whether its folder is watched (when not, the
    /// caller must poll).
    pub fn subscribe(&self, file: &Path) -> (Arc<Notify>, bool) {
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
        (notify, watched)
    }
}
