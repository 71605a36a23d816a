//! What would make an injected pod invalid or surprising (a node-network pod, a clashing name,
//! port or mount), found before anything in the object changes.

use serde_yaml::Value;

use super::contract as c;
use super::settings::Settings;
use super::InjectError;

/// Everything that would make the result invalid or surprising, before anything changes.
pub(super) fn check(spec: &Value, s: &Settings, p: &str) -> Result<(), InjectError> {
    let err = |field: String, m: String| Err(InjectError::new(format!("{p}spec.{field}"), m));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return err(
            "hostNetwork".into(),
            "credproxy cannot run in a pod on the node's network: its loopback proxy would be the node's".into(),
        );
    }
    match spec.get("containers") {
        Some(Value::Sequence(v)) if !v.is_empty() => {}
        _ => return err("containers".into(), "missing or empty".into()),
    }
    for list in ["initContainers", "containers", "volumes"] {
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
                "volumes" => [c::VOLUME_POLICY, c::VOLUME_SECRETS, c::VOLUME_TOKEN, c::VOLUME_CA, c::VOLUME_CONTROL]
                    .contains(&name),
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
            for field in ["env", "volumeMounts", "ports"] {
                if !matches!(item.get(field), None | Some(Value::Null | Value::Sequence(_))) {
                    return err(format!("{list}[{i}].{field}"), "must be a list".into());
                }
            }
            for (j, port) in item.get("ports").and_then(Value::as_sequence).into_iter().flatten().enumerate() {
                let n = port.get("containerPort").and_then(Value::as_u64);
                if n == Some(s.proxy_port.into()) || n == Some(s.admin_port.into()) {
                    return err(
                        format!("{list}[{i}].ports[{j}].containerPort"),
                        format!(
                            "{} is credproxy's port; choose others with {} and {}",
                            n.unwrap_or(0),
                            c::PROXY_PORT,
                            c::ADMIN_PORT
                        ),
                    );
                }
            }
            for (j, m) in item.get("volumeMounts").and_then(Value::as_sequence).into_iter().flatten().enumerate() {
                let at = m.get("mountPath").and_then(Value::as_str).unwrap_or_default().trim_end_matches('/');
                if list == "containers" && at == c::CA_DIR {
                    return err(
                        format!("{list}[{i}].volumeMounts[{j}].mountPath"),
                        format!("{} is where credproxy's CA files go", c::CA_DIR),
                    );
                }
            }
        }
    }
    Ok(())
}
