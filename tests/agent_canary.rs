//! The agents' canary: keys an agent sends itself (headers, a query parameter, a cookie), in
//! report and enforce mode, allowed, would-deny and denied, at trace level, appear nowhere
//! credproxy writes — logs, audit events, metrics, its own responses, the control API, and the
//! inventory drawn from the audit log — only at the upstream a would-deny request went to.

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn agent_keys_never_leak() {
    let capture = Capture::install();
    let mut rnd = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rnd).unwrap();
    let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let keys = [format!("agentkey-{hex}-a/+="), format!("agentkey-{hex}-b"), format!("agentkey-{hex}-c")];
    let forms: Vec<String> = keys.iter().flat_map(|k| leak_forms(k)).collect();
    let up = Upstream::start().await;
    let p = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "tool-token");
    let policy = |mode: &str| {
        format!(
            r#"version: 1
mode: {mode}
audit: {{ output: "{{dir}}/audit.log", credential_query_params: [api_key], credential_cookies: [session] }}
tools:
  api:
    credential: {{ source: file, path: "{{dir}}/token" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {p}, allow_private: true, methods: [GET], paths: ["/allowed/**"] }}]
"#
        )
    };
    let proxy = Proxy::start_in(dir, &policy("report")).await;
    let pct = &leak_forms(&keys[1])[3];
    let requests = |m: &str, path: &str| {
        [
            format!("{m} http://127.0.0.1:{p}{path} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", keys[0]),
            format!("{m} http://127.0.0.1:{p}{path}?api_key={pct} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Api-Key: {}\r\nConnection: close\r\n\r\n", keys[0]),
            format!("{m} http://127.0.0.1:{p}{path} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nCookie: session={}\r\nApi-Key: {}\r\nConnection: close\r\n\r\n", keys[2], keys[1]),
        ]
    };
    let mut own = Vec::new();
    for req in requests("GET", "/allowed/1").iter().chain(&requests("POST", "/other")) {
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), 200, "{resp}");
    }
    assert!(
        up.requests()
            .iter()
            .any(|r| r.headers.get("authorization").is_some_and(|v| v.to_str().unwrap().contains(&keys[0]))),
        "a would-deny request carried the agent's key"
    );
    proxy.rewrite(&policy("enforce"));
    eventually(async || metric(&proxy.metrics().await, r#"credproxy_mode{mode="enforce"}"#) == Some(1.0), "enforce")
        .await;
    for req in requests("DELETE", "/allowed/1") {
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_error(&resp, 403, "route_denied");
        own.push(resp);
    }
    own.push(proxy.metrics().await);
    own.push(proxy.control_get("/v1/credentials").await);
    own.push(proxy.control_get("/v1/policy").await);
    own.push(get(proxy.admin, "/ready").await);
    let audit = proxy.audit().await;
    let audit_path = proxy.dir.path().join("audit.log");
    let inventory = Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .arg("inventory")
        .arg("--audit")
        .arg(&audit_path)
        .output()
        .unwrap();
    let inventory_json = Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .args(["inventory", "--json", "--suggest", "--audit"])
        .arg(&audit_path)
        .output()
        .unwrap();
    assert!(inventory.status.success() && inventory_json.status.success(), "{inventory:?}");
    proxy.shutdown().await;
    assert_eq!(
        audit.matches("\"agent_credentials\":[{").count(),
        9,
        "every request event named what the agent sent: {audit}"
    );
    let logs = capture.text();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "trace logging was on");
    own.push(String::from_utf8_lossy(&inventory.stdout).into_owned());
    own.push(String::from_utf8_lossy(&inventory_json.stdout).into_owned());
    own.push(String::from_utf8_lossy(&inventory.stderr).into_owned());
    for form in &forms {
        assert!(!logs.contains(form), "agent key in logs as {form}");
        assert!(!audit.contains(form), "agent key in audit events as {form}");
        for (i, text) in own.iter().enumerate() {
            assert!(!text.contains(form), "agent key in output {i} as {form}: {text}");
        }
    }
}
