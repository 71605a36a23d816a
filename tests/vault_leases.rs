//! Dynamic secrets with real leases: OpenBao's `database` engine in front of a real PostgreSQL,
//! one database user per pod, renewed, replaced near the max TTL, and revoked at shutdown
//! together with the pod's Vault token.

mod common;

use std::time::Duration;

use common::bao::*;
use common::pg::Pg;
use common::*;
use serde_json::Value;

/// PostgreSQL, OpenBao with JWT logins and the `database` engine (users living `ttl`, at most
/// `max_ttl`), and a recording upstream.
struct Rig {
    pg: Pg,
    bao: Bao,
    key: JwtKey,
    up: Upstream,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(ttl: &str, max_ttl: &str) -> Rig {
        let pg = Pg::start().await;
        let dir = tempfile::tempdir().unwrap();
        let bao = Bao::start(dir.path()).await;
        let key = JwtKey::new();
        configure_jwt(&bao, &key, "5m").await;
        configure_database(&bao, &pg, ttl, max_ttl).await;
        Rig { pg, bao, key, up: Upstream::start().await, _dir: dir }
    }

    /// A policy with one tool `db` reading `database/creds/readonly` as `pod` (its token written
    /// in `d`) and injecting the user and password as Basic credentials.
    fn policy(&self, d: &tempfile::TempDir, pod: &str, extra: &str) -> String {
        let jwt =
            write_file(d, "sa-token", &self.key.sign(ISSUER, &format!("system:serviceaccount:agents:{pod}"), AUDIENCE));
        vault_policy(
            self.up.port(),
            &self.bao.addr(),
            &jwt_login(jwt.to_str().unwrap()),
            "database/creds/readonly",
            &format!("      fields: [username, password]\n{extra}"),
        )
        .replace("  api:", "  db:")
        .replace("    routes:", "    inject: { basic: {} }\n    routes:")
    }
}

/// The Basic credentials the upstream last received.
fn basic(seen: &Seen) -> (String, String) {
    use base64::Engine;
    let h = seen.headers.get("authorization").expect("injected").to_str().unwrap();
    let raw = base64::engine::general_purpose::STANDARD.decode(h.strip_prefix("Basic ").expect("Basic")).unwrap();
    let (u, p) = std::str::from_utf8(&raw).unwrap().split_once(':').unwrap();
    (u.to_string(), p.to_string())
}

/// One request through the proxy; the tool API then logs in to PostgreSQL with what it got.
async fn call_and_log_in(p: &Proxy, up: &Upstream, pg: &Pg) -> String {
    let resp = get(p.addr, "/db/query").await;
    assert_eq!(status(&resp), 200, "{resp}");
    let (user, password) = basic(&up.last());
    let who = pg.query_as(&user, &password, "select current_user").await;
    assert_eq!(who.as_deref(), Ok(user.as_str()), "the injected user logs in to PostgreSQL");
    user
}

fn expire_time(lookup: &Value) -> std::time::SystemTime {
    let t = lookup["data"]["expire_time"].as_str().expect("an expiry");
    humantime::parse_rfc3339_weak(t.split('.').next().unwrap()).unwrap()
}

fn lease_of(v: &Value) -> String {
    v["credentials"][0]["lease_id"].as_str().expect("a lease id in the control API").to_string()
}

async fn role_exists(pg: &Pg, user: &str) -> bool {
    pg.query(&format!("select count(*) from pg_roles where rolname = '{user}'")).await == "1"
}

#[tokio::test]
async fn a_database_lease_is_renewed_replaced_near_its_max_ttl_and_revoked_at_shutdown() {
    let rig = Rig::start("10s", "24s").await;
    let (pg, bao, up) = (&rig.pg, &rig.bao, &rig.up);
    let d = tempfile::tempdir().unwrap();
    let policy = rig.policy(&d, "pod-a", "      revoke_on_shutdown: true");
    let mut p = Proxy::start_in(d, &policy).await;

    // A user of this pod's own, which logs in; another pod's instance gets another user.
    let first_user = call_and_log_in(&p, up, pg).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other_policy = rig.policy(&other_dir, "pod-b", "      revoke_on_shutdown: true");
    let other = Proxy::start_in(other_dir, &other_policy).await;
    let other_user = call_and_log_in(&other, up, pg).await;
    assert_ne!(other_user, first_user, "each instance has its own database user");
    other.shutdown().await;
    assert!(!role_exists(pg, &other_user).await, "the other instance's user went with it");
    let v = control(&p).await;
    let lease = lease_of(&v);
    assert!(lease.starts_with("database/creds/readonly/"), "{lease}");
    let issued_at = v["credentials"][0]["issued_at"].clone();
    let (code, before) = bao.lease(&lease).await;
    assert_eq!(code, 200, "{before}");
    assert_eq!(before["data"]["renewable"], true);

    // Renewed at half-life: the same user and lease, a later expiry at OpenBao, the issue time kept.
    eventually(async || audit_events(&p).await.iter().any(|e| e["event"] == "credential.renewed"), "a renewal").await;
    let (_, after) = bao.lease(&lease).await;
    assert!(expire_time(&after) > expire_time(&before), "sys/leases/lookup shows the later expiry: {before} {after}");
    let v = control(&p).await;
    assert_eq!((lease_of(&v), v["credentials"][0]["issued_at"].clone()), (lease.clone(), issued_at));
    assert_eq!(call_and_log_in(&p, up, pg).await, first_user);
    let renewed = audit_events(&p).await.into_iter().find(|e| e["event"] == "credential.renewed").unwrap();
    assert_eq!(renewed["lease_id"], lease.as_str());
    let metrics = get(p.admin, "/metrics").await;
    assert!(
        metric(&metrics, r#"credproxy_credential_renewals_total{result="ok",tool="db"}"#) >= Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, r#"credproxy_credential_refreshes_total{result="ok",source="vault",tool="db"}"#),
        Some(1.0),
        "a renewal is not a refresh"
    );

    // Near the max TTL (24 s) a new user is read; the old lease stays valid until its own end
    // (renewals at about 5, 10 and 15 s; the last is capped at 9 s, so the new read comes at
    // about 19.5 s, with 4.5 s of the old lease left).
    let mut new_lease = String::new();
    eventually_within(
        Duration::from_secs(30),
        async || {
            new_lease = lease_of(&control(&p).await);
            new_lease != lease
        },
        "a new lease before the max TTL",
    )
    .await;
    assert_ne!(new_lease, lease, "a new secret was read before the max TTL");
    assert_eq!(bao.lease(&lease).await.0, 200, "the superseded lease is still valid");
    let second_user = call_and_log_in(&p, up, pg).await;
    assert_ne!(second_user, first_user);

    // Shutdown with revoke_on_shutdown: the lease is revoked (the user dropped), so is the token.
    assert_eq!(agent_tokens(bao).await.len(), 1, "the pod's one Vault token");
    p.running.take().unwrap().shutdown(Duration::from_secs(5)).await;
    assert_eq!(bao.lease(&new_lease).await.0, 400, "the lease is gone");
    assert!(!role_exists(pg, &second_user).await, "the database user is gone");
    assert!(agent_tokens(bao).await.is_empty(), "the Vault token is revoked");
    let events = audit_events(&p).await;
    let revoked = events.iter().find(|e| e["event"] == "credential.revoked").expect("audited");
    assert_eq!(
        (revoked["reason"].as_str(), revoked["lease_id"].as_str()),
        (Some("shutdown"), Some(new_lease.as_str()))
    );
    assert!(events.iter().any(|e| e["event"] == "vault.login_revoked" && e["result"] == "ok"));
}

/// The binary as a pod runs it: `credproxy status` shows the login apart from the tool, and
/// SIGTERM revokes the lease (the database user is dropped) and the pod's Vault token.
#[tokio::test]
async fn sigterm_revokes_the_lease_and_the_vault_token_and_status_shows_the_login() {
    use common::captured::*;
    let rig = Rig::start("1m", "10m").await;
    let (pg, bao, up) = (&rig.pg, &rig.bao, &rig.up);
    let d = tempfile::tempdir().unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let sock = d.path().join("ctl/control.sock");
    let listen = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}, control: \"unix:{}\" }}\n",
        sock.display()
    );
    let policy = rig
        .policy(&d, "pod-b", "      revoke_on_shutdown: true")
        .replace("version: 1\n", &listen)
        .replace("{dir}", d.path().to_str().unwrap());
    let path = write_file(&d, "policy.yaml", &policy);
    let mut run = Captured::run(&path, &[]);
    assert!(run.logged(&["credential.issued"]).await, "credproxy did not fetch: {}", run.stderr());

    let resp = get(([127, 0, 0, 1], proxy_port).into(), "/db/query").await;
    assert_eq!(status(&resp), 200, "{resp}");
    let (user, password) = basic(&up.last());
    assert_eq!(pg.query_as(&user, &password, "select current_user").await.as_deref(), Ok(user.as_str()));
    assert!(role_exists(pg, &user).await);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .args(["status", "--control"])
        .arg(format!("unix:{}", sock.display()))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row =
        table.lines().find(|l| l.starts_with("jwt:jwt/agent")).unwrap_or_else(|| panic!("no login row:\n{table}"));
    assert!(row.contains("valid") && row.contains("db"), "{row}");
    assert!(table.lines().any(|l| l.starts_with("db ") && l.contains("vault") && l.contains("valid")), "{table}");
    let audit = d.path().join("audit.log");
    let issued = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|e| e["event"] == "credential.issued")
    };
    eventually(async || issued().is_some(), "credential.issued in the audit file").await;
    let lease = issued().and_then(|e| e["lease_id"].as_str().map(str::to_string)).expect("the event names the lease");
    assert_eq!(bao.lease(&lease).await.0, 200);
    assert_eq!(agent_tokens(bao).await.len(), 1);

    let pid = run.child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(exit_code(&mut run.child).await, Some(0), "{}", run.stderr());
    assert_eq!(bao.lease(&lease).await.0, 400, "the lease is revoked");
    assert!(!role_exists(pg, &user).await, "the database user is dropped");
    assert!(agent_tokens(bao).await.is_empty(), "the pod's Vault token is revoked");
}

#[tokio::test]
async fn revoke_from_the_control_api_and_a_reload_that_removes_the_tool_revoke_its_lease() {
    let rig = Rig::start("1m", "10m").await;
    let (pg, bao, up) = (&rig.pg, &rig.bao, &rig.up);
    let d = tempfile::tempdir().unwrap();
    let policy = rig.policy(&d, "pod-a", "");
    let p = Proxy::start_in(d, &policy).await;
    let superseded_user = call_and_log_in(&p, up, pg).await;
    let superseded = lease_of(&control(&p).await);
    // A rotation forced by the upstream refusing the user (401): a new lease, the old one still
    // valid (in-flight requests may hold it). The retried request carries the new user.
    let refused = up.last().headers["authorization"].to_str().unwrap().to_string();
    up.reject_auth.lock().unwrap().push(refused);
    assert_eq!(status(&get(p.addr, "/db/query").await), 200);
    let mut first = String::new();
    eventually(
        async || {
            first = control(&p).await["credentials"][0]["lease_id"].as_str().unwrap_or("").to_string();
            !first.is_empty() && first != superseded
        },
        "a rotated lease",
    )
    .await;
    assert_eq!(bao.lease(&superseded).await.0, 200, "the superseded lease lives on");
    let first_user = call_and_log_in(&p, up, pg).await;
    let resp = p.control_post("/v1/credentials/db/revoke").await;

    // Revoke: this lease and the superseded one, with their users, are gone at once; a new one is read.
    assert_eq!(status(&resp), 202, "{resp}");
    eventually(async || bao.lease(&first).await.0 == 400, "the lease revoked at OpenBao").await;
    assert!(!role_exists(pg, &first_user).await, "its database user is dropped");
    // Revoked one after the other: wait for the second as for the first.
    eventually(async || bao.lease(&superseded).await.0 == 400, "the superseded lease is revoked too").await;
    assert!(!role_exists(pg, &superseded_user).await, "and its user dropped");
    let mut second = String::new();
    eventually(
        async || {
            second = control(&p).await["credentials"][0]["lease_id"].as_str().unwrap_or("").to_string();
            !second.is_empty() && second != first
        },
        "a new lease",
    )
    .await;
    let second_user = call_and_log_in(&p, up, pg).await;
    assert_ne!(second_user, first_user);

    // A reload without the tool revokes its lease.
    let other = format!(
        "version: 1\naudit: {{ output: \"{{dir}}/audit.log\" }}\ntools:\n  other:\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {}, allow_private: true }}]\n",
        up.port()
    );
    p.rewrite(&other);
    eventually(async || bao.lease(&second).await.0 == 400, "the lease revoked at the reload").await;
    assert!(!role_exists(pg, &second_user).await, "its database user is dropped");
    let events = audit_events(&p).await;
    let reasons: Vec<&str> =
        events.iter().filter(|e| e["event"] == "credential.revoked").filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["api", "reload"]);
}
