//! The control listener's doors: a 0600 Unix socket in a 0700 folder of its own (the default, out
//! of the agent's reach), or TCP with a `Host` check against DNS rebinding; and an optional
//! bearer token.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use http::header::{HeaderMap, AUTHORIZATION, HOST};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, UnixListener};

use crate::policy::ControlAddr;

/// A bound control listener.
pub enum ControlListener {
    /// A Unix socket, removed again when this is dropped.
    Unix(UnixListener, SocketFile),
    /// A TCP listener on this port.
    Tcp(TcpListener, u16),
}

impl ControlListener {
    /// Where it listens (the bound port for TCP).
    pub fn addr(&self) -> ControlAddr {
        match self {
            ControlListener::Unix(_, f) => ControlAddr::Unix(f.path.clone()),
            ControlListener::Tcp(l, _) => ControlAddr::Tcp(l.local_addr().expect("a bound listener has an address")),
        }
    }
}

/// The socket's path and identity; removed on drop only while it is still ours (a newer
/// instance's socket at the same path is left alone).
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_id(&self.path) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn refuse(kind: io::ErrorKind, why: &str) -> io::Error {
    io::Error::new(kind, why.to_string())
}

/// The socket's folder must be a real folder owned by us or by root: another user's folder (one
/// planted in `/tmp`, say) could swap or answer for the socket. A root-owned folder may be
/// world-writable: a Kubernetes `emptyDir` is, and only the sidecar mounts it.
fn check_folder(dir: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    if !m.file_type().is_dir() {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "the control socket's folder is not a folder (or is a symlink)",
        ));
    }
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !trusted_owner(m.uid(), me) {
        return Err(refuse(
            io::ErrorKind::PermissionDenied,
            "the control socket's folder belongs to another user; use a folder of your own",
        ));
    }
    Ok(())
}

/// Ourselves, or root.
fn trusted_owner(owner: u32, me: u32) -> bool {
    owner == me || owner == 0
}

/// Bind the control listener. For a Unix socket: create its folder (0700) when missing, refuse
/// a folder another user owns, remove a stale socket that refuses connections, refuse any other
/// kind of file at the path, and bind with a umask that makes the socket 0600 from its first
/// moment (no window with wider permissions, no rename to race).
pub async fn bind(addr: &ControlAddr) -> io::Result<ControlListener> {
    match addr {
        ControlAddr::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            let port = l.local_addr()?.port();
            Ok(ControlListener::Tcp(l, port))
        }
        ControlAddr::Unix(path) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("/"));
            if std::fs::symlink_metadata(dir).is_err() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            check_folder(dir)?;
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(refuse(io::ErrorKind::AddrInUse, "another process answers on this control socket"))
                    }
                    // Only a refused connection proves nobody listens (not a full backlog, not EACCES).
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot tell whether the control socket is in use: {e}"),
                        ))
                    }
                },
                Ok(_) => {
                    return Err(refuse(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket sits at the control socket's path",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // SAFETY: umask(2) cannot fail. It is process-wide: this runs at start, before any
            // other part of credproxy creates a file.
            let old = unsafe { libc::umask(0o177) };
            let bound = UnixListener::bind(path);
            unsafe { libc::umask(old) };
            let listener = bound?;
            let id = file_id(path).ok_or_else(|| refuse(io::ErrorKind::NotFound, "the control socket vanished"))?;
            Ok(ControlListener::Unix(listener, SocketFile { path: path.clone(), id }))
        }
    }
}

/// Why a control request was refused before it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over TCP, a `Host` other than loopback with the listener's port (DNS rebinding).
    Host,
    /// `control_auth_file` is set and the bearer token is missing or wrong.
    Auth,
}

/// Check a request's `Host` (TCP only: `port` is the listener's) and bearer token.
pub fn admit(headers: &HeaderMap, port: Option<u16>, token: Option<&SecretString>) -> Result<(), Refusal> {
    if let Some(port) = port {
        let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (name, p) = host.rsplit_once(':').unwrap_or((host, ""));
        let loopback = ["127.0.0.1", "[::1]", "localhost"].iter().any(|n| n.eq_ignore_ascii_case(name));
        if !loopback || p.parse::<u16>().ok() != Some(port) {
            return Err(Refusal::Host);
        }
    }
    if let Some(expected) = token {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().as_bytes())
            .unwrap_or_default();
        if aws_lc_rs::constant_time::verify_slices_are_equal(presented, expected.expose_secret().as_bytes()).is_err() {
            return Err(Refusal::Auth);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, host.parse().unwrap());
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn host_must_be_loopback_with_the_listeners_port() {
        for ok in ["127.0.0.1:9", "[::1]:9", "localhost:9", "LOCALHOST:9"] {
            assert_eq!(admit(&headers(ok, None), Some(9), None), Ok(()), "{ok}");
        }
        for bad in ["evil.example:9", "127.0.0.1:10", "127.0.0.1", "localhost.evil.example:9", "127.0.0.2:9", ""] {
            assert_eq!(admit(&headers(bad, None), Some(9), None), Err(Refusal::Host), "{bad}");
        }
        // A Unix socket has no Host to check.
        assert_eq!(admit(&headers("anything", None), None, None), Ok(()));
    }

    #[test]
    fn bearer_token_when_configured() {
        let t = SecretString::from("s3cret".to_string());
        assert_eq!(admit(&headers("x", Some("Bearer s3cret")), None, Some(&t)), Ok(()));
        assert_eq!(admit(&headers("x", Some("bearer s3cret")), None, Some(&t)), Ok(()));
        assert_eq!(admit(&headers("x", Some("Bearer wrong")), None, Some(&t)), Err(Refusal::Auth));
        assert_eq!(admit(&headers("x", Some("Basic s3cret")), None, Some(&t)), Err(Refusal::Auth));
        assert_eq!(admit(&headers("x", None), None, Some(&t)), Err(Refusal::Auth));
    }

    #[tokio::test]
    async fn socket_is_0600_in_a_0700_folder_and_stale_ones_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl/control.sock");
        let addr = ControlAddr::Unix(path.clone());
        let l = bind(&addr).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A second bind while the first answers is refused.
        assert_eq!(bind(&addr).await.err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        // A stale socket (nothing listening) is replaced.
        let ControlListener::Unix(listener, file) = l else { panic!("a unix listener") };
        drop(listener);
        std::mem::forget(file);
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let again = bind(&addr).await.unwrap();
        drop(again);
        assert!(!path.exists(), "the socket is removed when the listener goes");
        // Another kind of file at the path: refused, and left alone.
        std::fs::write(&path, "not a socket").unwrap();
        assert_eq!(bind(&addr).await.err().map(|e| e.kind()), Some(io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_newer_socket_at_the_path_is_not_removed_by_the_old_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let old = bind(&ControlAddr::Unix(path.clone())).await.unwrap();
        // Another instance replaced it (a stale-socket takeover): dropping the old one leaves it.
        std::fs::remove_file(&path).unwrap();
        let newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(old);
        assert!(path.exists(), "the newer socket was removed");
        drop(newer);
    }

    #[tokio::test]
    async fn a_symlinked_or_foreign_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let r = bind(&ControlAddr::Unix(link.join("control.sock"))).await;
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        // Owners: ourselves or root (a Kubernetes emptyDir), never another user.
        assert!(trusted_owner(1000, 1000) && trusted_owner(0, 1000) && trusted_owner(0, 0));
        assert!(!trusted_owner(1001, 1000) && !trusted_owner(65532, 0));
    }
}
