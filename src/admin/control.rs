//! The control listener's doors: a 0600 Unix socket in a 0700 folder of its own (the default, out
//! of the agent's reach), or TCP with a `Host` check against DNS rebinding; an optional bearer
//! token; and one rotate/revoke window per tool.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, AUTHORIZATION, HOST};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, UnixListener};

use crate::policy::ControlAddr;

/// Rotate and revoke share one window per tool: at most one of them this often.
pub const COMMAND_EVERY: Duration = Duration::from_secs(10);

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
            ControlListener::Unix(_, f) => ControlAddr::Unix(f.0.clone()),
            ControlListener::Tcp(l, _) => ControlAddr::Tcp(l.local_addr().expect("a bound listener has an address")),
        }
    }
}

/// The socket's path; removed on drop, so a clean stop leaves nothing behind.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bind the control listener. For a Unix socket: create its folder (0700) when missing, remove
/// a stale socket that nothing answers on, refuse any other kind of file at the path, and bind
/// under a temporary name made 0600 before it is renamed into place, so the socket is never
/// reachable with wider permissions.
pub async fn bind(addr: &ControlAddr) -> io::Result<ControlListener> {
    match addr {
        ControlAddr::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            let port = l.local_addr()?.port();
            Ok(ControlListener::Tcp(l, port))
        }
        ControlAddr::Unix(path) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("/"));
            if !dir.exists() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another process answers on this control socket",
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket sits at the control socket's path",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let tmp = dir.join(format!(".control-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let listener = UnixListener::bind(&tmp)?;
            let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(ControlListener::Unix(listener, SocketFile(path.clone())))
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

/// One rotate/revoke window per tool.
#[derive(Default)]
pub struct Windows(Mutex<HashMap<String, Instant>>);

impl Windows {
    /// Take `tool`'s window at `now`, or say how long until it opens.
    pub fn take(&self, tool: &str, now: Instant) -> Result<(), Duration> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(tool) {
            Some(&at) if now.saturating_duration_since(at) < COMMAND_EVERY => {
                Err(COMMAND_EVERY - now.saturating_duration_since(at))
            }
            _ => {
                last.insert(tool.to_string(), now);
                Ok(())
            }
        }
    }
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

    #[test]
    fn one_window_per_tool() {
        let w = Windows::default();
        let t0 = Instant::now();
        assert_eq!(w.take("a", t0), Ok(()));
        assert_eq!(w.take("a", t0 + Duration::from_secs(3)), Err(Duration::from_secs(7)));
        assert_eq!(w.take("b", t0 + Duration::from_secs(3)), Ok(()));
        assert_eq!(w.take("a", t0 + COMMAND_EVERY), Ok(()));
    }

    #[tokio::test]
    async fn socket_is_0600_in_a_0700_folder_and_stale_ones_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl/control.sock");
        let addr = ControlAddr::Unix(path.clone());
        let l = bind(&addr).await.unwrap();
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
}
