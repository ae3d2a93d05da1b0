//! The crate's error type.

use std::path::PathBuf;

/// What the Kubernetes backend can fail with before a task runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// The configuration is unusable.
    #[error("invalid Kubernetes backend configuration: {0}")]
    Config(String),
    /// A configured value failed oz-core's validation.
    #[error("invalid Kubernetes backend configuration: {0}")]
    Invalid(#[source] oz_core::Error),
    /// A manifest could not be built (a bad `pod_template`, ...).
    #[error("invalid Job manifest: {0}")]
    Manifest(String),
    /// A manifest did not convert into its Kubernetes type.
    #[error("invalid Job manifest: {0}")]
    ManifestShape(#[source] serde_json::Error),
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No client could be made (no in-cluster config, no kubeconfig).
    #[error("cannot reach a Kubernetes API server: {0}")]
    Client(#[source] kube::Error),
    /// The preflight Job showed that tasks cannot run; the message names what is missing.
    #[error("preflight failed: {0}")]
    Preflight(String),
}
