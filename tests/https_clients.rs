//! Real agent HTTP stacks reaching an `https://` API through CONNECT interception, trusting the
//! files credproxy wrote: curl with `-x`, Python requests and httpx, the OpenAI and Anthropic
//! SDKs with only `HTTPS_PROXY`, the CA variables and a placeholder key, Node 20 with undici's
//! `EnvHttpProxyAgent` and `NODE_EXTRA_CA_CERTS`, Java's `HttpClient` with `JAVA_TOOL_OPTIONS`
//! and the PKCS12 trust store, and Go's `net/http` with `HTTPS_PROXY` and `SSL_CERT_FILE`. The upstream
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
    let up = Upstream::start_tls(ca.server_names(&[
        "api.openai.test",
        "api.anthropic.test",
        "data.example.test",
        "127.0.0.1",
    ]))
    .await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", TOKEN);
    write_file(&dir, "upstream-ca.pem", &ca.pem());
    let route =
        |host: &str, paths: &str| format!("[{{ host: {host}, port: {port}, allow_private: true, paths: {paths} }}]");
    let policy = format!(
        r#"version: 1
interception: {{ ca_cert_out: "{{dir}}/ca/ca.crt", ca_bundle_out: "{{dir}}/ca/ca-bundle.crt", java_truststore_out: "{{dir}}/ca/truststore.p12" }}
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
  ip:
    credential: {{ source: file, path: "{{dir}}/token" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: {ip}
"#,
        openai = route("api.openai.test", r#"["/v1/**"]"#),
        anthropic = route("api.anthropic.test", r#"["/v1/**"]"#),
        data = route("data.example.test", r#"["/data/**"]"#),
        ip = route("127.0.0.1", r#"["/ip/**"]"#),
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

/// An SDK, given only `HTTPS_PROXY`, `SSL_CERT_FILE`, a placeholder key in `key_var` and (to
/// reach the test's port rather than 443) a base URL in `base_var`, reaches `host` through
/// credproxy: the upstream sees `uri` with exactly `credential`. Aimed at a host no route names,
/// the CONNECT is refused, the SDK raises `APIConnectionError` and the upstream sees nothing.
async fn sdk(
    script: &str,
    (key_var, base_var): (&'static str, &'static str),
    base: &str,
    uri: &str,
    credential: String,
) {
    let s = setup().await;
    let port = s.up.port();
    let run_with = |base: String, must_fail: bool| {
        let mut c = Command::new(python());
        c.args(["-c", script]);
        let env = vec![
            ("HTTPS_PROXY", format!("http://{}", s.proxy.addr)),
            ("SSL_CERT_FILE", s.bundle.display().to_string()),
            (key_var, "credproxy".to_string()),
            (base_var, base),
        ];
        run(c, env, must_fail)
    };
    assert_eq!(
        run_with(format!("https://{}", base.replace("{port}", &port.to_string())), false).await,
        "hello from upstream"
    );
    let seen = s.up.last();
    assert_eq!(seen.uri, uri);
    assert_eq!(credentials(&seen), [credential]);
    let (before, connections) = (s.up.requests().len(), s.up.connection_count());
    let denied = base.split_once(':').map_or(String::new(), |(_, rest)| format!("https://denied.test:{rest}"));
    let out = run_with(denied.replace("{port}", &port.to_string()), true).await;
    assert!(out.contains("APIConnectionError"), "{out}");
    assert_eq!((s.up.requests().len(), s.up.connection_count()), (before, connections));
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn openai_sdk_with_https_proxy_ssl_cert_file_and_a_placeholder_key() {
    let script = "from openai import OpenAI\nc = OpenAI(max_retries=0)\n\
                  r = c.chat.completions.create(model='gpt-test', messages=[{'role': 'user', 'content': 'hi'}])\n\
                  print(r.choices[0].message.content, end='')";
    let vars = ("OPENAI_API_KEY", "OPENAI_BASE_URL");
    sdk(script, vars, "api.openai.test:{port}/v1", "/v1/chat/completions", format!("authorization: Bearer {TOKEN}"))
        .await;
}

#[tokio::test]
async fn anthropic_sdk_placeholder_x_api_key_is_replaced() {
    let script = "import anthropic\nc = anthropic.Anthropic(max_retries=0)\n\
                  r = c.messages.create(model='claude-test', max_tokens=8, messages=[{'role': 'user', 'content': 'hi'}])\n\
                  print(r.content[0].text, end='')";
    let vars = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL");
    sdk(script, vars, "api.anthropic.test:{port}", "/v1/messages", format!("x-api-key: {TOKEN}")).await;
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
    // An IP-address route: the leaf names the address alone, which OpenSSL (curl, Python) checks
    // against the CA's name constraints.
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "-x", &proxy_url, "--cacert", &s.bundle.display().to_string()]);
    c.arg(format!("https://127.0.0.1:{port}/ip/curl"));
    assert_eq!(run(c, vec![], false).await, "ok /ip/curl");
    assert_eq!(credentials(&s.up.last()), [format!("authorization: Bearer {TOKEN}")]);
    let code = "import requests, sys; r = requests.get(sys.argv[1]); r.raise_for_status(); print(r.text, end='')";
    let mut c = Command::new(python());
    c.args(["-c", code, &format!("https://127.0.0.1:{port}/ip/py")]);
    let env = vec![("HTTPS_PROXY", proxy_url.clone()), ("REQUESTS_CA_BUNDLE", s.bundle.display().to_string())];
    assert_eq!(run(c, env, false).await, "ok /ip/py");
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
    let code = "import httpx, sys\ntry:\n    httpx.get(sys.argv[1])\nexcept httpx.ProxyError as e:\n    print('refused', '403' in str(e))";
    let mut c = Command::new(python());
    c.args(["-c", code, &denied]);
    let env = vec![("HTTPS_PROXY", proxy_url.clone()), ("SSL_CERT_FILE", s.bundle.display().to_string())];
    assert_eq!(run(c, env, false).await.trim(), "refused True");
    assert_eq!(s.up.requests().len(), before);
    assert_eq!(s.up.connection_count(), connections);
    s.proxy.shutdown().await;
}

fn manifest(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel).display().to_string()
}

/// `cmd` aimed at an allowed URL (the upstream gets exactly the injected token and the output is
/// `expect`), then at a denied host (the command fails and the upstream sees nothing).
async fn allowed_then_denied(
    s: &Setup,
    make: impl Fn(&str) -> Command,
    env: Vec<(&'static str, String)>,
    expect: &str,
    what: &str,
) {
    let port = s.up.port();
    let out = run(make(&format!("https://data.example.test:{port}/data/{what}")), env.clone(), false).await;
    assert_eq!(out, format!("{expect}ok /data/{what}"), "{what}");
    let seen = s.up.last();
    assert_eq!(seen.uri, format!("/data/{what}"));
    assert_eq!(credentials(&seen), [format!("authorization: Bearer {TOKEN}")], "{what}");
    let (before, connections) = (s.up.requests().len(), s.up.connection_count());
    let out = run(make(&format!("https://denied.test:{port}/data/{what}")), env, true).await;
    assert!(out.contains("403") || out.to_lowercase().contains("refused"), "{what}: {out}");
    assert_eq!((s.up.requests().len(), s.up.connection_count()), (before, connections), "{what}");
}

#[tokio::test]
async fn node_20_with_undici_env_http_proxy_agent_and_node_extra_ca_certs() {
    let s = setup().await;
    let node_modules = manifest("tests/node/node_modules/undici");
    assert!(
        PathBuf::from(&node_modules).exists(),
        "{node_modules} is missing: run scripts/test (npm ci in tests/node)"
    );
    let env = vec![
        ("HTTPS_PROXY", format!("http://{}", s.proxy.addr)),
        ("NODE_EXTRA_CA_CERTS", s.proxy.dir.path().join("ca/ca.crt").display().to_string()),
    ];
    let make = |url: &str| {
        let mut c = Command::new("node");
        c.args([&manifest("tests/node/agent.mjs"), url]);
        c
    };
    allowed_then_denied(&s, make, env, "", "node").await;
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn java_http_client_with_java_tool_options_and_the_trust_store() {
    let s = setup().await;
    let store = s.proxy.dir.path().join("ca/truststore.p12");
    let options = format!(
        "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={} -Djavax.net.ssl.trustStore={} \
         -Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12",
        s.proxy.addr.port(),
        store.display()
    );
    let make = |url: &str| {
        let mut c = Command::new("java");
        c.args([&manifest("tests/java/Agent.java"), url]);
        c
    };
    // Java prefers h2, which the tunnel offers.
    allowed_then_denied(&s, make, vec![("JAVA_TOOL_OPTIONS", options)], "HTTP_2 ", "java").await;
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn go_net_http_with_https_proxy_and_ssl_cert_file() {
    let s = setup().await;
    // Built once into target/ (not `go run`, which executes from a temporary folder).
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/go-agent");
    let binary = target.join("agent");
    let mut build = Command::new("go");
    build.args(["build", "-o"]).arg(&binary).arg(manifest("tests/go/agent.go"));
    build.env("GOCACHE", target.join("cache")).env("GOFLAGS", "-mod=mod").env("GO111MODULE", "off");
    run(build, vec![], false).await;
    let env =
        vec![("HTTPS_PROXY", format!("http://{}", s.proxy.addr)), ("SSL_CERT_FILE", s.bundle.display().to_string())];
    let make = |url: &str| {
        let mut c = Command::new(&binary);
        c.arg(url);
        c
    };
    allowed_then_denied(&s, make, env, "HTTP/2.0 ", "go").await;
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn keytool_lists_every_root_of_the_bundle_as_a_trusted_entry() {
    let s = setup().await;
    let store = s.proxy.dir.path().join("ca/truststore.p12");
    let mut c = Command::new("keytool");
    c.args(["-list", "-rfc", "-storetype", "PKCS12", "-storepass", "changeit", "-keystore"]).arg(&store);
    let listed = run(c, vec![], false).await;
    let trusted = listed.matches("trustedCertEntry").count();
    let in_store: std::collections::HashSet<Vec<u8>> = pem_certs(&listed).into_iter().map(|c| c.to_vec()).collect();
    let bundle = std::fs::read_to_string(&s.bundle).unwrap();
    let in_bundle: std::collections::HashSet<Vec<u8>> = pem_certs(&bundle).into_iter().map(|c| c.to_vec()).collect();
    assert!(in_bundle.len() > 10);
    assert_eq!(trusted, in_bundle.len(), "every certificate is a trusted entry");
    assert_eq!(in_store, in_bundle);
    s.proxy.shutdown().await;
}
