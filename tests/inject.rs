//! `credproxy inject`: golden outputs for every workload kind and annotation, the contract each
//! injected pod keeps (DESIGN §8), idempotence, bad inputs with their document and field and no
//! partial output, and every output validated by `kubernetes-validate --strict` for Kubernetes
//! 1.29 to the newest it knows. `CREDPROXY_BLESS=1` rewrites the goldens (review the diff).

mod common;

use std::path::{Path, PathBuf};

use credproxy::inject::contract as c;
use credproxy::inject::{inject_documents, Options};
use serde_yaml::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn opts() -> Options {
    Options { image: "credproxy:test".into() }
}

/// Every `NAME.in.yaml` with its `NAME.out.yaml`.
fn cases() -> Vec<(String, PathBuf, PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.strip_suffix(".in.yaml")?.to_string();
            Some((name.clone(), p.clone(), p.with_file_name(format!("{name}.out.yaml"))))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "the golden cases are there");
    out
}

#[test]
fn golden_outputs_for_every_kind_and_annotation() {
    let bless = std::env::var_os("CREDPROXY_BLESS").is_some();
    for (name, input, golden) in cases() {
        let got = inject_documents(&std::fs::read_to_string(&input).unwrap(), &opts())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .output;
        if bless {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| panic!("{name}: no golden (CREDPROXY_BLESS=1)"));
        assert_eq!(got, want, "{name}: output differs from {}", golden.display());
    }
}

#[test]
fn a_second_run_changes_nothing() {
    for (name, _, golden) in cases() {
        let once = std::fs::read_to_string(&golden).unwrap();
        let twice = inject_documents(&once, &opts()).unwrap();
        assert_eq!(twice.injected, 0, "{name}");
        assert_eq!(twice.output, once, "{name}: injecting an injected manifest changed it");
    }
}

#[test]
fn unannotated_documents_come_back_byte_for_byte() {
    let input = std::fs::read_to_string(fixtures().join("passthrough.in.yaml")).unwrap();
    let done = inject_documents(&input, &opts()).unwrap();
    assert_eq!(done.injected, 0);
    assert_eq!(done.output, input);
}

/// The annotated pod templates of an input file.
fn templates_of(input: &Path) -> Vec<Value> {
    templates(&std::fs::read_to_string(input).unwrap(), false)
        .into_iter()
        .filter(|t| t["metadata"]["annotations"][c::INJECT] == "true")
        .collect()
}

/// The pod template of each workload, found by kind; only the injected ones when `injected`.
fn templates(out: &str, injected: bool) -> Vec<Value> {
    let mut found = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(out) {
        let v = Value::deserialize(doc).unwrap();
        let t = match (v["apiVersion"].as_str(), v["kind"].as_str()) {
            (Some("v1"), Some("Pod")) => v.clone(),
            (Some("batch/v1"), Some("CronJob")) => v["spec"]["jobTemplate"]["spec"]["template"].clone(),
            (Some("apps/v1"), Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"))
            | (Some("batch/v1"), Some("Job")) => v["spec"]["template"].clone(),
            _ => continue,
        };
        if !injected || t["metadata"]["annotations"][c::STATUS].as_str() == Some(c::INJECTED) {
            found.push(t);
        }
    }
    found
}

use serde::Deserialize;

fn env_of(container: &Value) -> Vec<(String, Option<String>)> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().map(str::to_string)))
        .collect()
}

fn value<'a>(env: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    let hits: Vec<_> = env.iter().filter(|(n, _)| n == name).collect();
    assert!(hits.len() <= 1, "{name} set twice");
    hits.first().and_then(|(_, v)| v.as_deref())
}

#[test]
fn every_injected_pod_keeps_the_sidecar_contract() {
    let mut checked = 0;
    for (name, input, _) in cases() {
        let done = inject_documents(&std::fs::read_to_string(&input).unwrap(), &opts()).unwrap();
        let templates = templates(&done.output, true);
        let inputs = templates_of(&input);
        assert_eq!(templates.len(), done.injected, "{name}");
        assert_eq!(inputs.len(), done.injected, "{name}: every annotated template was injected");
        for (i, t) in templates.into_iter().enumerate() {
            let ann = &t["metadata"]["annotations"];
            let admin: u16 = ann[c::ADMIN_PORT].as_str().map_or(c::DEFAULT_ADMIN_PORT, |p| p.parse().unwrap());
            let proxy: u16 = ann[c::PROXY_PORT].as_str().map_or(c::DEFAULT_PROXY_PORT, |p| p.parse().unwrap());
            let spec = &t["spec"];
            let side = &spec["initContainers"][0];
            assert_eq!(side["name"], c::CONTAINER, "{name}: the sidecar is the first init container");
            assert_eq!(side["restartPolicy"], "Always", "{name}: a native sidecar");
            let args: Vec<&str> = side["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            let flag = |f: &str| args.iter().position(|a| *a == f).map(|i| args[i + 1]);
            assert_eq!(args[0], "run");
            assert_eq!(flag("--admin-listen"), Some(format!("0.0.0.0:{admin}").as_str()), "{name}");
            assert_eq!(flag("--proxy-listen"), Some(format!("127.0.0.1:{proxy}").as_str()), "{name}");
            assert_eq!(flag("--control"), Some(c::CONTROL), "{name}");
            assert_eq!(flag("--ca-dir"), Some(c::CA_DIR), "{name}");
            assert_eq!(flag("--config"), Some(c::POLICY_FILE), "{name}");
            for (probe, path) in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")]
            {
                assert_eq!(side[probe]["httpGet"]["path"], path, "{name}: {probe}");
                assert_eq!(side[probe]["httpGet"]["port"].as_u64(), Some(admin.into()), "{name}: {probe}");
            }
            let sc = &side["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!((sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()), (Some(c::UID), Some(c::UID)));
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            for k in ["requests", "limits"] {
                assert!(
                    side["resources"][k]["cpu"].is_string() && side["resources"][k]["memory"].is_string(),
                    "{name}"
                );
            }
            // Volumes: the control socket's folder only in the sidecar; the CA read-only in apps.
            let mounts = |ctr: &Value| -> Vec<(String, String, bool)> {
                ctr["volumeMounts"]
                    .as_sequence()
                    .map(|m| {
                        m.iter()
                            .map(|m| {
                                let s = |k: &str| m[k].as_str().unwrap().to_string();
                                (s("name"), s("mountPath"), m["readOnly"].as_bool() == Some(true))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let side_mounts = mounts(side);
            assert!(side_mounts.contains(&(c::VOLUME_POLICY.into(), c::POLICY_DIR.into(), true)), "{name}");
            assert!(side_mounts.contains(&(c::VOLUME_CA.into(), c::CA_DIR.into(), false)), "{name}");
            assert!(side_mounts.contains(&(c::VOLUME_CONTROL.into(), c::CONTROL_DIR.into(), false)), "{name}");
            let volumes = spec["volumes"].as_sequence().unwrap();
            let volume = |n: &str| volumes.iter().find(|v| v["name"] == n).cloned();
            assert_eq!(volume(c::VOLUME_POLICY).unwrap()["configMap"]["name"], ann[c::POLICY], "{name}");
            for v in [c::VOLUME_CA, c::VOLUME_CONTROL] {
                assert_eq!(volume(v).unwrap()["emptyDir"]["medium"], "Memory", "{name}");
            }
            match ann[c::SECRETS].as_str() {
                Some(secret) => {
                    assert_eq!(volume(c::VOLUME_SECRETS).unwrap()["secret"]["secretName"], secret);
                    assert!(side_mounts.contains(&(c::VOLUME_SECRETS.into(), c::SECRETS_DIR.into(), true)));
                }
                None => assert!(volume(c::VOLUME_SECRETS).is_none(), "{name}"),
            }
            match ann[c::TOKEN_AUDIENCE].as_str() {
                Some(aud) => {
                    let token = &volume(c::VOLUME_TOKEN).unwrap()["projected"]["sources"][0]["serviceAccountToken"];
                    assert_eq!(token["audience"], aud);
                    assert_eq!(format!("{}/{}", c::TOKEN_DIR, token["path"].as_str().unwrap()), c::TOKEN_PATH);
                    assert!(side_mounts.contains(&(c::VOLUME_TOKEN.into(), c::TOKEN_DIR.into(), true)));
                }
                None => assert!(volume(c::VOLUME_TOKEN).is_none(), "{name}"),
            }
            let overriding = ann[c::OVERRIDE_ENV] == "true";
            let before = &inputs[i];
            let no_proxy = match ann[c::NO_PROXY].as_str() {
                Some(extra) => format!("{},{extra}", c::NO_PROXY_LOOPBACK),
                None => c::NO_PROXY_LOOPBACK.to_string(),
            };
            let proxy_url = format!("http://127.0.0.1:{proxy}");
            let bundle = format!("{}/ca-bundle.crt", c::CA_DIR);
            let mut ours: Vec<(String, String)> = [
                ("HTTP_PROXY", proxy_url.as_str()),
                ("HTTPS_PROXY", &proxy_url),
                ("NO_PROXY", &no_proxy),
                ("http_proxy", &proxy_url),
                ("https_proxy", &proxy_url),
                ("no_proxy", &no_proxy),
                ("SSL_CERT_FILE", &bundle),
                ("REQUESTS_CA_BUNDLE", &bundle),
                ("CURL_CA_BUNDLE", &bundle),
                ("NODE_EXTRA_CA_CERTS", "/run/credproxy/ca.crt"),
                ("NODE_USE_ENV_PROXY", "1"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
            for kv in ann[c::AGENT_ENV].as_str().into_iter().flat_map(|s| s.split(',')) {
                let (k, v) = kv.split_once('=').unwrap();
                ours.push((k.into(), v.into()));
            }
            let apps = spec["containers"].as_sequence().unwrap();
            assert_eq!(apps.len(), before["spec"]["containers"].as_sequence().unwrap().len());
            for (app, was) in apps.iter().zip(before["spec"]["containers"].as_sequence().unwrap()) {
                let m = mounts(app);
                assert!(m.contains(&(c::VOLUME_CA.into(), c::CA_DIR.into(), true)), "{name}: the CA read-only");
                assert!(!m.iter().any(|(n, ..)| n == c::VOLUME_CONTROL), "{name}: no control socket in an app");
                let env = env_of(app);
                let had = if was["env"].is_sequence() { env_of(was) } else { Vec::new() };
                for (k, v) in &ours {
                    let kept = had.iter().find(|(n, _)| n == k).filter(|_| !overriding);
                    match kept {
                        Some((_, user)) => {
                            assert_eq!(value(&env, k), user.as_deref(), "{name}: the user's {k} is kept")
                        }
                        None => assert_eq!(value(&env, k), Some(v.as_str()), "{name}: {k}"),
                    }
                }
                let java = value(&env, "JAVA_TOOL_OPTIONS").unwrap();
                assert!(java.contains(&format!("-Dhttps.proxyPort={proxy}")), "{name}: {java}");
                assert!(java.contains("-Djavax.net.ssl.trustStore=/run/credproxy/truststore.p12"), "{name}: {java}");
                if let Some(user) = value(&had, "JAVA_TOOL_OPTIONS") {
                    assert!(java.starts_with(&format!("{user} -D")), "{name}: appended to the user's: {java}");
                }
                assert!(!env.iter().any(|(n, _)| n == "NODE_OPTIONS"), "{name}: never --use-env-proxy in NODE_OPTIONS");
            }
            let theirs = before["metadata"]["annotations"].get("prometheus.io/port");
            match theirs {
                None => {
                    assert_eq!(ann["prometheus.io/scrape"], "true", "{name}");
                    assert_eq!(ann["prometheus.io/port"].as_str(), Some(admin.to_string().as_str()), "{name}");
                    assert_eq!(ann["prometheus.io/path"], "/metrics", "{name}");
                }
                Some(port) => {
                    assert_eq!(&ann["prometheus.io/port"], port, "{name}: the pod's own scrape port is kept");
                    assert!(ann.get("prometheus.io/path").is_none(), "{name}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "every kind was checked");
}

fn pod(annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: agent\n  namespace: shop\n  annotations:\n    credproxy.dev/inject: \"true\"\n{annotations}spec:\n{spec}"
    )
}

const POLICY: &str = "    credproxy.dev/policy: agent-policy\n";
const APP: &str = "  containers:\n    - name: agent\n      image: busybox\n";

/// Each bad input fails with the document, the field and the reason; nothing is written.
#[test]
fn bad_inputs_name_the_document_and_field() {
    let ann = |k: &str, v: &str| format!("{POLICY}    {k}: {v}\n");
    let at = |k: &str| format!("document 1 (Pod shop/agent, line 1): metadata.annotations[\"{k}\"]: ");
    let cases: Vec<(String, String)> = vec![
        (pod("", APP), at(c::POLICY) + "missing"),
        (pod(&ann(c::PROXY_PORT, "\"99999\""), APP), at(c::PROXY_PORT) + "\"99999\" is not a port"),
        (pod(&ann(c::ADMIN_PORT, "\"15001\""), APP), at(c::ADMIN_PORT) + "15001 is also the proxy port"),
        (pod(&ann(c::PROXY_PORT, "15001"), APP), at(c::PROXY_PORT) + "must be a string"),
        (pod(&ann("credproxy.dev/secret", "s"), APP), at("credproxy.dev/secret") + "unknown annotation"),
        (pod(&ann(c::OVERRIDE_ENV, "\"yes\""), APP), at(c::OVERRIDE_ENV) + "must be \"true\" or \"false\""),
        (pod(&ann(c::CPU_LIMIT, "lots"), APP), at(c::CPU_LIMIT) + "\"lots\" is not a Kubernetes quantity"),
        (pod(&ann(c::MEMORY_REQUEST, "1Gi"), APP), at(c::MEMORY_REQUEST) + "the request 1Gi is above the limit 128Mi"),
        (pod(&ann(c::AGENT_ENV, "OPENAI_API_KEY"), APP), at(c::AGENT_ENV) + "an entry is not NAME=VALUE"),
        (pod(&ann(c::AGENT_ENV, "1X=y"), APP), at(c::AGENT_ENV) + "\"1X\" is not a variable name"),
        (pod(&ann(c::IMAGE, "\"a b\""), APP), at(c::IMAGE) + "must be one non-empty word"),
        (pod(&ann(c::SECRETS, "My_Secret"), APP), at(c::SECRETS) + "\"My_Secret\" is not a valid object name"),
        (pod(&ann(c::NO_PROXY, "\"a|b\""), APP), at(c::NO_PROXY) + "\"a|b\" is not a host name"),
        (
            pod("    credproxy.dev/inject: \"true\"\n".replace("inject", "policy").as_str(), APP).replace("inject: \"true\"", "inject: true"),
            at(c::INJECT) + "must be a string",
        ),
        (pod(POLICY, "  containers: []\n"), "document 1 (Pod shop/agent, line 1): spec.containers: missing or empty".into()),
        (pod(POLICY, &format!("  hostNetwork: true\n{APP}")), "document 1 (Pod shop/agent, line 1): spec.hostNetwork: credproxy cannot be injected into such a pod".into()),
        (
            pod(POLICY, &format!("{APP}      ports: [{{ containerPort: 15090 }}]\n")),
            "document 1 (Pod shop/agent, line 1): spec.containers[0].ports[0].containerPort: 15090 is credproxy's port".into(),
        ),
        (
            pod(POLICY, &format!("{APP}  volumes: [{{ name: credproxy-ca, emptyDir: {{}} }}]\n")),
            "document 1 (Pod shop/agent, line 1): spec.volumes[0].name: \"credproxy-ca\" is the injector's own name".into(),
        ),
        (
            pod(POLICY, "  initContainers: [{ name: credproxy, image: x }]\n  containers: [{ name: a, image: b }]\n"),
            "document 1 (Pod shop/agent, line 1): spec.initContainers[0].name: \"credproxy\" is the injector's own name".into(),
        ),
        (
            pod(POLICY, &format!("{APP}      volumeMounts: [{{ name: x, mountPath: /run/credproxy/ }}]\n")),
            "document 1 (Pod shop/agent, line 1): spec.containers[0].volumeMounts[0].mountPath: /run/credproxy is where".into(),
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: d }\nspec: { replicas: 1 }\n".into(),
            "document 1 (Deployment d, line 1): spec.template: missing".into(),
        ),
        ("kind: Pod\nmetadata: [unclosed\n".into(), "document 1 (line 3): did not find expected".into()),
        (pod(POLICY, &format!("  shareProcessNamespace: true\n{APP}")), "document 1 (Pod shop/agent, line 1): spec.shareProcessNamespace: credproxy cannot be injected into such a pod: the agent could reach the sidecar's secrets".into()),
        (pod(POLICY, &format!("  hostPID: true\n{APP}")), "document 1 (Pod shop/agent, line 1): spec.hostPID: credproxy cannot be injected".into()),
        (
            pod(POLICY, &format!("{APP}      volumeMounts: [{{ name: credproxy-secrets, mountPath: /s }}]\n")),
            "document 1 (Pod shop/agent, line 1): spec.containers[0].volumeMounts[0].name: \"credproxy-secrets\" is the injector's volume, for the sidecar only".into(),
        ),
        (
            pod(POLICY, &format!("  initContainers: [{{ name: i, image: x, volumeMounts: [{{ name: credproxy-control, mountPath: /c }}] }}]\n{APP}")),
            "document 1 (Pod shop/agent, line 1): spec.initContainers[0].volumeMounts[0].name: \"credproxy-control\" is the injector's volume".into(),
        ),
        (
            pod(POLICY, &format!("{APP}      volumeDevices: [{{ name: credproxy-token, devicePath: /dev/t }}]\n")),
            "document 1 (Pod shop/agent, line 1): spec.containers[0].volumeDevices[0].name: \"credproxy-token\" is the injector's volume".into(),
        ),
        (pod(&ann(c::AGENT_ENV, "HTTPS_PROXY=http://x:1"), APP), at(c::AGENT_ENV) + "HTTPS_PROXY is the injector's own variable"),
        (pod(&ann(c::NO_PROXY, "\"*\""), APP), at(c::NO_PROXY) + "a wildcard would send every request past credproxy"),
        (
            pod(&ann(c::STATUS, "injected"), APP),
            at(c::STATUS) + "says injected, but the pod has no credproxy sidecar among its initContainers",
        ),
        (format!("kind: Service\n---\n{}", pod(POLICY, "  containers: 7\n")), "document 2 (Pod shop/agent, line 3): spec.containers: missing or empty".into()),
    ];
    for (input, want) in &cases {
        let err = inject_documents(input, &opts()).expect_err(want).to_string();
        assert!(err.starts_with(want.as_str()), "want {want:?}\n got {err:?}\n for\n{input}");
    }
}

/// The command: stdin in, stdout out; a bad document anywhere means exit 1, the reason on stderr,
/// and not one byte on stdout (no partial output to pipe into kubectl apply).
#[test]
fn the_command_writes_all_or_nothing() {
    use std::io::Write;
    let run = |input: &str, args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_credproxy"))
            .arg("inject")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let good = pod(POLICY, APP);
    let (code, out, err) = run(&good, &["--image", "reg.example/credproxy:9"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("image: reg.example/credproxy:9") && out.contains("credproxy.dev/status: injected"), "{out}");
    let bad = format!("{good}---\n{}", pod(&format!("{POLICY}    credproxy.dev/admin-port: \"0\"\n"), APP));
    let (code, out, err) = run(&bad, &["-f", "-"]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "", "no partial output");
    assert!(err.contains("document 2 (Pod shop/agent, line 14)") && err.contains("credproxy.dev/admin-port"), "{err}");
}

/// Every manifest the goldens hold passes `kubernetes-validate --strict` for every Kubernetes
/// version from 1.29 to the newest the tool knows; a broken one does not (the check can fail).
#[test]
fn every_injected_manifest_passes_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, input, _) in cases() {
        let out = inject_documents(&std::fs::read_to_string(&input).unwrap(), &opts()).unwrap().output;
        // kubernetes-validate has no schema for a custom kind; the rest of passthrough is checked.
        let out = out.replace("apiVersion: example.com/v1\nkind: Deployment", "apiVersion: v1\nkind: ConfigMap");
        let out =
            out.replace("spec:\n  template:\n    metadata: { annotations: { credproxy.dev/inject: \"true\" } }\n", "");
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, out).unwrap();
        files.push(path);
    }
    common::venv::validate_strict(&files);
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&files[0]).unwrap().replace("restartPolicy: Always", "restartPolicyX: Always");
    std::fs::write(&broken, text).unwrap();
    let status = std::process::Command::new(common::venv::bin("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.29.0"])
        .arg(&broken)
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "kubernetes-validate accepts a broken sidecar");
}

/// A `credproxy.dev/*` typo on a pod that never asked for the sidecar is not ours to refuse.
#[test]
fn a_pod_that_did_not_opt_in_is_never_refused() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: { credproxy.dev/injection: enabled }\nspec:\n  containers: [{ name: web, image: nginx }]\n";
    let done = inject_documents(input, &opts()).unwrap();
    assert_eq!((done.injected, done.output.as_str()), (0, input));
}

/// An injected pod is checked again as a whole (an edit, or a webhook after ours on
/// reinvocation, cannot add what a first injection refuses); a container added since is left
/// alone (it may be another webhook's) and named in a warning; the sidecar need not stay first.
#[test]
fn an_injected_pod_is_checked_again_and_added_containers_are_named() {
    let golden = std::fs::read_to_string(fixtures().join("pod.out.yaml")).unwrap();
    let added = golden.replace("  containers:\n", "  containers:\n  - name: late\n    image: busybox\n");
    assert_ne!(added, golden);
    let done = inject_documents(&added, &opts()).unwrap();
    assert_eq!((done.injected, done.output.as_str()), (0, added.as_str()), "left as it is");
    assert!(
        done.warnings.iter().any(|w| w.contains("container late was added after injection")),
        "{:?}",
        done.warnings
    );
    let first = golden.replace("  initContainers:\n", "  initContainers:\n  - name: mesh-init\n    image: busybox\n");
    assert_ne!(first, golden);
    assert_eq!(inject_documents(&first, &opts()).unwrap().output, first, "another init container before ours is fine");

    let refused = [
        (golden.replace("spec:\n  containers:\n", "spec:\n  shareProcessNamespace: true\n  containers:\n"), "spec.shareProcessNamespace"),
        (
            golden.replace("  containers:\n", "  containers:\n  - name: late\n    image: busybox\n    volumeMounts: [{ name: credproxy-control, mountPath: /c }]\n"),
            "spec.containers[0].volumeMounts[0].name",
        ),
        (
            golden.replace("  initContainers:\n", "  initContainers:\n  - name: grab\n    image: busybox\n    volumeMounts: [{ name: credproxy-policy, mountPath: /p }]\n"),
            "spec.initContainers[0].volumeMounts[0].name",
        ),
        // The CA mount made writable.
        (
            golden.replace("      mountPath: /run/credproxy\n      readOnly: true\n    env:", "      mountPath: /run/credproxy\n    env:"),
            "spec.containers[0].volumeMounts[0].name",
        ),
    ];
    for (input, field) in &refused {
        assert_ne!(input, &golden, "the edit for {field} applied");
        let err = inject_documents(input, &opts()).unwrap_err().to_string();
        assert!(err.contains(field), "want {field}: {err}");
    }
}

/// The tool Secret and the token's audience are the sidecar's alone: no other route to them.
#[test]
fn no_other_route_to_the_sidecars_secret_or_token() {
    let ann = format!("{POLICY}    {}: agent-secrets\n    {}: vault\n", c::SECRETS, c::TOKEN_AUDIENCE);
    let cases = [
        (format!("{APP}      envFrom: [{{ secretRef: {{ name: agent-secrets }} }}]\n"), "spec.containers[0].envFrom[0].secretRef.name"),
        (
            format!("{APP}      env: [{{ name: K, valueFrom: {{ secretKeyRef: {{ name: agent-secrets, key: k }} }} }}]\n"),
            "spec.containers[0].env[0].valueFrom.secretKeyRef.name",
        ),
        (format!("{APP}  volumes: [{{ name: keys, secret: {{ secretName: agent-secrets }} }}]\n"), "spec.volumes[0]: mounts \"agent-secrets\""),
        (
            format!("{APP}  volumes: [{{ name: keys, projected: {{ sources: [{{ secret: {{ name: agent-secrets }} }}] }} }}]\n"),
            "spec.volumes[0]: mounts",
        ),
        (
            format!("{APP}  volumes: [{{ name: t, projected: {{ sources: [{{ serviceAccountToken: {{ audience: vault, path: t }} }}] }} }}]\n"),
            "spec.volumes[0]: a token for \"vault\"",
        ),
    ];
    for (spec, want) in &cases {
        let err = inject_documents(&pod(&ann, spec), &opts()).unwrap_err().to_string();
        assert!(err.contains(want), "want {want}: {err}");
    }
    // Another Secret, another audience: fine.
    let fine = format!("{APP}      envFrom: [{{ secretRef: {{ name: app-config }} }}]\n  volumes: [{{ name: t, projected: {{ sources: [{{ serviceAccountToken: {{ audience: other, path: t }} }}] }} }}]\n");
    assert_eq!(inject_documents(&pod(&ann, &fine), &opts()).unwrap().injected, 1);
}

/// kubectl reads YAML 1.1: every rewritten document means the same to PyYAML (1.1) as to the
/// YAML 1.2 reader credproxy uses, so no string turns into a bool or a number on the way.
#[test]
fn rewritten_manifests_read_the_same_in_yaml_1_1() {
    let mut checked = 0;
    for (name, _, golden) in cases() {
        let text = std::fs::read_to_string(&golden).unwrap();
        let ours: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_json::to_value(Value::deserialize(d).unwrap()).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        let mut py = std::process::Command::new(common::venv::python());
        py.args(["-c", "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))"])
            .arg(&golden);
        let theirs: Vec<serde_json::Value> = serde_json::from_str(&common::venv::run_ok(py)).unwrap();
        assert_eq!(ours, theirs, "{name}: YAML 1.1 reads it differently");
        checked += 1;
    }
    assert!(checked >= 9);
}

/// The writer's strings, read back by serde_norway (YAML 1.2) and by PyYAML (YAML 1.1, as
/// kubectl reads): every one comes back the same string, as key and as value.
#[test]
fn the_yaml_writer_reads_back_the_same_in_yaml_1_1() {
    let tricky = [
        "no",
        "No",
        "ON",
        "off",
        "y",
        "Y",
        "yes",
        "true",
        "null",
        "~",
        "",
        " x",
        "x ",
        "1_000",
        "0644",
        "0x1F",
        "12:30",
        "1e3",
        ".inf",
        "-",
        "- x",
        "a: b",
        "a:",
        "#x",
        "x #y",
        "@x",
        "*x",
        "&x",
        "!x",
        "%x",
        "|",
        ">",
        "{}",
        "[x]",
        "'q'",
        "\"q\"",
        "two\nlines",
        "tab\there",
        "ünïcode",
        "15090",
        "10m",
        "--config",
        "-m",
        "-1",
        "-.5",
        "--",
        "---",
        "<<",
        "=",
        "a\u{85}b",
        "a\u{2028}b",
        "a\u{2029}b",
        "a\u{7f}b",
        "a\u{80}b",
        "\u{feff}x",
        "\u{fffe}",
        "\u{ffff}",
        "a\\b",
        "\u{1}",
        "http://127.0.0.1:15001/v1",
        "localhost,127.0.0.1,::1",
        "::1",
        "credproxy.dev/inject",
        "=x",
        "x=",
        "a,b",
        "OPENAI_BASE_URL=http://127.0.0.1:15001/v1,OPENAI_API_KEY=credproxy",
        "/etc/credproxy",
        "-_x",
        "- -",
    ];
    let mut doc = serde_yaml::Mapping::new();
    for (i, t) in tricky.iter().enumerate() {
        doc.insert(Value::from(format!("k{i}-{t}")), Value::from(*t));
        doc.insert(Value::from(*t), Value::Sequence(vec![Value::from(*t), Value::from(i as u64)]));
    }
    let v = Value::Mapping(doc);
    let text = credproxy::inject::yaml::to_string(&v).unwrap();
    assert_eq!(serde_yaml::from_str::<Value>(&text).unwrap(), v, "YAML 1.2 reads it back:\n{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tricky.yaml");
    std::fs::write(&file, text).unwrap();
    let mut py = std::process::Command::new(common::venv::python());
    py.args(["-c", "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"])
        .arg(&file);
    let theirs: serde_json::Value = serde_json::from_str(&common::venv::run_ok(py)).unwrap();
    assert_eq!(theirs, serde_json::to_value(&v).unwrap());
}
