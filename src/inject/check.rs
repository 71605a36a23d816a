//! What would make an injected pod invalid, surprising or weaker than promised, found before
//! anything in the object changes: a shared host or process namespace (through which the agent
//! could reach the sidecar's files and memory), the injector's own names, ports or volumes
//! taken, or an app container reaching for the volumes only the sidecar may mount.

use serde_yaml::Value;

use super::contract as c;
use super::settings::Settings;
use super::InjectError;

/// The volumes the injector adds; only the sidecar mounts them (app containers the CA read-only).
const OUR_VOLUMES: [&str; 5] = [c::VOLUME_POLICY, c::VOLUME_SECRETS, c::VOLUME_TOKEN, c::VOLUME_CA, c::VOLUME_CONTROL];

/// Pod fields that would share a namespace with the node or between containers, and why each
/// defeats the sidecar.
const SHARED: [(&str, &str); 4] = [
    ("hostNetwork", "its loopback proxy and admin port would be the node's"),
    ("hostPID", "node processes could read the sidecar's memory and files"),
    ("hostIPC", "the sidecar would share IPC with the node"),
    ("shareProcessNamespace", "the agent could reach the sidecar's secrets, token and control socket through /proc"),
];

/// Everything that would make the result invalid or surprising, before anything changes.
pub(super) fn check(spec: &Value, s: &Settings, p: &str) -> Result<(), InjectError> {
    let err = |field: String, m: String| Err(InjectError::new(format!("{p}spec.{field}"), m));
    for (field, why) in SHARED {
        if spec.get(field).and_then(Value::as_bool) == Some(true) {
            return err(field.into(), format!("credproxy cannot be injected into such a pod: {why}"));
        }
    }
    match spec.get("containers") {
        Some(Value::Sequence(v)) if !v.is_empty() => {}
        _ => return err("containers".into(), "missing or empty".into()),
    }
    for list in ["initContainers", "containers", "ephemeralContainers", "volumes"] {
        let items = match spec.get(list) {
            None | Some(Value::Null) => continue,
            Some(Value::Sequence(v)) => v,
            Some(_) => return err(list.into(), "must be a list".into()),
        };
        for (i, item) in items.iter().enumerate() {
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                return err(format!("{list}[{i}].name"), "missing".into());
            };
            let ours = match list {
                "volumes" => OUR_VOLUMES.contains(&name),
                _ => name == c::CONTAINER,
            };
            if ours {
                return err(
                    format!("{list}[{i}].name"),
                    format!("{name:?} is the injector's own name, and this pod is not marked injected"),
                );
            }
            if list == "volumes" {
                continue;
            }
            container(item, &format!("{p}spec.{list}[{i}]"), list == "containers", s)?;
        }
    }
    Ok(())
}

/// One container's checks: its lists are lists, it takes none of credproxy's ports, mounts none
/// of the injector's volumes, and (an app container) nothing at the CA folder. `at` is its path.
pub(super) fn container(item: &Value, at: &str, app: bool, s: &Settings) -> Result<(), InjectError> {
    let err = |field: String, m: String| Err(InjectError::new(format!("{at}.{field}"), m));
    for field in ["env", "volumeMounts", "volumeDevices", "ports"] {
        if !matches!(item.get(field), None | Some(Value::Null | Value::Sequence(_))) {
            return err(field.into(), "must be a list".into());
        }
    }
    for (j, port) in item.get("ports").and_then(Value::as_sequence).into_iter().flatten().enumerate() {
        let n = port.get("containerPort").and_then(Value::as_u64);
        if n == Some(s.proxy_port.into()) || n == Some(s.admin_port.into()) {
            return err(
                format!("ports[{j}].containerPort"),
                format!(
                    "{} is credproxy's port; choose others with {} and {}",
                    n.unwrap_or(0),
                    c::PROXY_PORT,
                    c::ADMIN_PORT
                ),
            );
        }
    }
    for field in ["volumeMounts", "volumeDevices"] {
        for (j, m) in item.get(field).and_then(Value::as_sequence).into_iter().flatten().enumerate() {
            let volume = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if OUR_VOLUMES.contains(&volume) {
                return err(
                    format!("{field}[{j}].name"),
                    format!("{volume:?} is the injector's volume, for the sidecar only"),
                );
            }
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or_default().trim_end_matches('/');
            if app && (path == c::CA_DIR || path.starts_with(&format!("{}/", c::CA_DIR))) {
                return err(
                    format!("{field}[{j}].mountPath"),
                    format!("{} is where credproxy's CA files go", c::CA_DIR),
                );
            }
        }
    }
    Ok(())
}
