//! `credproxy inventory` on an audit log recorded from a mixed scenario (two hosts with tools,
//! an unlisted one, ids in paths, allowed, would-deny and denied requests, two agent keys):
//! exact tables, the same from rotated and gzip-compressed pieces and stdin, JSON for machines,
//! and a suggested policy that `check` accepts once filled in and that, replayed, allows what
//! was observed and denies what was not.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const KEY_A: &str = "sk-agent-key-AAAA";
const KEY_B: &str = "sk-agent-key-BBBB";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_credproxy"))
}

/// The recording policy: `one` (a credential) may GET items, `two` (none) the status page; a
/// second route of `two` is never used.
fn recording_policy(p: u16, mode: &str) -> String {
    format!(
        r#"version: 1
mode: {mode}
audit: {{ output: "{{dir}}/audit.log", fingerprint_key_file: "{{dir}}/fp.key" }}
resolve: {{ api.one.localhost: 127.0.0.1, api.two.localhost: 127.0.0.1, unlisted.localhost: 127.0.0.1 }}
tools:
  one:
    credential: {{ source: file, path: "{{dir}}/token-one" }}
    routes: [{{ scheme: http, host: api.one.localhost, port: {p}, allow_private: true, methods: [GET], paths: ["/v1/items/*"] }}]
  two:
    routes:
      - {{ scheme: http, host: api.two.localhost, port: {p}, allow_private: true, methods: [GET], paths: ["/v2/status"] }}
      - {{ scheme: http, host: api.two.localhost, port: {p}, allow_private: true, paths: ["/v2/admin/**"] }}
"#
    )
}

fn request(host: &str, p: u16, method: &str, path: &str, cred: &str) -> Vec<u8> {
    format!("{method} http://{host}:{p}{path} HTTP/1.1\r\nHost: {host}:{p}\r\n{cred}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn bearer(k: &str) -> String {
    format!("Authorization: Bearer {k}\r\n")
}

fn api_key(k: &str) -> String {
    format!("X-Api-Key: {k}\r\n")
}

/// (host, method, path, agent credential header, status in report mode)
fn scenario() -> Vec<(&'static str, &'static str, &'static str, String, u16)> {
    vec![
        ("api.one.localhost", "GET", "/v1/items/123", bearer(KEY_A), 200),
        ("api.one.localhost", "GET", "/v1/items/456", bearer(KEY_A), 200),
        ("api.one.localhost", "POST", "/v1/items", bearer(KEY_A), 200),
        ("api.two.localhost", "GET", "/v2/users/3f2b8c1e-9a4d-4e5f-8a7b-0c1d2e3f4a5b/profile", api_key(KEY_B), 200),
        ("api.two.localhost", "GET", "/v2/status", String::new(), 200),
        ("unlisted.localhost", "GET", "/x", api_key(KEY_B), 403),
    ]
}

/// Record the scenario: report mode, then one request denied in enforce mode. Returns the
/// folder (audit.log, the recording policy) and the upstream's port.
async fn record(up: &Upstream) -> tempfile::TempDir {
    let p = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token-one", "tool-token-one");
    write_file(&dir, "fp.key", "inventory-test-fingerprint-key\n");
    let proxy = Proxy::start_in(dir, &recording_policy(p, "report")).await;
    for (host, method, path, cred, want) in scenario() {
        let resp = raw(proxy.addr, &request(host, p, method, path, &cred)).await;
        assert_eq!(status(&resp), want, "{method} {host}{path}: {resp}");
    }
    proxy.rewrite(&recording_policy(p, "enforce"));
    eventually(async || metric(&proxy.metrics().await, r#"credproxy_mode{mode="enforce"}"#) == Some(1.0), "enforce")
        .await;
    let resp = raw(proxy.addr, &request("api.one.localhost", p, "DELETE", "/v1/items/789", &bearer(KEY_A))).await;
    assert_error(&resp, 403, "route_denied");
    proxy.audit().await;
    let mut running = proxy;
    let dir = std::mem::replace(&mut running.dir, tempfile::tempdir().unwrap());
    running.shutdown().await;
    dir
}

fn inventory(args: &[&str], files: &[&Path], stdin: Option<&[u8]>) -> String {
    let mut cmd = bin();
    cmd.arg("inventory")
        .args(args)
        .arg("--audit")
        .args(files)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The text with the upstream's port, the fingerprints (keyed, but tests should not depend
/// on HMAC outputs) and the time window replaced by stable names.
fn stable(text: &str, p: u16, fa: &str, fb: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[0] = lines[0].split(',').next().unwrap().to_string();
    lines.join("\n").replace(&p.to_string(), "PORT").replace(fa, "hmac:KEY_A").replace(fb, "hmac:KEY_B") + "\n"
}

/// Compared with runs of spaces collapsed (the port's width moves the columns).
const EXPECTED: &str = "7 request events

DESTINATIONS
DESTINATION                     REQUESTS  ALLOWED  WOULD_DENY  DENIED  AGENT_KEYS
http://api.one.localhost:PORT   4         2        1           1       1
http://api.two.localhost:PORT   2         1        1           0       1
http://unlisted.localhost:PORT  1         0        0           1       1

PATHS (ids folded to *)
DESTINATION                     METHOD  PATH                 REQUESTS  SERVED BY / WHY NOT
http://api.one.localhost:PORT   DELETE  /v1/items/*          1         denied:method_or_path_not_allowed
http://api.one.localhost:PORT   GET     /v1/items/*          2         one
http://api.one.localhost:PORT   POST    /v1/items            1         would_deny:method_or_path_not_allowed
http://api.two.localhost:PORT   GET     /v2/status           1         two
http://api.two.localhost:PORT   GET     /v2/users/*/profile  1         would_deny:method_or_path_not_allowed
http://unlisted.localhost:PORT  GET     /x                   1         denied:private_address

AGENT CREDENTIALS (2 distinct keys)
FINGERPRINT  FIELD                        REQUESTS  SENT TO
hmac:KEY_A   header authorization Bearer  4         http://api.one.localhost:PORT (4)
hmac:KEY_B   header x-api-key             2         http://api.two.localhost:PORT (1), http://unlisted.localhost:PORT (1)

POLICY ROUTES
ROUTE                REQUESTS  MATCHES
tools.one.routes[0]  2         http://api.one.localhost:PORT GET /v1/items/*
tools.two.routes[0]  1         http://api.two.localhost:PORT GET /v2/status
tools.two.routes[1]  0         http://api.two.localhost:PORT any /v2/admin/**  (unused: a candidate to remove)
1 of 3 routes unused in this window
";

fn collapse(s: &str) -> String {
    s.lines()
        .map(|l| l.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn inventory_tables_json_and_a_suggested_policy_that_replays() {
    let up = Upstream::start().await;
    let p = up.port();
    let dir = record(&up).await;
    let log = dir.path().join("audit.log");
    let policy = dir.path().join("policy.yaml");
    let audit = std::fs::read_to_string(&log).unwrap();
    for k in [KEY_A, KEY_B, "tool-token-one"] {
        assert!(!audit.contains(k), "{k} in the audit log");
    }
    // The two keys' fingerprints, read from the events that carried them.
    let fp = |needle: &str| -> String {
        let line = audit.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {audit}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["agent_credentials"][0]["fingerprint"].as_str().unwrap().to_string()
    };
    let (fa, fb) = (fp("/v1/items/123"), fp("/v2/users/"));
    assert_ne!(fa, fb);

    let text = inventory(&["--config", policy.to_str().unwrap()], &[&log], None);
    assert_eq!(collapse(&stable(&text, p, &fa, &fb)), collapse(EXPECTED), "{text}");
    // The columns line up: every row of a table starts its second column where the header does.
    let dest_rows: Vec<&str> = text.lines().skip_while(|l| *l != "DESTINATIONS").skip(1).take(4).collect();
    let col = dest_rows[0].find("REQUESTS").unwrap();
    assert!(dest_rows.iter().skip(1).all(|r| r.as_bytes()[col - 1] == b' ' && r.as_bytes()[col] != b' '), "{text}");

    // Rotated pieces (the older one gzip-compressed) and stdin give the same tables.
    let lines: Vec<&str> = audit.lines().collect();
    let (old, new) = lines.split_at(lines.len() / 2);
    let gz = dir.path().join("audit.log.1.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all((old.join("\n") + "\n").as_bytes()).unwrap();
    enc.finish().unwrap();
    let newer = (new.join("\n") + "\n").into_bytes();
    let pieces = inventory(&["--config", policy.to_str().unwrap()], &[&gz, Path::new("-")], Some(&newer));
    assert_eq!(pieces, text);

    // JSON: the same numbers.
    let json: serde_json::Value = serde_json::from_str(&inventory(&["--json"], &[&log], None)).unwrap();
    assert_eq!(json["events"], 7);
    assert_eq!(json["distinct_agent_keys"], 2);
    let dests = json["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 3);
    assert_eq!(
        (
            dests[0]["host"].as_str(),
            dests[0]["allowed"].as_u64(),
            dests[0]["would_deny"].as_u64(),
            dests[0]["denied"].as_u64()
        ),
        (Some("api.one.localhost"), Some(2), Some(1), Some(1))
    );

    suggested_policy_replays(&up, &dir, &log, &policy).await;
}

/// `--suggest`: fill in the placeholders, `check` accepts it; replay every request that went out
/// through credproxy under it: all allowed, each with the tool's credential in place of the
/// agent's key; an unobserved method or path, and what was denied, are denied.
async fn suggested_policy_replays(up: &Upstream, dir: &tempfile::TempDir, log: &Path, policy: &Path) {
    let p = up.port();
    let draft = inventory(&["--suggest", "--config", policy.to_str().unwrap()], &[log], None);
    let unfilled = dir.path().join("draft.yaml");
    std::fs::write(&unfilled, &draft).unwrap();
    let check = bin().args(["check", "--config"]).arg(&unfilled).output().unwrap();
    assert!(!check.status.success(), "placeholders must be filled in first:\n{draft}");
    assert!(String::from_utf8_lossy(&check.stderr).contains("CREDPROXY_FILL_IN_API_ONE_LOCALHOST"), "{check:?}");

    let replay_dir = tempfile::tempdir().unwrap();
    let filled = draft
        .replace("${CREDPROXY_FILL_IN_API_ONE_LOCALHOST}", "{dir}/token-one")
        .replace("${CREDPROXY_FILL_IN_API_TWO_LOCALHOST}", "{dir}/token-two");
    let placeholders = filled.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains("CREDPROXY_FILL_IN"));
    assert_eq!(placeholders.count(), 0, "{filled}");
    write_file(&replay_dir, "token-one", "tool-token-one");
    write_file(&replay_dir, "token-two", "tool-token-two");
    let with_env = format!(
        "audit: {{ output: \"{{dir}}/audit.log\", requests: all }}\nresolve: {{ api.one.localhost: 127.0.0.1, api.two.localhost: 127.0.0.1, unlisted.localhost: 127.0.0.1 }}\n{filled}"
    );
    let rendered = Proxy::render(&replay_dir, &with_env);
    let check_file = write_file(&replay_dir, "check.yaml", &rendered);
    let check = bin().args(["check", "--config"]).arg(&check_file).output().unwrap();
    assert!(check.status.success(), "{}\n{rendered}", String::from_utf8_lossy(&check.stderr));

    let proxy = Proxy::start_in(replay_dir, &with_env).await;
    let before = up.requests().len();
    for (host, method, path, cred, want) in scenario() {
        let resp = raw(proxy.addr, &request(host, p, method, path, &cred)).await;
        if want == 403 {
            assert_error(&resp, 403, "route_denied");
            continue;
        }
        assert_eq!(status(&resp), 200, "{method} {host}{path}: {resp}");
        let seen = up.last();
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), (method, path));
        for k in [KEY_A, KEY_B] {
            assert!(!format!("{:?}", seen.headers).contains(k), "the agent's key went through: {:?}", seen.headers);
        }
        match host {
            "api.one.localhost" => assert_eq!(seen.headers["authorization"], "Bearer tool-token-one"),
            // One tool per host: its credential goes with every request it serves.
            _ => assert_eq!(seen.headers["x-api-key"], "tool-token-two"),
        }
    }
    assert_eq!(up.requests().len(), before + 5);
    for (host, method, path) in [
        ("api.one.localhost", "PUT", "/v1/items/123"),
        ("api.one.localhost", "GET", "/v1/other"),
        ("api.two.localhost", "POST", "/v2/status"),
        ("api.one.localhost", "DELETE", "/v1/items/789"),
        ("api.two.localhost", "GET", "/v2/admin/x"),
    ] {
        let resp = raw(proxy.addr, &request(host, p, method, path, &bearer(KEY_A))).await;
        assert_error(&resp, 403, "route_denied");
    }
    assert_eq!(up.requests().len(), before + 5, "nothing unobserved reached the upstream");
    proxy.shutdown().await;
}

#[test]
fn other_events_are_passed_over_broken_lines_counted_and_a_missing_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_file(
        &dir,
        "audit.log",
        concat!(
            r#"{"ts":"2026-12-03T10:00:00.000Z","event":"credential.issued","instance":"i","tool":"a"}"#,
            "\nnot json at all\n",
            r#"{"ts":"2026-12-03T10:00:01.000Z","event":"request.denied","instance":"i","method":"GET","scheme":"https","host":"x.example","port":443,"path":"/a/42","tool":null,"route":null,"reason":"no_route_for_host","agent_credentials":[]}"#,
            "\n{\"truncated\": \n"
        ),
    );
    let text = inventory(&[], &[&log], None);
    assert!(
        text.starts_with("1 request events, 2026-12-03T10:00:01.000Z to 2026-12-03T10:00:01.000Z\n2 lines skipped"),
        "{text}"
    );
    assert!(text.contains("https://x.example:443  GET     /a/*  1         denied:no_route_for_host"), "{text}");
    let missing = bin().args(["inventory", "--audit"]).arg(dir.path().join("nope.log")).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("nope.log") && err.contains("No such file"), "{err}");
}
