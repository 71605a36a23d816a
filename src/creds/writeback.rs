//! Writing a rotated refresh token back to its file, whole and at mode 0600 ([`crate::replace`]). A
//! file that is a symlink (a Kubernetes Secret mount) or cannot be written is left alone: the
//! token is kept in memory, and the caller warns once.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why a rotated refresh token was kept in memory only.
#[derive(Debug)]
pub enum Kept {
    /// The file is a symlink (a mounted Secret): never written through.
    Symlink,
    /// The file is read-only (no owner write bit): someone meant it not to change.
    ReadOnly,
    /// Writing failed (a read-only folder, for instance).
    Io(io::ErrorKind),
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Symlink => f.write_str("the refresh token file is a symlink (a mounted Secret)"),
            Kept::ReadOnly => f.write_str("the refresh token file is read-only"),
            Kept::Io(k) => write!(f, "the refresh token file cannot be replaced: {k}"),
        }
    }
}

/// Replace `path`'s contents with `token`, or say why not.
pub fn write_back(path: &Path, token: &str) -> Result<(), Kept> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(Kept::Symlink),
        Ok(m) if m.permissions().mode() & 0o200 == 0 => return Err(Kept::ReadOnly),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Kept::Io(e.kind())),
    }
    crate::replace::replace(path, token.as_bytes(), 0o600).map_err(|e| Kept::Io(e.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A refresh-token file holding "old" at `mode`, in a folder of its own.
    fn token_file(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn replaces_the_file_at_0600_and_leaves_no_temporary() {
        // A planted file's mode is not kept.
        let (dir, path) = token_file(0o666);
        write_back(&path, "new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("refresh-token")]);
    }

    #[test]
    fn a_symlinked_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret-data");
        std::fs::write(&target, "mounted").unwrap();
        let path = dir.path().join("refresh-token");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(write_back(&path, "new"), Err(Kept::Symlink)));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "mounted");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_read_only_file_is_left_alone() {
        let (_dir, path) = token_file(0o400);
        assert!(matches!(write_back(&path, "new"), Err(Kept::ReadOnly)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }

    #[test]
    fn an_unwritable_place_keeps_the_token_in_memory() {
        // Root ignores folder permissions, so the unwritable place is a folder that is a file.
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").unwrap();
        let r = write_back(&not_a_dir.join("refresh-token"), "new");
        assert!(matches!(r, Err(Kept::Io(io::ErrorKind::NotADirectory))), "{r:?}");
    }
}
