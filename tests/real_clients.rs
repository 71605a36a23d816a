//! Real agent HTTP stacks through credproxy: curl (forward and base URL), Python requests and
//! httpx through HTTP_PROXY, and the OpenAI Python SDK with `base_url` and a placeholder key.
//! `scripts/test` installs them; run alone, a missing one fails with the command to fix it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const TOKEN: &str = "real-client-token";

use common::venv::python;

fn run(mut cmd: Command) -> String {
    for v in
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"]
    {
        cmd.env_remove(v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn setup() -> (Upstream, Proxy) {
    setup_with(|_, _| String::new()).await
}

/// The `openai` and `data` tools with a file token, plus the tools `extra(dir, port)` writes.
async fn setup_with(extra: impl FnOnce(&tempfile::TempDir, u16) -> String) -> (Upstream, Proxy) {
    let up = Upstream::start().await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    let more = extra(&dir, port);
    let policy = format!(
        r#"version: 1
tools:
  openai:
    upstream: http://127.0.0.1:{port}
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/v1/**"] }}]
  data:
    credential: {{ source: file, path: "{{dir}}/token" }}
    inject: {{ header: X-Api-Key }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/data/**"] }}]
{more}"#
    );
    (up, Proxy::start_in(dir, &policy).await)
}

fn agent_credentials(seen: &Seen) -> Vec<String> {
    ["authorization", "x-api-key"]
        .iter()
        .flat_map(|h| seen.headers.get_all(*h).iter().map(|v| v.to_str().unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn curl_forward_and_base_url() {
    let (up, proxy) = setup().await;
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "-x", &format!("http://{}", proxy.addr), "-H", "Authorization: Bearer agent-own"]);
    c.arg(format!("http://127.0.0.1:{}/data/items", up.port()));
    let out = tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    assert_eq!(out, "ok /data/items");
    assert_eq!(agent_credentials(&up.last()), vec![TOKEN.to_string()]);

    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--fail",
        "-H",
        "Authorization: Bearer credproxy",
        &format!("http://{}/openai/v1/models", proxy.addr),
    ]);
    let out = tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    assert_eq!(out, "ok /v1/models");
    assert_eq!(agent_credentials(&up.last()), vec![format!("Bearer {TOKEN}")]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn python_requests_and_httpx_through_http_proxy() {
    let (up, proxy) = setup().await;
    let url = format!("http://127.0.0.1:{}/data/py", up.port());
    for lib in ["requests", "httpx"] {
        let code = format!(
            "import {lib}, sys; r = {lib}.get(sys.argv[1], headers={{'X-Api-Key': 'agent'}}); r.raise_for_status(); print(r.text, end='')"
        );
        let mut c = Command::new(python());
        c.args(["-c", &code, &url]);
        let proxy_url = format!("http://{}", proxy.addr);
        let out = tokio::task::spawn_blocking(move || {
            for v in ["NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
                c.env_remove(v);
            }
            c.env("HTTP_PROXY", &proxy_url).env("http_proxy", &proxy_url);
            let o = c.output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .await
        .unwrap();
        assert_eq!(out, "ok /data/py", "{lib}");
        assert_eq!(agent_credentials(&up.last()), vec![TOKEN.to_string()], "{lib}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn openai_sdk_with_base_url_and_placeholder_key() {
    let (up, proxy) = setup().await;
    let script =
        "import sys\nfrom openai import OpenAI\nc = OpenAI(base_url=sys.argv[1], api_key='credproxy', max_retries=0)\n\
                  r = c.chat.completions.create(model='gpt-test', messages=[{'role': 'user', 'content': 'hi'}])\n\
                  print(r.choices[0].message.content, end='')";
    let mut c = Command::new(python());
    c.args(["-c", script, &format!("http://{}/openai/v1", proxy.addr)]);
    let out = tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    assert_eq!(out, "hello from upstream");
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(agent_credentials(&seen), vec![format!("Bearer {TOKEN}")]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    // Every metric family present: a file credential, a rotating one and a failing one.
    let (_up, proxy) = setup_with(|dir, port| {
        use std::os::unix::fs::PermissionsExt;
        let ok = write_file(dir, "ok.sh", "#!/bin/sh\necho '{\"token\": \"rotating\", \"expires_in\": 600}'\n");
        let bad = write_file(dir, "bad.sh", "#!/bin/sh\nexit 1\n");
        for f in [&ok, &bad] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        format!(
            r#"  rot:
    upstream: http://127.0.0.1:{port}/rot
    credential: {{ source: exec, command: ["{{dir}}/ok.sh"] }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/rot/**"] }}]
  bad:
    required: false
    upstream: http://127.0.0.1:{port}/bad
    credential: {{ source: exec, command: ["{{dir}}/bad.sh"] }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true, paths: ["/bad/**"] }}]
"#
        )
    })
    .await;
    get(proxy.addr, "/openai/v1/models").await;
    get(proxy.addr, "/rot/x").await;
    get(proxy.addr, "/bad/x").await;
    get(proxy.addr, "/nosuch/x").await;
    let mut resp = proxy.metrics().await;
    for _ in 0..100 {
        if resp.contains("exec_failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        resp = proxy.metrics().await;
    }
    for family in [
        "credproxy_credential_refresh_duration_seconds_bucket",
        "credproxy_credential_refresh_errors_total{reason=\"exec_failed\"",
        "credproxy_credential_expiration_timestamp_seconds{tool=\"rot\"}",
    ] {
        assert!(resp.contains(family), "no {family}");
    }
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap();
    assert!(body.contains("credproxy_requests_total"));
    let promtool = which("promtool").expect(
        "promtool is missing: run scripts/test (it installs Debian's prometheus package) or apt-get install prometheus",
    );
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
    proxy.shutdown().await;
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(cmd)).find(|p| p.exists())
}
