//! The binary run as a user runs it, with its output collected as it arrives.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A free loopback port (for listeners the binary binds itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The child's exit code once it exits (10 s at most; then it is killed and `None`).
pub async fn exit_code(child: &mut tokio::process::Child) -> Option<i32> {
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => status.unwrap().code(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// A running binary whose stdout and stderr are collected as they arrive, so a test waits for
/// the line it needs rather than polling.
pub struct Captured {
    pub child: tokio::process::Child,
    stdout: tokio::sync::watch::Receiver<String>,
    stderr: tokio::sync::watch::Receiver<String>,
}

fn collect(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> tokio::sync::watch::Receiver<String> {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tx.send_modify(|text| {
                text.push_str(&line);
                text.push('\n');
            });
        }
    });
    rx
}

impl Captured {
    pub fn spawn(mut cmd: tokio::process::Command) -> Captured {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        Captured { child, stdout: collect(stdout), stderr: collect(stderr) }
    }

    /// `credproxy run --config POLICY EXTRA…`.
    pub fn run(policy: &Path, extra: &[&std::ffi::OsStr]) -> Captured {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_credproxy"));
        cmd.args(["run", "--config"]).arg(policy).args(extra);
        Self::spawn(cmd)
    }

    /// Whether stderr comes to hold every one of `lines` (10 s at most; false if it closes first).
    pub async fn logged(&mut self, lines: &[&str]) -> bool {
        let seen = self.stderr.wait_for(|text| lines.iter().all(|l| text.contains(l)));
        matches!(tokio::time::timeout(Duration::from_secs(10), seen).await, Ok(Ok(_)))
    }

    pub fn stderr(&self) -> String {
        self.stderr.borrow().clone()
    }

    /// Everything written to stdout and stderr, once both have closed.
    pub async fn output(&mut self) -> (String, String) {
        let _ = self.stdout.wait_for(|_| false).await;
        let _ = self.stderr.wait_for(|_| false).await;
        (self.stdout.borrow().clone(), self.stderr.borrow().clone())
    }
}
