//! The admission webhook over real TLS, driven with curl: an AdmissionReview for every golden
//! input's workloads (and a dry run, an injected pod, an unannotated pod, a pod it cannot mutate),
//! each returned patch applied with Python's `jsonpatch`, equal to `credproxy inject`'s output for
//! the same object and valid for Kubernetes 1.29 onwards; `/healthz`, `/metrics` by result; and a
//! certificate swapped on disk served to the next connection.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::injector::{Injector, HOST};
use common::testca::TestCa;
use common::venv;
use credproxy::inject::{inject_documents, Options};
use serde_json::{json, Value};

/// Apply each `(object, base64 patch)` with Python's jsonpatch (RFC 6902).
fn apply_patches(pairs: &[(Value, String)]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.json");
    std::fs::write(&input, serde_json::to_string(&pairs).unwrap()).unwrap();
    let mut cmd = Command::new(venv::python());
    cmd.args([
        "-c",
        "import base64, json, sys, jsonpatch\n\
         pairs = json.load(open(sys.argv[1]))\n\
         out = [jsonpatch.JsonPatch(json.loads(base64.b64decode(p))).apply(o) for o, p in pairs]\n\
         print(json.dumps(out))",
    ])
    .arg(&input);
    serde_json::from_str(&venv::run_ok(cmd)).unwrap()
}

/// Every document of a golden input as the API server would get it from kubectl: read as YAML
/// 1.1 (PyYAML, like kubectl's reader: `defaultMode: 0440` is octal), sent as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let mut cmd = Command::new(venv::python());
    cmd.args([
        "-c",
        "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ])
    .arg(path);
    serde_json::from_str(&venv::run_ok(cmd)).unwrap()
}

/// `credproxy inject`'s output for one object, as JSON.
fn injected(object: &Value) -> Value {
    let out = inject_documents(&serde_yaml::to_string(object).unwrap(), &Options { image: "credproxy:test".into() })
        .unwrap()
        .output;
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&out).unwrap()).unwrap()
}

#[tokio::test]
async fn every_patch_applied_equals_inject_and_validates() {
    let ca = TestCa::new();
    let mut hook = Injector::start(&ca, &[]).await;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    let (mut pairs, mut expected, mut kinds) = (Vec::new(), Vec::new(), std::collections::BTreeSet::new());
    let mut unchanged = 0;
    for (i, object) in inputs.iter().flat_map(|p| documents(p)).enumerate() {
        let r = hook.review(&format!("u{i}"), &object, false);
        assert_eq!(r["allowed"], true, "{r}");
        let want = injected(&object);
        if want == object {
            assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "nothing to change: {r}");
            unchanged += 1;
            continue;
        }
        assert_eq!(r["patchType"], "JSONPatch");
        kinds.insert(object["kind"].as_str().unwrap().to_string());
        pairs.push((object, r["patch"].as_str().unwrap().to_string()));
        expected.push(want);
    }
    assert_eq!(kinds.len(), 7, "every workload kind went through the webhook: {kinds:?}");
    assert!(unchanged >= 5, "services, config maps and unannotated workloads pass unchanged");
    let patched = apply_patches(&pairs);
    assert_eq!(patched.len(), expected.len());
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (got, want)) in patched.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "the patched object equals credproxy inject's output");
        let f = dir.path().join(format!("{i}.json"));
        std::fs::write(&f, got.to_string()).unwrap();
        files.push(f);
    }
    venv::validate_strict(&files);

    // A dry run gets the same patch, counted apart; an injected pod and an unannotated one none.
    let pod = documents(&fixtures.join("pod.in.yaml")).remove(0);
    let dry = hook.review("dry", &pod, true);
    assert_eq!(dry["patch"], json!(pairs.iter().find(|(o, _)| o == &pod).unwrap().1));
    let done = injected(&pod);
    assert!(hook.review("again", &done, false).get("patch").is_none(), "an injected pod changes nothing");
    let mut plain = pod.clone();
    plain["metadata"]["annotations"] = json!({});
    assert!(hook.review("plain", &plain, false).get("patch").is_none());

    // A pod it cannot mutate is denied with the reason (the default failure policy).
    let mut bad = pod.clone();
    bad["metadata"]["annotations"]["credproxy.dev/proxy-port"] = json!("0");
    let r = hook.review("bad", &bad, false);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Pod agent in namespace shop") && message.contains("credproxy.dev/proxy-port"),
        "{message}"
    );

    let (ok, health) = hook.curl(&hook.ca(), "/healthz", None);
    assert!(ok && health == "ok\n", "{health}");
    let (ok, metrics) = hook.curl(&hook.ca(), "/metrics", None);
    assert!(ok, "{metrics}");
    let count = |labels: &str| common::metric(&metrics, &format!("credproxy_injector_admissions_total{{{labels}}}"));
    assert_eq!(count("dry_run=\"false\",result=\"injected\""), Some(pairs.len() as f64), "{metrics}");
    assert_eq!(count("dry_run=\"true\",result=\"injected\""), Some(1.0), "{metrics}");
    assert_eq!(count("dry_run=\"false\",result=\"unchanged\""), Some(unchanged as f64 + 2.0), "{metrics}");
    assert_eq!(count("dry_run=\"false\",result=\"denied\""), Some(1.0), "{metrics}");
    let _ = hook.run.child.kill().await;
}

/// `--failure-policy ignore`: the pod is admitted unchanged, the reason in a warning.
#[tokio::test]
async fn failure_policy_ignore_admits_unchanged_with_a_warning() {
    let ca = TestCa::new();
    let mut hook = Injector::start(&ca, &["--failure-policy", "ignore"]).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"credproxy.dev/inject": "true"}},
        "spec": {"containers": [{"name": "a", "image": "b"}]}});
    let r = hook.review("ignored", &pod, false);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none() && r.get("status").is_none(), "{r}");
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(warning.contains("credproxy.dev/policy") && warning.contains("admitted without the sidecar"), "{warning}");
    let (ok, metrics) = hook.curl(&hook.ca(), "/metrics", None);
    assert!(ok);
    let count = common::metric(
        &metrics,
        "credproxy_injector_admissions_total{dry_run=\"false\",result=\"allowed_with_error\"}",
    );
    assert_eq!(count, Some(1.0), "{metrics}");
    let _ = hook.run.child.kill().await;
}

/// cert-manager rewrites the Secret's files in place: the next connection gets the new
/// certificate, which the old CA no longer verifies.
#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_the_next_connection() {
    let first = TestCa::new();
    let mut hook = Injector::start(&first, &[]).await;
    let (ok, out) = hook.curl(&hook.ca(), "/healthz", None);
    assert!(ok, "{out}");
    let second = TestCa::new();
    let (cert, key) = second.leaf_pem(&[HOST]);
    let d = hook.dir.path();
    // Like the kubelet's atomic writer: new files, then a rename over the old.
    std::fs::write(d.join("tls.key.new"), key).unwrap();
    std::fs::write(d.join("tls.crt.new"), cert).unwrap();
    std::fs::rename(d.join("tls.key.new"), d.join("tls.key")).unwrap();
    std::fs::rename(d.join("tls.crt.new"), d.join("tls.crt")).unwrap();
    std::fs::write(d.join("second.crt"), second.pem()).unwrap();
    let (ok, out) = hook.curl(&d.join("second.crt"), "/healthz", None);
    assert!(ok && out == "ok\n", "the new certificate is served: {out}");
    let (ok, out) = hook.curl(&hook.ca(), "/healthz", None);
    assert!(!ok, "the old CA no longer verifies it: {out}");
    assert!(hook.run.logged(&["serving certificate reloaded"]).await);
    let _ = hook.run.child.kill().await;
}

/// curl's HTTP status for a POST of `body` to /mutate, sent at `rate` bytes per second when given.
fn post_code(hook: &Injector, body: &Path, rate: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "--cacert"]).arg(hook.ca());
    cmd.args(["--resolve", &format!("{HOST}:{}:127.0.0.1", hook.port), "-H", "Content-Type: application/json"]);
    if let Some(r) = rate {
        cmd.args(["--limit-rate", r]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", body.display())).arg(format!("https://{HOST}:{}/mutate", hook.port));
    String::from_utf8_lossy(&cmd.output().expect("curl runs").stdout).into_owned()
}

/// A body over the cap is refused with 413 before it is read; one that trickles in slower than
/// the body deadline gets 408; both are counted as bad requests, and the webhook still answers.
#[tokio::test]
async fn oversized_and_slow_bodies_are_refused_and_counted() {
    use credproxy::inject::webhook::{BODY_TIMEOUT, MAX_BODY_BYTES};
    let ca = TestCa::new();
    let mut hook = Injector::start(&ca, &[]).await;
    let big = hook.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; MAX_BODY_BYTES + 1]).unwrap();
    assert_eq!(post_code(&hook, &big, None), "413");
    // Twice the deadline's worth of bytes at 100 bytes a second.
    let slow = hook.dir.path().join("slow.json");
    std::fs::write(&slow, vec![b' '; 200 * BODY_TIMEOUT.as_secs() as usize]).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(post_code(&hook, &slow, Some("100")), "408");
    assert!(started.elapsed() < BODY_TIMEOUT * 2, "answered at the deadline, not after the whole body");
    let (ok, health) = hook.curl(&hook.ca(), "/healthz", None);
    assert!(ok && health == "ok\n");
    let (_, metrics) = hook.curl(&hook.ca(), "/metrics", None);
    let count =
        common::metric(&metrics, "credproxy_injector_admissions_total{dry_run=\"false\",result=\"bad_request\"}");
    assert_eq!(count, Some(2.0), "{metrics}");
    let _ = hook.run.child.kill().await;
}

/// A rotation caught half-way (a new certificate with the old key) does not load: the old pair
/// keeps serving, and the next complete change is picked up.
#[tokio::test]
async fn a_half_written_rotation_keeps_the_old_certificate() {
    let first = TestCa::new();
    let mut hook = Injector::start(&first, &[]).await;
    let second = TestCa::new();
    let (cert, key) = second.leaf_pem(&[HOST]);
    let d = hook.dir.path().to_path_buf();
    std::fs::write(d.join("second.crt"), second.pem()).unwrap();
    std::fs::write(d.join("tls.crt.new"), &cert).unwrap();
    std::fs::rename(d.join("tls.crt.new"), d.join("tls.crt")).unwrap();
    let (ok, out) = hook.curl(&hook.ca(), "/healthz", None);
    assert!(ok && out == "ok\n", "the old pair still serves: {out}");
    assert!(hook.run.logged(&["does not load; keeping the old one"]).await, "{}", hook.run.stderr());
    std::fs::write(d.join("tls.key.new"), key).unwrap();
    std::fs::rename(d.join("tls.key.new"), d.join("tls.key")).unwrap();
    let (ok, out) = hook.curl(&d.join("second.crt"), "/healthz", None);
    assert!(ok && out == "ok\n", "the completed rotation is served: {out}");
    let _ = hook.run.child.kill().await;
}

/// A connection is served for `--max-connection-age` and then closed, even one kept busy with
/// requests (so no client holds one of the few connection slots for good).
#[tokio::test]
async fn a_busy_connection_is_closed_at_its_age_limit() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let mut hook = Injector::start(&ca, &["--max-connection-age", "1s"]).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in common::pem_certs(&ca.pem()) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hook.port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let started = std::time::Instant::now();
    let (mut answered, mut buf) = (0, vec![0u8; 4096]);
    // Ask again as each answer arrives, until the server closes; a healthy server without the
    // age limit would answer for as long as we ask (the 10 s bound fails the test).
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
                return;
            }
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => answered += 1,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after 10 s ({answered} answers)");
    assert!(answered >= 1, "it answered before closing");
    assert!(started.elapsed() >= Duration::from_millis(900), "not closed before its age");
    let _ = hook.run.child.kill().await;
}
