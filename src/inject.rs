//! Kubernetes: the one pure mutation that adds the credproxy sidecar to an annotated pod template
//! (DESIGN §8), the `credproxy inject` manifest reader around it, and the admission webhook that
//! serves the same mutation as a JSON Patch.

mod check;
pub mod contract;
pub mod manifest;
pub mod mutate;
pub mod review;
pub mod settings;
pub mod webhook;
pub mod yaml;

pub use manifest::inject_documents;
pub use mutate::{mutate, Outcome};

/// Why a pod template could not be mutated: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InjectError {
    /// Where in the object, e.g. `spec.template.metadata.annotations["credproxy.dev/proxy-port"]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl InjectError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InjectError { field: field.into(), message: message.into() }
    }
}

/// What the injector is told by its command line rather than by the pod.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar's image when the pod does not name one with `credproxy.dev/image`.
    pub image: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { image: contract::DEFAULT_IMAGE.to_string() }
    }
}
