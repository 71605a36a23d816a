//! The injector's webhook as the tests run it: the binary on a free loopback port with a
//! certificate for its Service name, and curl (the real client) to talk to it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::captured::*;
use super::testca::TestCa;

/// The name the test certificates are for, resolved to loopback by curl.
pub const HOST: &str = "credproxy-injector.credproxy.svc";

/// A running `credproxy inject --webhook` and the folder holding its tls.crt, tls.key and ca.crt.
pub struct Injector {
    pub run: Captured,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Injector {
    /// With a certificate for [`HOST`] from `ca`.
    pub async fn start(ca: &TestCa, extra: &[&str]) -> Injector {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.leaf_pem(&[HOST]);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Self::start_in(dir, extra).await
    }

    /// With the tls.crt, tls.key and ca.crt already in `dir`.
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Injector {
        let port = free_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_credproxy"));
        cmd.args(["inject", "--webhook", "--listen", &format!("127.0.0.1:{port}"), "--image", "credproxy:test"])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(extra);
        let mut run = Captured::spawn(cmd);
        assert!(run.logged(&["injector webhook listening"]).await, "{}", run.stderr());
        Injector { run, port, dir }
    }

    /// curl, trusting `ca` (a PEM file), to `path` on the webhook by its Service name.
    pub fn curl(&self, ca: &Path, path: &str, body: Option<&Path>) -> (bool, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
        cmd.args(["--resolve", &format!("{HOST}:{}:127.0.0.1", self.port)]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(format!("@{}", b.display()));
        }
        cmd.arg(format!("https://{HOST}:{}{path}", self.port));
        let out = cmd.output().expect("curl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The CA file the test trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// POST one AdmissionReview, return the parsed answer's `response`.
    pub fn review(&self, uid: &str, object: &Value, dry_run: bool) -> Value {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": object["kind"]},
                        "operation": "CREATE", "namespace": "shop", "object": object, "dryRun": dry_run}
        });
        let file = self.dir.path().join(format!("{uid}.json"));
        std::fs::write(&file, review.to_string()).unwrap();
        let (ok, out) = self.curl(&self.ca(), "/mutate", Some(&file));
        assert!(ok, "{out}");
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("not JSON: {out}"));
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], uid, "the uid is echoed");
        answer["response"].clone()
    }
}
