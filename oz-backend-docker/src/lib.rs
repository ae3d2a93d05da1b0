//! The Docker backend: each task runs in a hardened container through the Docker Engine API.
//!
//! - The engine: `DOCKER_HOST` or the local socket; the API version is negotiated (engines speaking
//!   1.41 work); engines that are not linux/amd64 or linux/arm64 are refused.
//! - Images: pull policy always / if-not-present (default) / never, credentials from the Docker config
//!   file, pull progress as task events.
//! - The sidecar (the static `oz`, an entrypoint, a CA bundle) is materialized once per content digest
//!   into a named volume, by uploading a tar into a created, never started container of the task's own
//!   image, and mounted read-only at `/agent`.
//! - Containers: an init as PID 1, all capabilities dropped, no-new-privileges, memory (swap equal),
//!   CPU and pids limits, labels (worker, task, execution) on everything; output streamed live.
//! - Warm sandboxes: containers made as a task's, running `oz agent warm`, handed their task on
//!   their stdin (see the `warm` module).
//! - Recovery: a restarted worker finds its containers by label and follows them to their end; warm
//!   containers that never got a task, and sidecar probes a killed worker left, are removed.
//!
//! ```no_run
//! use oz_backend_docker::{DockerBackend, DockerConfig};
//! use oz_core::backend::Backend;
//! use oz_core::task::TaskSpec;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = DockerBackend::connect(DockerConfig::new("my-worker")).await?;
//! let mut spec = TaskSpec::new("task-1", vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]);
//! spec.sandbox.image = Some(oz_core::image::ImageRef::parse("busybox:latest")?);
//! let outcome = backend.launch(spec).await?.wait().await;
//! assert!(outcome.succeeded());
//! # Ok(()) }
//! ```

mod backend;
pub mod config;
pub mod container;
pub mod engine;
mod error;
pub mod images;
pub mod network;
pub mod sidecar;
pub mod task;
mod warm;

pub use backend::DockerBackend;
pub use config::{DefaultNetwork, DockerConfig, PullPolicy};
pub use error::DockerError;
