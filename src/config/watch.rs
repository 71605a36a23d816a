//! Watch files through their parent folders (so a ConfigMap `..data` symlink swap is seen),
//! with one inotify watcher shared by the policy file and every file credential.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// A shared watcher: subscribers get a [`Notify`] fired for any change in their file's folder.
pub struct FsWatch {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    subs: Arc<Mutex<HashMap<PathBuf, Vec<Weak<Notify>>>>>,
}

impl FsWatch {
    /// Start the watcher. If the platform has none, subscribers fall back to polling.
    pub fn new() -> Arc<Self> {
        let subs: Arc<Mutex<HashMap<PathBuf, Vec<Weak<Notify>>>>> = Arc::default();
        let s = subs.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let mut subs = s.lock().unwrap_or_else(|e| e.into_inner());
            for path in &event.paths {
                let dir = path.parent().unwrap_or(path);
                for key in [dir, path.as_path()] {
                    if let Some(list) = subs.get_mut(key) {
                        list.retain(|w| match w.upgrade() {
                            Some(n) => {
                                n.notify_one();
                                true
                            }
                            None => false,
                        });
                    }
                }
            }
        });
        if let Err(e) = &watcher {
            tracing::warn!(error = %e, "no file watcher; changes are seen by polling only");
        }
        Arc::new(FsWatch { watcher: Mutex::new(watcher.ok()), subs })
    }

    /// Be notified of changes in `file`'s folder. Returns whether the folder is watched
    /// (when not, the caller must poll).
    pub fn subscribe(&self, file: &Path) -> (Arc<Notify>, bool) {
        let notify = Arc::new(Notify::new());
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        let first = !subs.contains_key(&dir);
        subs.entry(dir.clone()).or_default().push(Arc::downgrade(&notify));
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
