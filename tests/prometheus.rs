//! Prometheus from Debian, end to end: a real server on loopback scrapes a running credproxy
//! through the shipped scrape job's relabel rules, loads the shipped alert rules with only their
//! `for:` shortened by scripts/fast-rules (checked to change nothing else), and reports the
//! rotation alert `firing` through its HTTP API once the token authority fails. Every query in
//! the Grafana dashboard names only metrics a live `/metrics` exports (or recording rules built
//! on them) and is accepted by that Prometheus.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::authority::{Authority, Mode};
use common::captured::{free_port, Captured};
use common::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fast_rules(duration: &str) -> String {
    let mut cmd = Command::new(root().join("scripts/fast-rules"));
    cmd.args(["deploy/prometheus/rules.yaml", duration]);
    common::venv::run_ok(cmd)
}

/// The rendered rules differ from the shipped ones in `for:` lines only, and in at least one.
#[test]
fn fast_rules_change_only_the_for_durations() {
    let shipped = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    let fast = fast_rules("1s");
    assert_eq!(shipped.lines().count(), fast.lines().count());
    let mut changed = 0;
    for (a, b) in shipped.lines().zip(fast.lines()) {
        if a != b {
            assert!(a.trim_start().starts_with("for: ") && b.trim() == "for: 1s", "{a:?} -> {b:?}");
            assert_eq!(a.len() - a.trim_start().len(), b.len() - b.trim_start().len(), "same indentation");
            changed += 1;
        }
    }
    assert_eq!(changed, shipped.lines().filter(|l| l.trim_start().starts_with("for: ")).count());
    assert!(changed >= 8, "every alert has a for:");
    // And as data: equal once `for` is set aside.
    let strip = |text: &str| {
        let mut v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        for g in v["groups"].as_sequence_mut().unwrap() {
            for r in g["rules"].as_sequence_mut().unwrap() {
                r.as_mapping_mut().unwrap().remove("for");
            }
        }
        v
    };
    assert_eq!(strip(&shipped), strip(&fast));
}

struct Prometheus {
    child: Captured,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// The shipped scrape job with its pod discovery swapped for static targets carrying the
    /// labels discovery would set: credproxy's admin port on a running injected pod, a pod that is
    /// not injected and a finished injected Job pod (both of which the relabel rules must drop).
    async fn start(admin: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), fast_rules("1s")).unwrap();
        let jobs: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(root().join("deploy/prometheus/scrape-config.yaml")).unwrap(),
        )
        .unwrap();
        let mut job = jobs[0].clone();
        let m = job.as_mapping_mut().unwrap();
        assert!(m.remove("kubernetes_sd_configs").is_some());
        let target = |addr: String, status: &str, pod: &str, phase: &str| {
            serde_json::json!({"targets": [addr], "labels": {
                "__meta_kubernetes_pod_annotation_credproxy_dev_status": status,
                "__meta_kubernetes_pod_container_port_name": "credproxy-admin",
                "__meta_kubernetes_pod_phase": phase,
                "__meta_kubernetes_namespace": "agents",
                "__meta_kubernetes_pod_name": pod}})
        };
        let other = || format!("127.0.0.1:{}", free_port());
        let statics = serde_json::json!([
            target(admin.to_string(), "injected", "agent-0", "Running"),
            target(other(), "", "plain-0", "Running"),
            target(other(), "injected", "job-done-0", "Succeeded"),
        ]);
        m.insert("static_configs".into(), serde_yaml::to_value(statics).unwrap());
        m.insert("scrape_interval".into(), "1s".into());
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [dir.path().join("rules.yaml")],
            "scrape_configs": [serde_json::to_value(&job).unwrap()],
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml::to_string(&config).unwrap()).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = tokio::process::Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let mut child = Captured::spawn(cmd);
        assert!(child.logged(&["Server is ready to receive web requests."]).await, "prometheus: {}", child.stderr());
        Prometheus { child, addr, _dir: dir }
    }

    /// GET an API path (HTTP/1.0: a whole body, not chunks), the parsed `data` of a success.
    async fn api(&self, path_and_query: &str) -> Value {
        let resp =
            raw(self.addr.parse().unwrap(), format!("GET {path_and_query} HTTP/1.0\r\nHost: p\r\n\r\n").as_bytes())
                .await;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON from {path_and_query}: {resp}"));
        assert_eq!(v["status"], "success", "{path_and_query}: {v}");
        v["data"].clone()
    }
}

fn encode(q: &str) -> String {
    form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

#[tokio::test]
async fn the_rotation_alert_fires_through_a_real_prometheus() {
    let up = Upstream::start().await;
    let auth = Authority::start(Mode::Ok).await;
    auth.ttl.store(6, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "secret", "pw");
    let policy = format!(
        r#"version: 1
tools:
  api:
    upstream: http://127.0.0.1:{port}
    credential: {{ source: oauth2_client_credentials, token_url: "{url}", client_id: agent, client_secret_file: "{{dir}}/secret" }}
    routes: [{{ scheme: http, host: 127.0.0.1, port: {port}, allow_private: true }}]
"#,
        port = up.port(),
        url = auth.url()
    );
    let p = Proxy::start_in(dir, &policy).await;
    // Traffic for the request metrics: one injected, one denied.
    assert_eq!(status(&get(p.addr, "/api/x").await), 200);
    assert_error(&get(p.addr, "/nowhere/x").await, 403, "route_denied");

    let mut prom = Prometheus::start(p.admin).await;
    eventually_within(
        Duration::from_secs(30),
        async || prom.api("/api/v1/query?query=up%7Bjob%3D%22credproxy%22%7D").await["result"][0]["value"][1] == "1",
        "prometheus scrapes credproxy",
    )
    .await;
    // The relabel rules kept the running injected sidecar and dropped the other two.
    let targets = prom.api("/api/v1/targets").await;
    let active: Vec<&Value> = targets["activeTargets"].as_array().unwrap().iter().collect();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["labels"]["pod"], "agent-0");
    assert_eq!(active[0]["labels"]["namespace"], "agents");
    assert_eq!(active[0]["labels"]["job"], "credproxy");

    let firing = |name: &'static str| {
        let prom = &prom;
        async move {
            let alerts = prom.api("/api/v1/alerts").await;
            alerts["alerts"].as_array().unwrap().iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["tool"] == "api"
                    && a["labels"]["pod"] == "agent-0"
                    && a["state"] == "firing"
            })
        }
    };
    assert!(!firing("CredproxyCredentialRefreshFailing").await, "nothing fails yet");
    auth.set(Mode::Status(503));
    eventually_within(
        Duration::from_secs(60),
        async || firing("CredproxyCredentialRefreshFailing").await,
        "the refresh alert fires",
    )
    .await;
    let alerts = prom.api("/api/v1/alerts").await;
    let alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "CredproxyCredentialRefreshFailing")
        .unwrap();
    assert_eq!(alert["labels"]["severity"], "warning");
    assert!(alert["annotations"]["runbook"].as_str().unwrap().contains("`credproxy status`"));

    // The dashboard, against the metrics this credproxy exports now and this Prometheus.
    let exposition = get(p.admin, "/metrics").await;
    check_dashboard(&prom, &exported_names(&exposition), &exposition).await;
    p.shutdown().await;
    let _ = prom.child.child.kill().await;
}

/// Every sample name in an exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The metric names a PromQL expression uses: `credproxy_*`, `credproxy:*` and `process_*`
/// identifiers, and `up`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("credproxy_")
            || word.starts_with("credproxy:")
            || word.starts_with("process_")
            || word == "up"
        {
            out.push(word.to_string());
        }
    }
    out
}

/// Every identifier directly before a `{` (a selector's metric name), and every exact matcher
/// `label="value"` (not `=~`), in a PromQL expression.
fn selectors(expr: &str) -> (Vec<String>, Vec<String>) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (mut names, mut matchers) = (Vec::new(), Vec::new());
    for (i, _) in expr.match_indices('{') {
        let head = &expr[..i];
        let start = head.rfind(|c: char| !ident(c)).map_or(0, |j| j + 1);
        if start < i {
            names.push(head[start..].to_string());
        }
    }
    for (i, _) in expr.match_indices("=\"") {
        let head = &expr[..i];
        if head.ends_with(['~', '!']) {
            continue;
        }
        let start = head.rfind(|c: char| !ident(c)).map_or(0, |j| j + 1);
        let value_end = expr[i + 2..].find('"').map(|j| i + 2 + j).unwrap();
        matchers.push(format!("{}=\"{}\"", &head[start..], &expr[i + 2..value_end]));
    }
    (names, matchers)
}

async fn check_dashboard(prom: &Prometheus, exported: &BTreeSet<String>, exposition: &str) {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/credproxy.json")).unwrap()).unwrap();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap()).unwrap();
    let recorded: Vec<(String, String)> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| Some((r["record"].as_str()?.to_string(), r["expr"].as_str()?.to_string())))
        .collect();
    let mut queries: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    queries.extend(dash["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query").map(|v| {
        // label_values(METRIC{…}, label) names a metric too.
        v["query"].as_str().unwrap().to_string()
    }));
    assert!(queries.len() >= 12);
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric in {q}");
        // No other metric hides beside the known prefixes, and each exact label value is one
        // credproxy exports (job is the scrape's own label).
        let (selected, matchers) = selectors(q);
        for n in &selected {
            assert!(names.contains(n), "{q}: {n} is not a metric credproxy exports");
        }
        for m in matchers.iter().filter(|m| !m.starts_with("job=")) {
            assert!(exposition.contains(m.as_str()), "{q}: no exported series has {m}");
        }
        for n in names {
            if n == "up" {
                continue;
            }
            match recorded.iter().find(|(r, _)| *r == n) {
                Some((_, expr)) => {
                    for m in metric_names(expr) {
                        assert!(exported.contains(&m), "{n} is built on {m}, which credproxy does not export");
                    }
                }
                None => assert!(exported.contains(&n), "{q}: credproxy does not export {n}"),
            }
        }
        // And Prometheus accepts it, with Grafana's variables filled in.
        if !q.starts_with("label_values(") {
            let promql = q.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$pod", ".*");
            prom.api(&format!("/api/v1/query?query={}", encode(&promql))).await;
        }
    }
}

#[test]
fn the_dashboard_check_sees_selectors_and_matchers() {
    let (names, matchers) = selectors(
        r#"sum by (outcome) (rate(credproxy_requests_totl{job="credproxy", outcome="deny", pod=~"$pod"}[1m])) / up{x="y"}"#,
    );
    assert_eq!(names, ["credproxy_requests_totl", "up"]);
    assert_eq!(matchers, [r#"job="credproxy""#, r#"outcome="deny""#, r#"x="y""#]);
}
