//! What would make an injected pod invalid, surprising or weaker than promised, found before
//! anything in the object changes (and again on a pod already injected, whatever edited it
//! since): a shared host or process namespace (through which the agent could reach the
//! sidecar's files and memory), the injector's own names or ports taken, or another container
//! reaching for what only the sidecar may read — the injector's volumes, the tool Secret, the
//! token's audience.

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

/// Everything that would make the result invalid or surprising. `injected`: the pod holds the
/// sidecar and its volumes already, which are then ours rather than clashes.
pub(super) fn check(spec: &Value, s: &Settings, p: &str, injected: bool) -> Result<(), InjectError> {
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
            let at = format!("{list}[{i}]");
            let ours = match list {
                "volumes" => OUR_VOLUMES.contains(&name),
                _ => name == c::CONTAINER,
            };
            let ours_here = ours && injected && list != "containers" && list != "ephemeralContainers";
            if ours && !ours_here {
                return err(
                    format!("{at}.name"),
                    format!("{name:?} is the injector's own name, and this pod is not marked injected"),
                );
            }
            if list == "volumes" {
                if !ours {
                    volume(item, &format!("{p}spec.{at}"), s)?;
                }
            } else if !ours_here {
                container(item, &format!("{p}spec.{at}"), list == "containers", s)?;
            }
        }
    }
    Ok(())
}

/// A volume of the pod's own may not hand out what the sidecar alone reads: the tool Secret, or
/// a token for the sidecar's audience.
fn volume(item: &Value, at: &str, s: &Settings) -> Result<(), InjectError> {
    let secret = s.secrets.as_deref();
    let audience = s.token_audience.as_deref();
    let named = item["secret"]["secretName"].as_str();
    let sources = item["projected"]["sources"].as_sequence().map(Vec::as_slice).unwrap_or_default();
    let projected = sources.iter().any(|x| secret.is_some() && x["secret"]["name"].as_str() == secret);
    if (secret.is_some() && named == secret) || projected {
        return Err(InjectError::new(
            at,
            format!("mounts {:?}, the Secret only the sidecar may read", secret.unwrap_or("")),
        ));
    }
    if sources.iter().any(|x| audience.is_some() && x["serviceAccountToken"]["audience"].as_str() == audience) {
        return Err(InjectError::new(
            at,
            format!("a token for {:?}, the audience only the sidecar's token has", audience.unwrap_or("")),
        ));
    }
    Ok(())
}

/// One container's checks: its lists are lists, it takes none of credproxy's ports, mounts none
/// of the injector's volumes (an app container: but the CA, read-only, where the injector put
/// it) and nothing else at the CA folder, and reads nothing from the tool Secret. `at` is its path.
pub(super) fn container(item: &Value, at: &str, app: bool, s: &Settings) -> Result<(), InjectError> {
    let err = |field: String, m: String| Err(InjectError::new(format!("{at}.{field}"), m));
    for field in ["env", "envFrom", "volumeMounts", "volumeDevices", "ports"] {
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
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or_default().trim_end_matches('/');
            let the_ca = app
                && field == "volumeMounts"
                && volume == c::VOLUME_CA
                && path == c::CA_DIR
                && m["readOnly"].as_bool() == Some(true)
                && m.get("subPath").is_none();
            if the_ca {
                continue;
            }
            if OUR_VOLUMES.contains(&volume) {
                return err(
                    format!("{field}[{j}].name"),
                    format!("{volume:?} is the injector's volume, for the sidecar only"),
                );
            }
            if app && (path == c::CA_DIR || path.starts_with(&format!("{}/", c::CA_DIR))) {
                return err(
                    format!("{field}[{j}].mountPath"),
                    format!("{} is where credproxy's CA files go", c::CA_DIR),
                );
            }
        }
    }
    if let Some(secret) = s.secrets.as_deref() {
        let from = item["envFrom"].as_sequence().map(Vec::as_slice).unwrap_or_default();
        if let Some(j) = from.iter().position(|e| e["secretRef"]["name"].as_str() == Some(secret)) {
            return err(
                format!("envFrom[{j}].secretRef.name"),
                format!("{secret:?} is the Secret only the sidecar may read"),
            );
        }
        let env = item["env"].as_sequence().map(Vec::as_slice).unwrap_or_default();
        if let Some(j) = env.iter().position(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some(secret)) {
            return err(
                format!("env[{j}].valueFrom.secretKeyRef.name"),
                format!("{secret:?} is the Secret only the sidecar may read"),
            );
        }
    }
    Ok(())
}

/// A pod marked injected: its sidecar must be there (a forged mark is an error, not a pass), and
/// the pod is checked again as a whole, so an edit or a later webhook cannot add what a first
/// injection would have refused. App containers added since are left as they are (they may be
/// another webhook's, which proxy variables would break) and named in a warning.
pub(super) fn injected(t: &Value, s: &Settings, p: &str) -> Result<Vec<String>, InjectError> {
    let spec = &t["spec"];
    let inits = spec["initContainers"].as_sequence().map(Vec::as_slice).unwrap_or_default();
    let sidecar = inits.iter().find(|x| x["name"].as_str() == Some(c::CONTAINER));
    let sound = sidecar.is_some_and(|x| {
        x["restartPolicy"].as_str() == Some("Always")
            && x["args"].as_sequence().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(c::CONTROL)))
    });
    if !sound {
        return Err(InjectError::new(
            format!("{p}metadata.annotations[\"{}\"]", c::STATUS),
            "says injected, but the pod has no credproxy sidecar among its initContainers",
        ));
    }
    check(spec, s, p, true)?;
    let has_ca = |ctr: &Value| {
        ctr["volumeMounts"].as_sequence().is_some_and(|m| m.iter().any(|m| m["name"].as_str() == Some(c::VOLUME_CA)))
    };
    let containers = spec["containers"].as_sequence().map(Vec::as_slice).unwrap_or_default();
    Ok(containers
        .iter()
        .filter(|ctr| !has_ca(ctr))
        .map(|ctr| {
            format!(
                "container {} was added after injection and has no proxy variables or CA; inject the manifest \
                 without it again to give it them",
                ctr["name"].as_str().unwrap_or_default()
            )
        })
        .collect())
}
