//! The Kubernetes backend: one Job per task execution.
//!
//! [`KubernetesBackend`] creates the Job ([`manifest::job`]), follows its Pod and Job with watchers,
//! streams the task container's log live, maps what they show to Oz's failure reasons
//! ([`status`]), cancels by deleting the Job, and reattaches to this worker's Jobs after a restart.
//! [`KubernetesBackend::preflight`] checks permissions and the init-container pattern at start-up.
//! With [`EgressPolicy`] each task also gets an egress NetworkPolicy (IP-based). See
//! `docs/kubernetes-backend.md`.
//!
//! ```
//! use oz_backend_k8s::{KubernetesConfig, manifest};
//! use oz_core::task::TaskSpec;
//!
//! let config = KubernetesConfig::new("my-worker", "ghcr.io/acme/oz-sidecar:1");
//! let spec = TaskSpec::new("run-1", vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into()]);
//! let job = manifest::job(&spec, &config).unwrap();
//! assert_eq!(job.metadata.name.as_deref(), Some("oz-run-1"));
//! ```

mod backend;
pub mod config;
mod error;
pub mod manifest;
pub mod status;
mod warm;

pub use backend::KubernetesBackend;
pub use config::{EgressPolicy, KubernetesConfig};
pub use error::KubernetesError;
