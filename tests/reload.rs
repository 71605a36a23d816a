//! Hot reload of the policy (including a ConfigMap-style `..data` symlink swap) and of file
//! credentials (rename, symlink swap, truncated writes).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;

fn policy(port: u16, path: &str, token_file: &str) -> String {
    format!(
        "version: 1\ntools:\n  api:\n    upstream: http://127.0.0.1:{port}\n    credential: {{ source: file, path: \"{token_file}\" }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: [\"{path}\"] }}]\n"
    )
}

/// Send requests until the upstream receives `auth` (a rotated credential has been picked up).
async fn until_upstream_sees(up: &Upstream, addr: std::net::SocketAddr, auth: &str) {
    eventually(
        async || {
            get(addr, "/api/v1/x").await;
            up.last().headers["authorization"] == auth
        },
        auth,
    )
    .await;
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_policy_and_valid_one_swaps_in() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "t1");
    let audited = |p: &str| format!("audit: {{ output: \"{{dir}}/audit.log\" }}\n{p}");
    let proxy = Proxy::start_in(dir, &audited(&policy(up.port(), "/v1/**", "{dir}/token"))).await;
    assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 200);
    assert_eq!(status(&get(proxy.addr, "/api/v2/x").await), 403);
    let id = proxy.credential("api").await["credential_id"].clone();
    assert!(id.as_str().is_some_and(|i| i.starts_with("sha256:")), "{id}");

    // An invalid file: rejected, counted, the old policy keeps serving.
    proxy.rewrite("version: 1\ntools:\n  api:\n    routes: [{ host: a.com, paths: [nope] }]\n");
    eventually(
        async || metric(&proxy.metrics().await, "credproxy_config_last_reload_success") == Some(0.0),
        "rejection",
    )
    .await;
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_config_reloads_total{result="error"}"#), Some(1.0), "{m}");
    assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 200);

    // A valid one swaps in.
    proxy.rewrite(&audited(&policy(up.port(), "/v2/**", "{dir}/token")));
    eventually(async || status(&get(proxy.addr, "/api/v2/x").await) == 200, "new policy").await;
    assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 403);
    assert_eq!(metric(&proxy.metrics().await, "credproxy_config_last_reload_success"), Some(1.0));
    // The unchanged credential kept its token: the same id, one issue event, never refreshed.
    assert_eq!(proxy.credential("api").await["credential_id"], id);
    assert_eq!(proxy.credential("api").await["state"], "valid");
    let audit = proxy.audit().await;
    assert_eq!(audit.matches(r#""event":"credential.issued""#).count(), 1, "{audit}");
    assert!(!audit.contains(r#""event":"credential.refreshed""#), "{audit}");
    assert!(audit.contains(r#""event":"config.reloaded""#) && audit.contains(r#""event":"config.rejected""#));
    proxy.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as `file -> ..data/file`, `..data -> ..2026_xx` and swaps `..data`.
fn configmap_swap(root: &Path, generation: &str, files: &[(&str, &str)]) {
    let gen_dir = root.join(generation);
    std::fs::create_dir_all(&gen_dir).unwrap();
    for (name, contents) in files {
        std::fs::write(gen_dir.join(name), contents).unwrap();
    }
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(generation, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
    for (name, _) in files {
        let link = root.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn configmap_symlink_swaps_are_seen_for_policy_and_secret() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    configmap_swap(&secrets, "..gen1", &[("token", "first-token\n")]);
    let token_path = secrets.join("token");
    let cm = dir.path().join("cm");
    std::fs::create_dir(&cm).unwrap();
    let listen = format!(
        "listen: {{ proxy: 127.0.0.1:0, admin: 127.0.0.1:0, control: \"unix:{}/control.sock\" }}\n",
        dir.path().display()
    );
    configmap_swap(
        &cm,
        "..gen1",
        &[("policy.yaml", &format!("{listen}{}", policy(up.port(), "/v1/**", token_path.to_str().unwrap())))],
    );
    let running = credproxy::serve::start(cm.join("policy.yaml")).await.unwrap();
    let addr = running.proxy_addr;
    eventually(async || status(&get(addr, "/api/v1/x").await) == 200, "first token").await;
    assert_eq!(up.last().headers["authorization"], "Bearer first-token");

    configmap_swap(&secrets, "..gen2", &[("token", "second-token\n")]);
    until_upstream_sees(&up, addr, "Bearer second-token").await;

    configmap_swap(
        &cm,
        "..gen2",
        &[("policy.yaml", &format!("{listen}{}", policy(up.port(), "/v3/**", token_path.to_str().unwrap())))],
    );
    eventually(async || status(&get(addr, "/api/v3/x").await) == 200, "swapped policy").await;
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn file_credential_survives_rename_and_ignores_truncation() {
    let logs = Capture::install();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "one\n");
    let proxy = Proxy::start_in(dir, &policy(up.port(), "/v1/**", "{dir}/token")).await;
    let path = proxy.dir.path().join("token");
    assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer one");

    // A writer truncates first: the empty file is ignored, the old token stays.
    // A writer truncates first: once the source has read the empty file (it logs that), the old
    // token still serves.
    std::fs::write(&path, "").unwrap();
    eventually(async || logs.text().contains("credential file is empty"), "the empty read").await;
    assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer one");
    std::fs::write(&path, "two\n").unwrap();
    until_upstream_sees(&up, proxy.addr, "Bearer two").await;

    // Replaced by rename (an atomic writer).
    let tmp = proxy.dir.path().join("token.new");
    std::fs::write(&tmp, "three").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    until_upstream_sees(&up, proxy.addr, "Bearer three").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn every_bad_fixture_is_rejected_at_reload_and_the_old_policy_stays() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "t1");
    let running = format!("audit: {{ output: \"{{dir}}/audit.log\" }}\n{}", policy(up.port(), "/v1/**", "{dir}/token"));
    let proxy = Proxy::start_in(dir, &running).await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let rejections = |audit: &str| -> Vec<String> {
        audit.lines().filter(|l| l.contains(r#""event":"config.rejected""#)).map(str::to_string).collect()
    };
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().find_map(|l| l.strip_prefix("# expect: ")).expect("# expect:").to_string();
        let before = rejections(&proxy.audit().await).len();
        proxy.rewrite(&text);
        // This fixture's own rejection: a condition a duplicate watch event cannot overshoot.
        let mine = |l: &String| l.contains(&format!("{expect} (line")) || l.contains(&format!("{expect}:"));
        let mut seen = false;
        for _ in 0..500 {
            if rejections(&proxy.audit().await)[before..].iter().any(mine) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let audit = proxy.audit().await;
        let tail: Vec<&str> = audit.lines().rev().take(3).collect();
        assert!(
            seen,
            "no rejection of {} within 10 s; reloads: {:?}; last audit lines: {tail:#?}",
            path.display(),
            metric(&proxy.metrics().await, r#"credproxy_config_reloads_total{result="error"}"#)
        );
        assert_eq!(metric(&proxy.metrics().await, "credproxy_config_last_reload_success"), Some(0.0));
        assert_eq!(status(&get(proxy.addr, "/api/v1/x").await), 200, "{}", path.display());
        assert_eq!(up.last().headers["authorization"], "Bearer t1");
        n += 1;
    }
    assert!(n >= 15, "{n} fixtures");
    assert!(!proxy.audit().await.contains(r#""event":"config.reloaded""#));
    proxy.shutdown().await;
}
