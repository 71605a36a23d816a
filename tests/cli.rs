//! The command line: `check` on every shipped and every broken policy, `explain`, `run`'s exit
//! codes, and graceful shutdown on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::captured::*;
use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_credproxy"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: &Path) -> (bool, String, String) {
    let out =
        bin().args(["check", "--config"]).arg(path).env("HOME", "/root").env("POD_NAME", "pod-1").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, out, err) = check(&path);
            assert!(ok, "{}: {err}", path.display());
            assert!(out.starts_with("policy OK"), "{out}");
            n += 1;
        }
    }
    assert!(n >= 2, "config/ holds the shipped policies");
}

/// Each fixture states what `check` must report: `# expect: PATH`, `# line: N` and optionally `# message: TEXT`.
fn expectations(text: &str) -> (String, Option<String>, Option<String>) {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# {k}: ")).map(str::to_string));
    (field("expect").expect("fixture has # expect:"), field("line"), field("message"))
}

#[test]
fn every_bad_fixture_fails_check_and_run_with_its_path_and_line() {
    let dir = root().join("tests/fixtures/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let (want_path, line, message) = expectations(&text);
        let (ok, _, err) = check(&path);
        assert!(!ok, "{} passed check", path.display());
        let line = line.unwrap_or_else(|| panic!("{}: every fixture names its line", path.display()));
        let want = format!("{want_path} (line {line}): ");
        assert!(err.contains(&want), "{}: wanted `{want}` in:\n{err}", path.display());
        if let Some(m) = message {
            assert!(err.contains(&m), "{}: wanted `{m}` in:\n{err}", path.display());
        }
        let run = bin().args(["run", "--config"]).arg(&path).env("HOME", "/root").output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{}", path.display());
        assert!(String::from_utf8_lossy(&run.stderr).contains(&want), "{}", path.display());
        n += 1;
    }
    assert!(n >= 15, "one fixture per error kind");
}

#[test]
fn four_errors_are_listed_together_without_values() {
    let (ok, _, err) = check(&root().join("tests/fixtures/four_errors.yaml"));
    assert!(!ok);
    assert!(err.contains("4 errors in policy"), "{err}");
    for p in [
        "tools.github.inject.value",
        "tools.github.routes[0].paths[0]",
        "tools.openai.not_before",
        "tools.openai.routes[0].scheme",
    ] {
        assert!(err.contains(&format!("{p} (line ")), "missing {p} with its line:\n{err}");
    }
    assert!(!err.contains("sk-live"), "a value was echoed:\n{err}");
}

#[test]
fn explain_says_which_tool_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        &dir,
        "p.yaml",
        "version: 1\ntools:\n  github:\n    credential: { source: env, var: HOME }\n    routes: [{ host: api.github.com, methods: [GET], paths: [\"/repos/acme/*/issues\"] }]\n",
    );
    let out = bin()
        .args(["explain", "--config"])
        .arg(&policy)
        .args(["GET", "https://API.github.com./repos/acme/x/../y/issues"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ALLOW  tool github via tools.github.routes[0]"), "{text}");
    assert!(text.contains("/repos/acme/y/issues"), "{text}");
    let out = bin()
        .args(["explain", "--config"])
        .arg(&policy)
        .args(["POST", "https://api.github.com/repos/acme/y/issues"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("DENY") && text.contains("method_or_path_not_allowed"), "{text}");
}

/// A policy file with the three listeners on these ports and `tools` (YAML under `tools:`).
fn policy_file(dir: &tempfile::TempDir, (p, a, c): (u16, u16, u16), tools: &str) -> PathBuf {
    write_file(
        dir,
        "p.yaml",
        &format!("version: 1\nlisten: {{ proxy: 127.0.0.1:{p}, admin: 127.0.0.1:{a}, control: 127.0.0.1:{c} }}\ntools:\n{tools}"),
    )
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, a, c) = (free_port(), free_port(), free_port());
    let tools = format!(
        "  api:\n    upstream: http://127.0.0.1:{0}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {0}, allow_private: true }}]\n",
        up.port()
    );
    let mut run = Captured::run(&policy_file(&dir, (p, a, c), &tools), &[]);
    // No credential to wait for: listening is ready.
    assert!(run.logged(&["credproxy listening"]).await, "credproxy did not start: {}", run.stderr());
    let admin = format!("127.0.0.1:{a}").parse().unwrap();
    assert_eq!(status(&get(admin, "/ready").await), 200);
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let slow = tokio::spawn(async move { get(proxy, "/api/slow").await });
    // In flight: the upstream has it (and answers 1.5 s later).
    eventually(async || up.requests().iter().any(|r| r.uri == "/slow"), "the request in flight").await;
    let killed = Command::new("kill").args(["-TERM", &run.child.id().expect("running").to_string()]).status().unwrap();
    assert!(killed.success());
    let resp = slow.await.unwrap();
    assert_eq!(status(&resp), 200, "the in-flight request was cut: {resp}");
    let code = exit_code(&mut run.child).await;
    assert_eq!(code, Some(0));
}

/// `run` from `$CREDPROXY_CONFIG` with `--log-format json`; `status` over the control socket
/// with and without its bearer token; an exec helper's stderr never reaches credproxy's output;
/// SIGINT stops it cleanly.
#[tokio::test]
async fn run_from_env_json_logs_status_over_the_socket_and_sigint() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, a) = (free_port(), free_port());
    let sock = dir.path().join("ctl/control.sock");
    write_file(&dir, "control-token", "ctl-s3cret\n");
    let helper = write_file(
        &dir,
        "helper.sh",
        "#!/bin/sh\necho 'HELPER-STDERR-CANARY' >&2\necho '{\"token\": \"exec-token\", \"expires_in\": 600}'\n",
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write_file(
        &dir,
        "p.yaml",
        &format!(
            "version: 1\nlisten: {{ proxy: 127.0.0.1:{p}, admin: 127.0.0.1:{a}, control: \"unix:{sock}\", control_auth_file: \"{d}/control-token\" }}\n\
             tools:\n  api:\n    upstream: http://127.0.0.1:{up}\n    credential: {{ source: exec, command: [\"{helper}\"] }}\n    \
             routes: [{{ scheme: http, host: 127.0.0.1, port: {up}, allow_private: true }}]\n",
            sock = sock.display(),
            d = dir.path().display(),
            up = up.port(),
            helper = helper.display(),
        ),
    );
    let mut cmd = tokio::process::Command::from(bin());
    cmd.args(["run", "--log-format", "json"]).env("CREDPROXY_CONFIG", dir.path().join("p.yaml"));
    let mut run = Captured::spawn(cmd);
    // Ready once listening with the exec credential issued (published before it is logged).
    let started = run.logged(&["credproxy listening", "credential.issued"]).await;
    assert!(started, "credproxy did not become ready: {}", run.stderr());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{a}").parse().unwrap();
    assert_eq!(status(&get(admin, "/ready").await), 200);
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    assert_eq!(status(&get(proxy, "/api/x").await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer exec-token");

    let control = format!("unix:{}", sock.display());
    let with_token = bin()
        .args(["status", "--control", &control, "--control-auth-file"])
        .arg(dir.path().join("control-token"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&with_token.stdout);
    assert!(with_token.status.success(), "{}", String::from_utf8_lossy(&with_token.stderr));
    assert!(table.lines().any(|l| l.starts_with("api ") && l.contains("exec") && l.contains("valid")), "{table}");
    let without = bin().args(["status"]).env("CREDPROXY_CONTROL", &control).output().unwrap();
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("--control-auth-file"), "{without:?}");

    let killed = Command::new("kill").args(["-INT", &run.child.id().expect("running").to_string()]).status().unwrap();
    assert!(killed.success());
    let code = exit_code(&mut run.child).await;
    let (stdout, stderr) = run.output().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("HELPER-STDERR-CANARY") && !stderr.contains("HELPER-STDERR-CANARY"));
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    assert!(!sock.exists(), "the control socket is removed at exit");
}

/// `run --ca-dir DIR` turns interception on for a policy without an `interception:` block (and
/// one that intercepts nothing): the three files exist, in full, by the time `/ready` is 200.
#[tokio::test]
async fn ca_dir_writes_the_three_files_before_ready_even_when_nothing_is_intercepted() {
    let dir = tempfile::tempdir().unwrap();
    let (p, a, c) = (free_port(), free_port(), free_port());
    let policy = policy_file(&dir, (p, a, c), "  pypi:\n    routes: [{ host: pypi.org }]\n");
    let ca_dir = dir.path().join("run/credproxy");
    let mut run = Captured::run(&policy, &["--ca-dir".as_ref(), ca_dir.as_os_str()]);
    // No credential to wait for: listening is ready.
    let started = run.logged(&["credproxy listening"]).await;
    let ready = status(&get(format!("127.0.0.1:{a}").parse().unwrap(), "/ready").await) == 200;
    let read = |f: &str| std::fs::read(ca_dir.join(f)).unwrap_or_default();
    let (cert, bundle, store) = (read("ca.crt"), read("ca-bundle.crt"), read("truststore.p12"));
    let _ = run.child.kill().await;
    assert!(started && ready, "credproxy did not become ready: {}", run.stderr());
    let cas = pem_certs(std::str::from_utf8(&cert).unwrap());
    assert_eq!(cas.len(), 1, "one CA");
    let in_bundle = pem_certs(std::str::from_utf8(&bundle).unwrap());
    assert_eq!(in_bundle.last(), Some(&cas[0]), "the bundle ends with the CA");
    assert!(in_bundle.len() > 10, "after the system's roots");
    assert_eq!(store.first(), Some(&0x30), "a DER PKCS12 file");
}

/// `run --proxy-listen --admin-listen --control` override the policy's `listen.*`, as the injector
/// relies on: the listeners are where the flags say, the policy's own ports stay free, and a
/// non-loopback `--proxy-listen` meets the same check as the file (it needs `proxy_auth_file`).
#[tokio::test]
async fn listen_flags_override_the_policy_and_meet_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (p, a, c) = (free_port(), free_port(), free_port());
    let policy = policy_file(&dir, (p, a, c), "  pypi:\n    routes: [{ host: pypi.org }]\n");
    let (fp, fa) = (free_port(), free_port());
    let sock = dir.path().join("ctl/control.sock");
    let control = format!("unix:{}", sock.display());
    let (proxy, admin) = (format!("127.0.0.1:{fp}"), format!("127.0.0.1:{fa}"));
    let args = ["--proxy-listen", &proxy, "--admin-listen", &admin, "--control", &control];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    let mut run = Captured::run(&policy, &args);
    let started = run.logged(&["credproxy listening"]).await;
    let ready = status(&get(admin.parse().unwrap(), "/ready").await);
    let proxy_answers = status(&get(proxy.parse().unwrap(), "/nothing").await);
    let policy_ports_free = [p, a, c].map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    let sock_exists = sock.exists();
    let _ = run.child.kill().await;
    assert!(started, "{}", run.stderr());
    assert_eq!(ready, 200, "the admin listener is on --admin-listen");
    assert_eq!(proxy_answers, 403, "the proxy is on --proxy-listen and denies an unknown route");
    assert_eq!(policy_ports_free, [true; 3], "nothing listens on the policy's own addresses");
    assert!(sock_exists, "the control socket is at --control");

    let out = bin().args(["run", "--config"]).arg(&policy).args(["--proxy-listen", "0.0.0.0:1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("listen.proxy") && err.contains("proxy_auth_file"), "{err}");
    let out = bin().args(["run", "--config"]).arg(&policy).args(["--control", "unix:/tmp/${HOME}/s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses a ${{ in --control");
}

/// `run` makes itself non-dumpable: another process of the same user (an agent running as the
/// sidecar's UID) cannot read its /proc files, while it can read those of an ordinary process.
#[tokio::test]
async fn another_process_of_the_same_user_cannot_read_its_memory_or_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (p, a, c) = (free_port(), free_port(), free_port());
    let policy = policy_file(&dir, (p, a, c), "  pypi:\n    routes: [{ host: pypi.org }]\n");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |cmd: &mut tokio::process::Command| {
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    };
    let mut cmd = tokio::process::Command::new("setpriv");
    as_nobody(&mut cmd);
    cmd.arg(env!("CARGO_BIN_EXE_credproxy")).args(["run", "--config"]).arg(&policy);
    let mut run = Captured::spawn(cmd);
    assert!(run.logged(&["credproxy listening"]).await, "{}", run.stderr());
    // setpriv execs credproxy: the child's pid is credproxy's.
    let pid = run.child.id().unwrap();
    let mut sleeper = std::process::Command::new("setpriv");
    sleeper.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sleep", "30"]);
    let mut sleeper = sleeper.spawn().unwrap();
    let read_as_nobody = |pid: u32| {
        std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "cat"])
            .arg(format!("/proc/{pid}/environ"))
            .output()
            .unwrap()
            .status
            .success()
    };
    let ours = read_as_nobody(pid);
    let ordinary = read_as_nobody(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = run.child.kill().await;
    assert!(ordinary, "the same user reads an ordinary process's environ (the check can tell)");
    assert!(!ours, "but not credproxy's");
}

/// Report mode is loud: the start-up log, `/ready`'s body and `credproxy status` all say so.
#[tokio::test]
async fn report_mode_says_so_at_start_in_ready_and_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let (p, a, c) = (free_port(), free_port(), free_port());
    let file = policy_file(&dir, (p, a, c), "  pypi:\n    routes: [{ host: pypi.org }]\n");
    let text = std::fs::read_to_string(&file).unwrap().replace("version: 1\n", "version: 1\nmode: report\n");
    std::fs::write(&file, text).unwrap();
    let mut run = Captured::run(&file, &[]);
    assert!(run.logged(&["credproxy listening", "REPORT MODE"]).await, "{}", run.stderr());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{a}").parse().unwrap();
    let ready = get(admin, "/ready").await;
    assert!(status(&ready) == 200 && ready.contains("REPORT MODE"), "{ready}");
    let out = bin().args(["status", "--control", &format!("127.0.0.1:{c}")]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.lines().nth(1).is_some_and(|l| l.starts_with("REPORT MODE")), "{table}");
    let killed = Command::new("kill").args(["-TERM", &run.child.id().expect("running").to_string()]).status().unwrap();
    assert!(killed.success());
    assert_eq!(exit_code(&mut run.child).await, Some(0));
}
