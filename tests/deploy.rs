//! deploy/: every kustomize base renders offline with the venv's `kubectl kustomize` and passes
//! `kubernetes-validate --strict` for Kubernetes 1.29 to the newest it knows; the custom
//! resources it has no schema for (PodMonitor, PrometheusRule, Certificate, Issuer) are checked
//! field by field; the PrometheusRule carries rules.yaml's groups and both pass `promtool`; the
//! example agent's policy passes `credproxy check` and its injected form validates; and the
//! certificates deploy/injector/manual/make-certs makes are served by the webhook and verify.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::venv;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize DIR`, as documents.
fn kustomize(dir: &Path) -> (String, Vec<Value>) {
    let mut cmd = Command::new(venv::bin("kubectl"));
    cmd.arg("kustomize").arg(dir);
    let text = venv::run_ok(cmd);
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    (text, docs)
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

/// Validate the documents kubernetes-validate has schemas for; return the others.
fn validate_builtin(name: &str, docs: &[Value]) -> Vec<Value> {
    const CUSTOM: &[&str] = &["PodMonitor", "PrometheusRule", "Certificate", "Issuer"];
    let (custom, builtin): (Vec<Value>, Vec<Value>) = docs.iter().cloned().partition(|d| CUSTOM.contains(&kind(d)));
    if !builtin.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{}.yaml", name.replace('/', "-")));
        let text: String = builtin.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap())).collect();
        std::fs::write(&file, text).unwrap();
        venv::validate_strict(&[file]);
    }
    custom
}

fn find<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter().find(|d| kind(d) == k).unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn the_injector_with_cert_manager_renders_and_validates() {
    let (_, docs) = kustomize(&root().join("deploy/injector/cert-manager"));
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
        "Certificate",
        "Issuer",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let custom = validate_builtin("injector", &docs);
    assert_eq!(custom.len(), 4, "two Issuers, two Certificates");

    let deploy = find(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"];
    let ns_labels = &find(&docs, "Namespace")["metadata"]["labels"];
    assert!(ns_labels.get("credproxy.dev/injection").is_none(), "the injector's own pods are never sent");
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false, "the injector needs no API access");
    let args: Vec<&str> =
        pod["spec"]["containers"][0]["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.starts_with(&["inject", "--webhook"]) && args.contains(&"--failure-policy=fail"), "{args:?}");
    assert_eq!(find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);

    let hook = &find(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["failurePolicy"], "Fail", "matches the injector's --failure-policy");
    assert!(hook["timeoutSeconds"].as_u64().is_some_and(|t| t <= 10));
    assert_eq!(hook["namespaceSelector"]["matchLabels"]["credproxy.dev/injection"], "enabled");
    let opt_out = &hook["objectSelector"]["matchExpressions"][0];
    assert_eq!((opt_out["key"].as_str(), opt_out["operator"].as_str()), (Some("credproxy.dev/inject"), Some("NotIn")));
    assert_eq!(opt_out["values"][0], "false", "pods labelled inject=false are never sent");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(hook["rules"][0]["resources"][0], "pods");
    assert_eq!(hook["rules"][0]["operations"][0], "CREATE");
    let service = find(&docs, "Service");
    assert_eq!(hook["clientConfig"]["service"]["name"], service["metadata"]["name"]);

    // cert-manager: a self-signed Issuer makes a CA Certificate, a CA Issuer signs the serving
    // Certificate (naming the Service, filling the Secret the Deployment mounts), and the webhook
    // asks for the CA, which stays the same when the serving certificate is renewed.
    for d in &custom {
        assert_eq!(d["apiVersion"], "cert-manager.io/v1");
        assert_eq!(d["metadata"]["namespace"], "credproxy");
    }
    let named = |k: &str, n: &str| {
        custom.iter().find(|d| kind(d) == k && d["metadata"]["name"] == n).unwrap_or_else(|| panic!("no {k} {n}"))
    };
    let selfsigned = named("Issuer", "credproxy-injector-selfsigned");
    assert!(selfsigned["spec"]["selfSigned"].is_mapping());
    let ca = named("Certificate", "credproxy-injector-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["issuerRef"]["name"], selfsigned["metadata"]["name"]);
    let ca_issuer = named("Issuer", "credproxy-injector-ca");
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"]);
    let cert = named("Certificate", "credproxy-injector");
    assert_eq!(cert["spec"]["issuerRef"]["name"], ca_issuer["metadata"]["name"]);
    assert_eq!(cert["spec"]["secretName"], pod["spec"]["volumes"][0]["secret"]["secretName"]);
    let names: Vec<&str> =
        cert["spec"]["dnsNames"].as_sequence().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let svc = service["metadata"]["name"].as_str().unwrap();
    assert!(names.contains(&format!("{svc}.credproxy.svc").as_str()), "{names:?}");
    let hooks = find(&docs, "MutatingWebhookConfiguration");
    let inject_from = hooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str();
    assert_eq!(inject_from, Some("credproxy/credproxy-injector-ca"), "the CA, not the serving certificate");
}

/// The documented alternative without cert-manager: make-certs, then the manual overlay; the
/// webhook serves those files and curl verifies them against the CA in the caBundle.
#[tokio::test]
async fn the_injector_without_cert_manager_serves_the_certificates_make_certs_makes() {
    let copy = tempfile::tempdir().unwrap();
    let deploy = copy.path().join("deploy");
    let status = Command::new("cp").arg("-r").arg(root().join("deploy")).arg(&deploy).status().unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(deploy.join("injector/manual/certs"));
    venv::run_ok({
        let mut c = Command::new(deploy.join("injector/manual/make-certs"));
        c.current_dir(copy.path());
        c
    });
    let (_, docs) = kustomize(&deploy.join("injector/manual"));
    assert!(validate_builtin("manual", &docs).is_empty());
    let secret = find(&docs, "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "credproxy-injector-tls");
    use base64::Engine;
    let b64 =
        |v: &Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap().replace('\n', "")).unwrap();
    let bundle = b64(&find(&docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), b64(&secret["data"]["tls.crt"])).unwrap();
    std::fs::write(dir.path().join("tls.key"), b64(&secret["data"]["tls.key"])).unwrap();
    std::fs::write(dir.path().join("ca.crt"), bundle).unwrap();
    let mut hook = common::injector::Injector::start_in(dir, &[]).await;
    let (ok, out) = hook.curl(&hook.ca(), "/healthz", None);
    let _ = hook.run.child.kill().await;
    assert!(ok && out == "ok\n", "{out}");
}

#[test]
fn the_example_agent_renders_validates_checks_and_injects() {
    let (text, docs) = kustomize(&root().join("deploy/examples/agent"));
    assert!(validate_builtin("agent", &docs).is_empty());
    let ns = find(&docs, "Namespace");
    assert_eq!(ns["metadata"]["labels"]["credproxy.dev/injection"], "enabled");
    let deploy = find(&docs, "Deployment");
    let ann = &deploy["spec"]["template"]["metadata"]["annotations"];
    let cm = find(&docs, "ConfigMap");
    assert_eq!(ann["credproxy.dev/policy"], cm["metadata"]["name"], "the annotation names the generated ConfigMap");
    assert_eq!(ann["credproxy.dev/secrets"], find(&docs, "Secret")["metadata"]["name"]);

    // The policy in the ConfigMap passes check (POD_NAME comes from the sidecar's Downward API).
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, cm["data"]["policy.yaml"].as_str().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .args(["check", "--config"])
        .arg(&policy)
        .env("POD_NAME", "agent-0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // kubectl kustomize | credproxy inject: the no-webhook path of the README, validated.
    let injected = credproxy::inject::inject_documents(&text, &Default::default()).unwrap();
    assert_eq!(injected.injected, 1);
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, injected.output).unwrap();
    venv::validate_strict(&[file]);
}

fn read_yaml(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn promtool(args: &[&str], path: &Path) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(args).arg(path);
    venv::run_ok(cmd)
}

#[test]
fn prometheus_manifests_render_and_their_rules_pass_promtool() {
    let (_, docs) = kustomize(&root().join("deploy/prometheus"));
    assert_eq!(docs.len(), 2);
    let monitor = find(&docs, "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "credproxy-admin", "the port the injector names");
    assert_eq!(endpoint["path"], "/metrics");
    let job = endpoint["relabelings"].as_sequence().unwrap().iter().find(|r| r["targetLabel"] == "job").unwrap();
    assert_eq!(job["replacement"], "credproxy", "the alert rules select job=credproxy");

    let rule = find(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let plain = read_yaml("deploy/prometheus/rules.yaml");
    assert_eq!(rule["spec"]["groups"], plain["groups"], "prometheusrule.yaml carries rules.yaml's groups");
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("groups.yaml");
    std::fs::write(
        &groups,
        serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("groups".into(), rule["spec"]["groups"].clone())]))
            .unwrap(),
    )
    .unwrap();
    assert!(promtool(&["check", "rules"], &groups).contains("SUCCESS"));
    assert!(promtool(&["check", "rules"], &root().join("deploy/prometheus/rules.yaml")).contains("SUCCESS"));

    // Every alert has a runbook naming a `credproxy status` column or saying why none applies,
    // and a promtool unit test that expects it firing and one that expects it silent.
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/rules_test.yaml")).unwrap();
    let tests: Value = serde_yaml::from_str(&tests).unwrap();
    let alert_tests: Vec<&Value> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
        .collect();
    let mut alerts = 0;
    for r in plain["groups"].as_sequence().unwrap().iter().flat_map(|g| g["rules"].as_sequence().unwrap()) {
        let Some(name) = r["alert"].as_str() else { continue };
        alerts += 1;
        let runbook = r["annotations"]["runbook"].as_str().unwrap_or_else(|| panic!("{name} has no runbook"));
        assert!(runbook.contains("`credproxy status`"), "{name}: the runbook says what credproxy status shows");
        let mine: Vec<&&Value> = alert_tests.iter().filter(|t| t["alertname"] == name).collect();
        assert!(
            mine.iter().any(|t| t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty())),
            "{name}: no firing case"
        );
        assert!(
            mine.iter().any(|t| t["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty())),
            "{name}: no silent case"
        );
        assert!(r["labels"]["severity"].is_string(), "{name}");
    }
    assert_eq!(alerts, 10);
    assert!(promtool(&["test", "rules"], &root().join("deploy/prometheus/rules_test.yaml")).contains("SUCCESS"));
}

/// The plain scrape job: pod discovery, kept to injected pods' credproxy-admin port, as
/// job=credproxy. (Debian's Prometheus has no Kubernetes discovery to load it with; the
/// end-to-end test runs these relabel rules on a static target.)
#[test]
fn the_plain_scrape_job_keeps_injected_sidecars_only() {
    let jobs = read_yaml("deploy/prometheus/scrape-config.yaml");
    let job = &jobs[0];
    assert_eq!(job["job_name"], "credproxy");
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    let keeps: Vec<(String, String)> = job["relabel_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "keep")
        .map(|r| (r["source_labels"][0].as_str().unwrap().to_string(), r["regex"].as_str().unwrap().to_string()))
        .collect();
    assert!(keeps.contains(&("__meta_kubernetes_pod_annotation_credproxy_dev_status".into(), "injected".into())));
    assert!(keeps.contains(&("__meta_kubernetes_pod_container_port_name".into(), "credproxy-admin".into())));
    let drop = job["relabel_configs"].as_sequence().unwrap().iter().find(|r| r["action"] == "drop").unwrap();
    assert_eq!(drop["source_labels"][0], "__meta_kubernetes_pod_phase");
    let phases = drop["regex"].as_str().unwrap();
    assert!(phases.contains("Succeeded"), "finished Job pods are not scraped");
    assert!(!phases.contains("Pending"), "a pod waiting on its sidecar's /ready is scraped");
}

#[test]
fn the_dashboard_parses_and_has_the_panels_the_issue_asks_for() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/credproxy.json")).unwrap()).unwrap();
    let titles: Vec<&str> = dash["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in [
        "Credential age distribution",
        "Time to expiry per tool",
        "Refresh outcomes",
        "Consecutive failures per tool",
        "Requests by outcome",
        "Latency to the response head",
        "Would-deny requests (report mode)",
        "Scopes granted beyond the request",
        "Routes unused since their sidecars started",
    ] {
        assert!(titles.contains(&want), "{want} missing from {titles:?}");
    }
    for p in dash["panels"].as_array().unwrap() {
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{}: no query", p["title"]);
    }
}
