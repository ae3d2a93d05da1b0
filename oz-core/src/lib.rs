//! The domain of the oz platform, with no I/O: runs and their state machine, failure reasons,
//! environments and image resolution, the sidecar layout, credentials and secret redaction, the
//! [`Backend`](backend::Backend) trait with the [`TaskSpec`](task::TaskSpec) it takes, and the wire
//! types of the REST API and the worker protocol.
//!
//! ```
//! use oz_core::image::resolve_image;
//! use oz_core::run::RunState;
//! use oz_core::task::TaskSpec;
//!
//! // Every state change goes through one function that refuses illegal moves.
//! assert_eq!(RunState::Queued.transition(RunState::Claimed).unwrap(), RunState::Claimed);
//! assert!(RunState::Succeeded.transition(RunState::InProgress).is_err());
//!
//! // The image a task runs in: assignment > backend default > ubuntu:22.04.
//! assert_eq!(resolve_image(None, None).unwrap().to_string(), "ubuntu:22.04");
//!
//! // A task for any backend.
//! let spec = TaskSpec::new("run-1", vec!["/bin/echo".into(), "hi".into()]).env("GREETING", "hello");
//! spec.validate().unwrap();
//! ```

pub mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod credentials;
pub mod egress;
pub mod environment;
pub mod error;
pub mod failure;
pub mod image;
pub mod redact;
pub mod retry;
pub mod run;
pub mod runner;
pub mod sharing;
pub mod sidecar;
pub mod task;
pub mod validate;
pub mod warm;
pub mod wire;

pub use error::Error;
