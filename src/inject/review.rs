//! One `admission.k8s.io/v1` AdmissionReview in, its answer out: the object goes through the same
//! [`mutate`] as `credproxy inject`, and the difference comes back as a base64 RFC 6902 JSON Patch.
//! Pure: the webhook server does the I/O. Our own small structs, not k8s-openapi's: the answer
//! needs six fields, and kube-core 5 writes the patch as an array of numbers.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::mutate::{mutate, Outcome};
use super::Options;

/// What to answer for a pod the injector cannot mutate (a bad annotation, a port clash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Deny it, with the reason.
    Fail,
    /// Admit it unchanged, with the reason as a warning.
    Ignore,
}

/// A request that is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
pub struct BadReview(String);

/// The answer and how to count it.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back (JSON).
    pub body: Vec<u8>,
    /// `injected`, `unchanged`, `denied` or `allowed_with_error`.
    pub result: &'static str,
    /// The request was a dry run.
    pub dry_run: bool,
    /// Why the pod could not be mutated, for the log.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<serde_json::Value>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the JSON Patch's JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// Answer one AdmissionReview.
pub fn answer(body: &[u8], opts: &Options, policy: FailurePolicy) -> Result<Answer, BadReview> {
    // serde_json's message may quote a value from the object; the position says enough.
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        let short = |s: &str| s.chars().take(64).collect::<String>();
        return Err(BadReview(format!("{}/{}", short(&review.api_version), short(&review.kind))));
    }
    let req = review.request.ok_or_else(|| BadReview("no request".into()))?;
    let dry_run = req.dry_run.unwrap_or(false);
    let mut out =
        Response { uid: &req.uid, allowed: true, patch_type: None, patch: None, status: None, warnings: vec![] };
    let mut result = "unchanged";
    let mut error = None;
    // Only a new object gets a sidecar: a pod's containers cannot change after it is created.
    let object = req.object.filter(|_| req.operation.as_deref().is_none_or(|op| op == "CREATE"));
    if let Some(original) = object {
        match patch(&original, opts) {
            Ok((None, warnings)) => out.warnings = warnings,
            Ok((Some(patch), warnings)) => {
                out.patch_type = Some("JSONPatch");
                out.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
                out.warnings = warnings;
                result = "injected";
            }
            Err(e) => {
                let message =
                    format!("credproxy injector: {}{}: {e}", describe(&original), in_namespace(&req.namespace));
                match policy {
                    FailurePolicy::Ignore => {
                        out.warnings.push(format!("{message}; admitted without the sidecar"));
                        result = "allowed_with_error";
                    }
                    FailurePolicy::Fail => {
                        out.allowed = false;
                        out.status = Some(Status { code: 400, message: message.clone() });
                        result = "denied";
                    }
                }
                error = Some(message);
            }
        }
    }
    let body =
        serde_json::to_vec(&ReviewOut { api_version: "admission.k8s.io/v1", kind: "AdmissionReview", response: out })
            .expect("the answer serialises");
    Ok(Answer { body, result, dry_run, error })
}

/// A JSON Patch's text (none when nothing changes) and the mutation's warnings.
type Patched = (Option<Vec<u8>>, Vec<String>);

/// The patch from `original` to its mutation.
fn patch(original: &serde_json::Value, opts: &Options) -> Result<Patched, super::InjectError> {
    // Only the kinds that hold a pod template are worth a copy of the object.
    if !super::mutate::is_workload(original["apiVersion"].as_str(), original["kind"].as_str()) {
        return Ok((None, Vec::new()));
    }
    let mut doc: serde_yaml::Value =
        serde_yaml::to_value(original).map_err(|e| super::InjectError::new("object", e.to_string()))?;
    let warnings = match mutate(&mut doc, opts)? {
        Outcome::Injected { warnings } => warnings,
        Outcome::AlreadyInjected { warnings } => return Ok((None, warnings)),
        Outcome::NotAnnotated | Outcome::NotAWorkload => return Ok((None, Vec::new())),
    };
    let mutated = serde_json::to_value(&doc).map_err(|e| super::InjectError::new("object", e.to_string()))?;
    let ops = json_patch::diff(original, &mutated);
    Ok((Some(serde_json::to_vec(&ops).expect("a patch serialises")), warnings))
}

fn describe(v: &serde_json::Value) -> String {
    let kind = v["kind"].as_str().unwrap_or("object");
    let name = v["metadata"]["name"].as_str().or(v["metadata"]["generateName"].as_str()).unwrap_or("");
    format!("{kind} {name}")
}

fn in_namespace(ns: &Option<String>) -> String {
    ns.as_deref().map_or(String::new(), |ns| format!(" in namespace {ns}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(object: serde_json::Value, operation: &str) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "operation": operation, "namespace": "shop", "object": object, "dryRun": false}})
        .to_string()
        .into_bytes()
    }

    fn pod(annotations: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "agent-", "annotations": annotations},
               "spec": {"containers": [{"name": "a", "image": "b"}]}})
    }

    fn response(a: &Answer) -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()["response"].clone()
    }

    #[test]
    fn a_bad_annotation_is_denied_or_admitted_with_a_warning() {
        let bad = review(pod(json!({"credproxy.dev/inject": "true", "credproxy.dev/policy": "Bad_Name"})), "CREATE");
        let denied = answer(&bad, &Options::default(), FailurePolicy::Fail).unwrap();
        let r = response(&denied);
        assert_eq!((r["uid"].as_str(), r["allowed"].as_bool(), denied.result), (Some("u-1"), Some(false), "denied"));
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("Pod agent- in namespace shop") && message.contains("credproxy.dev/policy"),
            "{message}"
        );
        assert!(r.get("patch").is_none());
        let admitted = answer(&bad, &Options::default(), FailurePolicy::Ignore).unwrap();
        let r = response(&admitted);
        assert_eq!((r["allowed"].as_bool(), admitted.result), (Some(true), "allowed_with_error"));
        assert!(r.get("patch").is_none() && r.get("status").is_none());
        assert!(r["warnings"][0].as_str().unwrap().contains("admitted without the sidecar"));
    }

    #[test]
    fn only_creations_are_mutated_and_foreign_reviews_are_refused() {
        let good = pod(json!({"credproxy.dev/inject": "true", "credproxy.dev/policy": "p"}));
        let created = answer(&review(good.clone(), "CREATE"), &Options::default(), FailurePolicy::Fail).unwrap();
        assert_eq!(created.result, "injected");
        assert_eq!(response(&created)["patchType"], "JSONPatch");
        let updated = answer(&review(good, "UPDATE"), &Options::default(), FailurePolicy::Fail).unwrap();
        assert_eq!(updated.result, "unchanged");
        assert!(response(&updated).get("patch").is_none());
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
        assert!(answer(v1beta1, &Options::default(), FailurePolicy::Fail).is_err());
        assert!(answer(b"{", &Options::default(), FailurePolicy::Fail).is_err());
    }
}
