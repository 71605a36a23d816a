//! The mutation: one pure function from a workload (or pod) to the same object with the credproxy
//! sidecar, its volumes, the app containers' variables and mounts, and the scrape annotations.
//! `credproxy inject` and the webhook both call [`mutate`]; nothing here does I/O.

use serde_yaml::{Mapping, Value};

use super::contract as c;
use super::settings::{self, Settings, Wanted};
use super::{InjectError, Options};

/// What [`mutate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar is in; the warnings say what the user's own settings kept.
    Injected {
        /// For the person applying the manifest (stderr, or the admission response's warnings).
        warnings: Vec<String>,
    },
    /// The pod template does not ask for it.
    NotAnnotated,
    /// `credproxy.dev/status: injected` already, and the pod still passes the checks.
    AlreadyInjected {
        /// Containers added since, which got nothing.
        warnings: Vec<String>,
    },
    /// Not a kind that holds a pod template (a Service, a ConfigMap, …).
    NotAWorkload,
}

/// Whether `apiVersion`/`kind` name a kind [`mutate`] changes.
pub fn is_workload(api: Option<&str>, kind: Option<&str>) -> bool {
    api.zip(kind).is_some_and(|(a, k)| path_of(a, k).is_some())
}

/// Where the pod template sits in each kind that has one.
fn template_path(doc: &Value) -> Option<&'static [&'static str]> {
    path_of(doc.get("apiVersion")?.as_str()?, doc.get("kind")?.as_str()?)
}

fn path_of(api: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (api, kind) {
        ("v1", "Pod") => Some(&[]),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch/v1", "Job") => {
            Some(&["spec", "template"])
        }
        ("batch/v1", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Add the sidecar to `doc` when its pod template is annotated `credproxy.dev/inject: "true"`.
/// On an error `doc` is unchanged.
pub fn mutate(doc: &mut Value, opts: &Options) -> Result<Outcome, InjectError> {
    let Some(path) = template_path(doc) else {
        return Ok(Outcome::NotAWorkload);
    };
    let prefix: String = path.iter().map(|p| format!("{p}.")).collect();
    let mut template = &*doc;
    for (i, key) in path.iter().enumerate() {
        template = match template.get(key) {
            Some(v @ Value::Mapping(_)) => v,
            _ => return Err(InjectError::new(path[..=i].join("."), "missing: this kind holds a pod template here")),
        };
    }
    let annotations = template.get("metadata").and_then(|m| m.get("annotations"));
    let (s, already) = match settings::read(annotations, &format!("{prefix}metadata.annotations"), opts)? {
        Wanted::No => return Ok(Outcome::NotAnnotated),
        Wanted::Already(s) => (s, true),
        Wanted::Yes(s) => (s, false),
    };
    if already {
        return super::check::injected(template, &s, &prefix).map(|warnings| Outcome::AlreadyInjected { warnings });
    }
    let mut t = template.clone();
    let warnings = inject(&mut t, &s, &prefix)?;
    let mut slot = doc;
    for key in path {
        slot = &mut slot[*key];
    }
    *slot = t;
    Ok(Outcome::Injected { warnings })
}

/// Check, then change the pod template `t` (`metadata` and `spec`).
fn inject(t: &mut Value, s: &Settings, p: &str) -> Result<Vec<String>, InjectError> {
    let spec =
        t.get("spec").filter(|v| v.is_mapping()).ok_or_else(|| InjectError::new(format!("{p}spec"), "missing"))?;
    super::check::check(spec, s, p, false)?;
    let mut warnings = Vec::new();
    let spec = &mut t["spec"];
    seq(spec, "initContainers").insert(0, sidecar(s));
    let volumes = seq(spec, "volumes");
    volumes.extend(self::volumes(s));
    let env = app_env(s);
    for container in seq(spec, "containers") {
        app_container(container, &env, s, &mut warnings);
    }
    let meta = &mut t["metadata"];
    let annotations = map(&mut meta["annotations"]);
    let admin_port = s.admin_port.to_string();
    let scrape =
        [("prometheus.io/scrape", "true"), ("prometheus.io/port", &admin_port), ("prometheus.io/path", "/metrics")];
    // A pod whose own metrics are scraped by annotation keeps them: one port per pod is all that
    // discovery knows, and the app's metrics are not ours to take away.
    let theirs = scrape.iter().find(|(k, v)| annotations.get(*k).is_some_and(|old| old.as_str() != Some(v)));
    match theirs {
        Some((k, _)) => {
            warnings.push(format!("{k} is the pod's own and kept: scrape credproxy with the PodMonitor instead"))
        }
        None => {
            for (k, v) in scrape {
                annotations.insert(k.into(), v.into());
            }
        }
    }
    annotations.insert(c::STATUS.into(), c::INJECTED.into());
    Ok(warnings)
}

/// Give one app container the CA, read-only, and the variables.
fn app_container(container: &mut Value, env: &[(String, String)], s: &Settings, warnings: &mut Vec<String>) {
    let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    seq(container, "volumeMounts").push(mount(c::VOLUME_CA, c::CA_DIR, true));
    let list = seq(container, "env");
    for (k, v) in env {
        if let Some(w) = set_env(list, k, v, s.override_env) {
            warnings.push(format!("container {name}: {w}"));
        }
    }
}

/// The sidecar: a native sidecar (an init container that keeps running), probed on `/ready`.
fn sidecar(s: &Settings) -> Value {
    let admin = Value::from(s.admin_port);
    let probe = |path: &str, period: u64, failures: u64| {
        obj([
            ("httpGet", obj([("path", path.into()), ("port", admin.clone())])),
            ("periodSeconds", period.into()),
            ("timeoutSeconds", 2.into()),
            ("failureThreshold", failures.into()),
        ])
    };
    let args = [
        "run",
        "--config",
        c::POLICY_FILE,
        "--log-format",
        "json",
        "--proxy-listen",
        &format!("127.0.0.1:{}", s.proxy_port),
        "--admin-listen",
        &format!("0.0.0.0:{}", s.admin_port),
        "--control",
        c::CONTROL,
        "--ca-dir",
        c::CA_DIR,
    ];
    let field_ref = |name: &str, path: &str| {
        obj([("name", name.into()), ("valueFrom", obj([("fieldRef", obj([("fieldPath", path.into())]))]))])
    };
    let [cpu_req, cpu_lim, mem_req, mem_lim] = s.resources.clone();
    let mut mounts = vec![mount(c::VOLUME_POLICY, c::POLICY_DIR, true)];
    if s.secrets.is_some() {
        mounts.push(mount(c::VOLUME_SECRETS, c::SECRETS_DIR, true));
    }
    if s.token_audience.is_some() {
        mounts.push(mount(c::VOLUME_TOKEN, c::TOKEN_DIR, true));
    }
    mounts.push(mount(c::VOLUME_CA, c::CA_DIR, false));
    mounts.push(mount(c::VOLUME_CONTROL, c::CONTROL_DIR, false));
    obj([
        ("name", c::CONTAINER.into()),
        ("image", s.image.as_str().into()),
        ("restartPolicy", "Always".into()),
        ("args", Value::Sequence(args.iter().map(|a| Value::from(*a)).collect())),
        (
            "env",
            Value::Sequence(vec![
                field_ref("POD_NAME", "metadata.name"),
                field_ref("POD_NAMESPACE", "metadata.namespace"),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![obj([
                ("name", "credproxy-admin".into()),
                ("containerPort", admin.clone()),
                ("protocol", "TCP".into()),
            ])]),
        ),
        // Holds every later container back until each required credential is fetched and the CA
        // files are written (up to 5 minutes), then keeps the pod unready while one is not.
        ("startupProbe", probe("/ready", 1, 300)),
        ("readinessProbe", probe("/ready", 5, 2)),
        ("livenessProbe", probe("/live", 10, 3)),
        (
            "resources",
            obj([
                ("requests", obj([("cpu", cpu_req.into()), ("memory", mem_req.into())])),
                ("limits", obj([("cpu", cpu_lim.into()), ("memory", mem_lim.into())])),
            ]),
        ),
        (
            "securityContext",
            obj([
                ("runAsNonRoot", true.into()),
                ("runAsUser", c::UID.into()),
                ("runAsGroup", c::UID.into()),
                ("readOnlyRootFilesystem", true.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("capabilities", obj([("drop", Value::Sequence(vec!["ALL".into()]))])),
                ("seccompProfile", obj([("type", "RuntimeDefault".into())])),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ])
}

/// The pod's new volumes. Secret and token files are world-readable (0444) because the sidecar
/// runs as 65532 without an fsGroup; only the sidecar mounts them.
fn volumes(s: &Settings) -> Vec<Value> {
    const READ_ONLY_FILES: u64 = 0o444;
    let vol = |name: &str, kind: &str, body: Value| obj([("name", name.into()), (kind, body)]);
    let memory = |size: &str| obj([("medium", "Memory".into()), ("sizeLimit", size.into())]);
    let mut out = vec![vol(c::VOLUME_POLICY, "configMap", obj([("name", s.policy.as_str().into())]))];
    if let Some(secret) = &s.secrets {
        out.push(vol(
            c::VOLUME_SECRETS,
            "secret",
            obj([("secretName", secret.as_str().into()), ("defaultMode", READ_ONLY_FILES.into())]),
        ));
    }
    if let Some(audience) = &s.token_audience {
        let token = obj([
            ("audience", audience.as_str().into()),
            ("expirationSeconds", c::TOKEN_SECONDS.into()),
            ("path", c::TOKEN_FILE.into()),
        ]);
        let sources = Value::Sequence(vec![obj([("serviceAccountToken", token)])]);
        out.push(vol(
            c::VOLUME_TOKEN,
            "projected",
            obj([("sources", sources), ("defaultMode", READ_ONLY_FILES.into())]),
        ));
    }
    out.push(vol(c::VOLUME_CA, "emptyDir", memory("8Mi")));
    out.push(vol(c::VOLUME_CONTROL, "emptyDir", memory("1Mi")));
    out
}

/// The variables every app container gets, in order.
fn app_env(s: &Settings) -> Vec<(String, String)> {
    let proxy = format!("http://127.0.0.1:{}", s.proxy_port);
    let mut no_proxy = c::NO_PROXY_LOOPBACK.to_string();
    for h in &s.no_proxy {
        no_proxy.push(',');
        no_proxy.push_str(h);
    }
    let bundle = format!("{}/ca-bundle.crt", c::CA_DIR);
    let mut env: Vec<(String, String)> = [
        ("HTTP_PROXY", proxy.clone()),
        ("HTTPS_PROXY", proxy.clone()),
        ("NO_PROXY", no_proxy.clone()),
        ("http_proxy", proxy.clone()),
        ("https_proxy", proxy),
        ("no_proxy", no_proxy),
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle),
        ("NODE_EXTRA_CA_CERTS", format!("{}/ca.crt", c::CA_DIR)),
        ("NODE_USE_ENV_PROXY", "1".into()),
        ("JAVA_TOOL_OPTIONS", java_options(s)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(s.agent_env.iter().cloned());
    env
}

/// Java's proxy and trust-store properties. `http.nonProxyHosts` is NO_PROXY in Java's syntax:
/// `.example.com` becomes `*.example.com`, a name also covers its subdomains, CIDR ranges
/// (which Java cannot express) are left out.
fn java_options(s: &Settings) -> String {
    let mut non_proxy = vec!["localhost".to_string(), "127.*".into(), "[::1]".into()];
    for h in s.no_proxy.iter().filter(|h| !h.contains('/')) {
        match h.strip_prefix('.') {
            Some(suffix) => non_proxy.push(format!("*.{suffix}")),
            None => non_proxy.extend([h.clone(), format!("*.{h}")]),
        }
    }
    let port = s.proxy_port;
    format!(
        "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={port} -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={port} \
         -Dhttp.nonProxyHosts={} -Djavax.net.ssl.trustStore={}/truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12 \
         -Djavax.net.ssl.trustStorePassword=changeit",
        non_proxy.join("|"),
        c::CA_DIR
    )
}

/// Set one variable in a container's `env`, keeping the user's unless `replace`; our Java options
/// are appended to a literal `JAVA_TOOL_OPTIONS` rather than replacing it. Returns a warning
/// when the user's value was kept.
fn set_env(list: &mut Vec<Value>, name: &str, value: &str, replace: bool) -> Option<String> {
    let ours = || obj([("name", name.into()), ("value", value.into())]);
    let Some(i) = list.iter().position(|e| e.get("name").and_then(Value::as_str) == Some(name)) else {
        list.push(ours());
        return None;
    };
    let literal = list[i].get("value").and_then(Value::as_str).map(str::to_string);
    match (name, literal) {
        ("JAVA_TOOL_OPTIONS", Some(old)) => {
            let joined = if old.trim().is_empty() { value.to_string() } else { format!("{old} {value}") };
            list[i] = obj([("name", name.into()), ("value", joined.into())]);
            None
        }
        _ if replace => {
            list[i] = ours();
            None
        }
        _ => Some(format!("{name} is set by the manifest and kept ({} \"true\" replaces it)", c::OVERRIDE_ENV)),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    let mut m = obj([("name", name.into()), ("mountPath", path.into())]);
    if read_only {
        m["readOnly"] = true.into();
    }
    m
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

/// The list at `v[key]`, made when missing (`check` has refused anything but a list or null).
fn seq<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    let slot = &mut v[key];
    if !slot.is_sequence() {
        *slot = Value::Sequence(Vec::new());
    }
    match slot {
        Value::Sequence(s) => s,
        _ => unreachable!("just made a sequence"),
    }
}

/// The mapping at `v`, made when missing.
fn map(v: &mut Value) -> &mut Mapping {
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    match v {
        Value::Mapping(m) => m,
        _ => unreachable!("just made a mapping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `agent-env` may not name what the injector sets: the list it checks is the list it sets.
    #[test]
    fn the_refused_agent_variables_are_the_injected_ones() {
        let v: Value = serde_yaml::from_str(
            "metadata: { annotations: { credproxy.dev/inject: \"true\", credproxy.dev/policy: p } }",
        )
        .unwrap();
        let Wanted::Yes(s) = settings::read(v["metadata"].get("annotations"), "a", &Options::default()).unwrap() else {
            panic!("wanted")
        };
        let names: Vec<String> = app_env(&s).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, c::INJECTED_ENV);
    }
}
