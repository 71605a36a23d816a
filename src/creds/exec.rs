//! The `exec` source: a credential helper run directly (argv, no shell) with a timeout and a
//! bounded output, printing `{"token": "...", "expires_at": "RFC 3339"}` or `{"token": "...", "expires_in": N}`.

use std::process::Stdio;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::source::{Expiry, FetchError, Fetched, Source};
use crate::policy::ExecSpec;

/// The only variables a helper inherits from credproxy; the rest comes from the policy's `env`.
const INHERITED: [&str; 3] = ["PATH", "HOME", "TMPDIR"];

/// Largest helper output read.
const MAX_OUTPUT: u64 = 64 * 1024;

/// One helper.
pub struct Exec {
    spec: ExecSpec,
}

impl Exec {
    /// For one credential.
    pub fn new(spec: &ExecSpec) -> Self {
        Exec { spec: spec.clone() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    token: String,
    expires_at: Option<String>,
    expires_in: Option<f64>,
}

/// Parse a helper's standard output.
pub fn parse(out: &[u8]) -> Result<(SecretString, Expiry), FetchError> {
    let bad = |m: &str| FetchError::new("invalid_response", m.to_string());
    let o: Output = serde_json::from_slice(out)
        .map_err(|_| bad("the helper did not print {\"token\": ..., \"expires_at\"|\"expires_in\": ...}"))?;
    let expiry = match (o.expires_at, o.expires_in) {
        (Some(_), Some(_)) => return Err(bad("the helper printed both expires_at and expires_in")),
        (Some(at), None) => {
            Expiry::At(humantime::parse_rfc3339_weak(&at).map_err(|_| bad("expires_at is not RFC 3339"))?)
        }
        (None, Some(n)) if n >= 1.0 && n.is_finite() => Expiry::In(Duration::from_secs_f64(n.min(1e9))),
        (None, Some(_)) => return Err(bad("expires_in is zero, negative or not finite")),
        (None, None) => Expiry::Unknown,
    };
    if o.token.is_empty() {
        return Err(bad("the helper printed an empty token"));
    }
    Ok((SecretString::from(o.token), expiry))
}

impl Source for Exec {
    async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let (program, args) = self.spec.command.split_first().expect("validated: a program");
        let mut cmd = tokio::process::Command::new(program);
        // A cleared environment: credproxy's own holds other tools' `env` secrets.
        cmd.env_clear();
        for keep in INHERITED {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        let mut child = cmd
            .envs(&self.spec.env)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Discarded: a helper's diagnostics could carry the token, and logs never may.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group, so a timeout kills whatever the helper started too.
            .process_group(0)
            .spawn()
            .map_err(|e| FetchError::new("exec_failed", format!("cannot run {program}: {}", e.kind())))?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut group = KillGroup(child.id());
        let run = async {
            let mut out = Vec::new();
            (&mut stdout).take(MAX_OUTPUT + 1).read_to_end(&mut out).await.map_err(|e| {
                FetchError::new("exec_failed", format!("reading the helper's output failed: {}", e.kind()))
            })?;
            let status = child.wait().await.map_err(|e| FetchError::new("exec_failed", format!("{}", e.kind())))?;
            Ok::<_, FetchError>((out, status))
        };
        let (out, status) = tokio::time::timeout(self.spec.timeout, run)
            .await
            .map_err(|_| FetchError::new("timeout", format!("{program} did not finish in time; killed")))??;
        // It finished: nothing to kill (and its process group id may be reused from now on).
        group.0 = None;
        if out.len() as u64 > MAX_OUTPUT {
            return Err(FetchError::new("invalid_response", "the helper printed more than 64 KiB"));
        }
        if !status.success() {
            return Err(FetchError::new("exec_failed", format!("{program} exited with {status}")));
        }
        let (secret, expiry) = parse(&out)?;
        Ok(Fetched::new(secret, expiry))
    }
}

/// Kills the helper's process group when dropped armed (a timeout, or a failed read).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_forms() {
        assert!(matches!(parse(br#"{"token":"t","expires_in":60}"#).unwrap().1, Expiry::In(_)));
        assert!(matches!(parse(br#"{"token":"t","expires_at":"2030-01-01T00:00:00Z"}"#).unwrap().1, Expiry::At(_)));
        assert!(matches!(parse(br#"{"token":"t"}"#).unwrap().1, Expiry::Unknown));
        for bad in [&br#"{"token":""}"#[..], br#"{"token":"t","expires_in":0}"#, b"token=t", br#"{"token":"t","x":1}"#]
        {
            assert_eq!(parse(bad).unwrap_err().reason, "invalid_response");
        }
    }
}
