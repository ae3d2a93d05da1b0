//! The crate's error type.

/// What the Kubernetes backend can fail with before a task runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// A manifest could not be built (a bad `pod_template`, ...).
    #[error("invalid Job manifest: {0}")]
    Manifest(String),
    /// No client could be made (no in-cluster config, no kubeconfig).
    #[error("cannot reach a Kubernetes API server: {0}")]
    Client(String),
    /// The preflight Job showed that tasks cannot run; the message names what is missing.
    #[error("preflight failed: {0}")]
    Preflight(String),
}
