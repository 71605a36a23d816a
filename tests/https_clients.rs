//! Real agent HTTP stacks reaching an `https://` API through CONNECT interception, trusting the
//! bundle credproxy wrote: curl with `-x`, Python requests and httpx, and the OpenAI and
//! Anthropic SDKs with only `HTTPS_PROXY`, the CA variables and a placeholder key. The upstream
//! (its own test certificate, trusted by credproxy through the tool's `ca_file`) must receive
//! exactly the injected credential; a denied host gets 403 and the upstream sees nothing.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const TOKEN: &str = "https-client-token";

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/test (it creates .venv from tests/requirements.txt)", p.display());
    p
}

struct Setup {
    up: Upstream,
    proxy: Proxy,
    bundle: PathBuf,
}

/// `openai` (Authorization: Bearer), `anthropic` (X-Api-Key) and `data` tools at
/// `https://*.example.test:PORT`, all resolved to one loopback TLS upstream; interception writes
/// into `{dir}/ca`.
async fn setup() -> Setup {
    let ca = TestCa::new();
    let up =
        Upstream::start_tls(ca.server_names(&["api.openai.test", "api.anthropic.test", "data.example.test"])).await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    write_file(&dir, "upstream-ca.pem", &ca.pem());
    let route =
        |host: &str, paths: &str| format!("[{{ host: {host}, port: {port}, allow_private: true, paths: {paths} }}]");
    let policy = format!(
        r#"version: 1
interception: {{ ca_cert_out: "{{dir}}/ca/ca.crt", ca_bundle_out: "{{dir}}/ca/ca-bundle.crt" }}
resolve: {{ "*.example.test": 127.0.0.1, api.openai.test: 127.0.0.1, api.anthropic.test: 127.0.0.1, denied.test: 127.0.0.1 }}
tools:
  openai:
    credential: {{ source: file, path: "{{dir}}/token" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: {openai}
  anthropic:
    credential: {{ source: file, path: "{{dir}}/token" }}
    inject: {{ header: X-Api-Key, value: "{{token}}" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: {anthropic}
  data:
    credential: {{ source: file, path: "{{dir}}/token" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: {data}
"#,
        openai = route("api.openai.test", r#"["/v1/**"]"#),
        anthropic = route("api.anthropic.test", r#"["/v1/**"]"#),
        data = route("data.example.test", r#"["/data/**"]"#),
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let bundle = proxy.dir.path().join("ca/ca-bundle.crt");
    Setup { up, proxy, bundle }
}

/// Run `cmd` with only the proxy variables given here (none inherited), returning stdout, or
/// stderr too when `must_fail`.
async fn run(mut cmd: Command, env: Vec<(&'static str, String)>, must_fail: bool) -> String {
    for v in
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"]
    {
        cmd.env_remove(v);
    }
    for v in
        ["SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
    {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.success(), !must_fail, "{cmd:?}:\n{stdout}\n{stderr}");
        if must_fail {
            stdout + &stderr
        } else {
            stdout
        }
    })
    .await
    .unwrap()
}

fn credentials(seen: &Seen) -> Vec<String> {
    ["authorization", "x-api-key", "api-key"]
        .iter()
        .flat_map(|h| seen.headers.get_all(*h).iter().map(move |v| format!("{h}: {}", v.to_str().unwrap())))
        .collect()
}

#[tokio::test]
async fn openai_sdk_with_https_proxy_ssl_cert_file_and_a_placeholder_key() {
    let s = setup().await;
    let script = "from openai import OpenAI\nc = OpenAI(max_retries=0)\n\
                  r = c.chat.completions.create(model='gpt-test', messages=[{'role': 'user', 'content': 'hi'}])\n\
                  print(r.choices[0].message.content, end='')";
    let mut c = Command::new(python());
    c.args(["-c", script]);
    let env = vec![
        ("HTTPS_PROXY", format!("http://{}", s.proxy.addr)),
        ("SSL_CERT_FILE", s.bundle.display().to_string()),
        ("OPENAI_API_KEY", "credproxy".to_string()),
        // The real API is on 443; the test's upstream is on a free port.
        ("OPENAI_BASE_URL", format!("https://api.openai.test:{}/v1", s.up.port())),
    ];
    assert_eq!(run(c, env, false).await, "hello from upstream");
    let seen = s.up.last();
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(credentials(&seen), [format!("authorization: Bearer {TOKEN}")]);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn anthropic_sdk_placeholder_x_api_key_is_replaced() {
    let s = setup().await;
    let script = "import anthropic\nc = anthropic.Anthropic(max_retries=0)\n\
                  r = c.messages.create(model='claude-test', max_tokens=8, messages=[{'role': 'user', 'content': 'hi'}])\n\
                  print(r.content[0].text, end='')";
    let mut c = Command::new(python());
    c.args(["-c", script]);
    let env = vec![
        ("HTTPS_PROXY", format!("http://{}", s.proxy.addr)),
        ("SSL_CERT_FILE", s.bundle.display().to_string()),
        ("ANTHROPIC_API_KEY", "credproxy".to_string()),
        ("ANTHROPIC_BASE_URL", format!("https://api.anthropic.test:{}", s.up.port())),
    ];
    assert_eq!(run(c, env, false).await, "hello from upstream");
    let seen = s.up.last();
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(credentials(&seen), [format!("x-api-key: {TOKEN}")]);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn requests_httpx_and_curl_through_https_proxy_with_the_bundle() {
    let s = setup().await;
    let port = s.up.port();
    let url = format!("https://data.example.test:{port}/data/items");
    let proxy_url = format!("http://{}", s.proxy.addr);
    for lib in ["requests", "httpx"] {
        let code = format!(
            "import {lib}, sys; r = {lib}.get(sys.argv[1], headers={{'Authorization': 'Bearer agent-own', 'X-Api-Key': 'k'}}); r.raise_for_status(); print(r.text, end='')"
        );
        let mut c = Command::new(python());
        c.args(["-c", &code, &url]);
        let env = vec![
            ("HTTPS_PROXY", proxy_url.clone()),
            ("SSL_CERT_FILE", s.bundle.display().to_string()),
            ("REQUESTS_CA_BUNDLE", s.bundle.display().to_string()),
        ];
        assert_eq!(run(c, env, false).await, "ok /data/items", "{lib}");
        assert_eq!(credentials(&s.up.last()), [format!("authorization: Bearer {TOKEN}")], "{lib}");
    }
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "-x", &proxy_url, "--cacert", &s.bundle.display().to_string()]);
    c.args(["-H", "Authorization: Bearer agent-own", &format!("https://data.example.test:{port}/data/curl")]);
    assert_eq!(run(c, vec![], false).await, "ok /data/curl");
    assert_eq!(credentials(&s.up.last()), [format!("authorization: Bearer {TOKEN}")]);
    let before = s.up.requests().len();
    let connections = s.up.connection_count();
    // The same clients aimed at a denied host: 403 at the CONNECT, nothing reaches the upstream.
    let denied = format!("https://denied.test:{port}/data/x");
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "/dev/null", "-w", "%{http_connect}", "-x", &proxy_url, &denied]);
    let out = run(c, vec![], true).await;
    assert!(out.starts_with("403"), "{out}");
    let code = "import requests, sys\ntry:\n    requests.get(sys.argv[1])\nexcept requests.exceptions.ProxyError as e:\n    print('refused', '403' in str(e))";
    let mut c = Command::new(python());
    c.args(["-c", code, &denied]);
    let env = vec![("HTTPS_PROXY", proxy_url.clone()), ("REQUESTS_CA_BUNDLE", s.bundle.display().to_string())];
    assert_eq!(run(c, env, false).await.trim(), "refused True");
    assert_eq!(s.up.requests().len(), before);
    assert_eq!(s.up.connection_count(), connections);
    s.proxy.shutdown().await;
}
