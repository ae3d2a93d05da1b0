//! The Kubernetes backend: one Job per task execution.
//!
//! **Status: in progress.** Done: the configuration ([`KubernetesConfig`], Oz's `backend.kubernetes`
//! keys) and the Job manifest ([`manifest::job`]) with its request-shape tests. Not yet: the client
//! (launch, watches, logs, cancel, reattach), the preflight Job, the fake API server and the Helm
//! chart. The crate does not implement `Backend` yet, so no caller can mistake it for a working one.
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

pub use backend::KubernetesBackend;
pub use config::KubernetesConfig;
pub use error::KubernetesError;
