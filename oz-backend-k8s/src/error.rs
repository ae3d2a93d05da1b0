//! The crate's error type.

/// What the Kubernetes backend can fail with before a task runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// A manifest could not be built (a bad `pod_template`, ...).
    #[error("invalid Job manifest: {0}")]
    Manifest(String),
}
