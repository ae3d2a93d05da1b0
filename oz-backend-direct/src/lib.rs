//! The Direct backend: each task runs as a process group on the host, in its own workspace folder,
//! with a minimal environment. No container runtime needed.
//!
//! What a task gets:
//! - a folder `<workspace_root>/<task_id>` (mode 0700) with its working directory, `HOME`, `TMPDIR`
//!   and its own empty `GIT_CONFIG_GLOBAL`;
//! - only `HOME`, `TMPDIR`, `PATH` and `GIT_CONFIG_GLOBAL`, then the task's own variables, then the
//!   backend's configured ones, then `OZ_RUN_ID`, `OZ_WORKSPACE_ROOT`, `OZ_WORKER_BACKEND`,
//!   `OZ_ENVIRONMENT_FILE`. Nothing else of the worker's environment (its API key included);
//! - its own process group, stopped with SIGTERM then SIGKILL after a grace period; every process
//!   labelled `OZ_RUN_ID=<task_id>` is killed when the task ends, even one that left the group;
//! - `RLIMIT_CORE` 0, `RLIMIT_NOFILE`, and `RLIMIT_AS` when a memory limit is set.
//!
//! Tasks outlive a worker that crashes. Each runs under a `/bin/sh` that records its exit code in the
//! workspace, and the workspace's marker records that shell's pid and start time; a restarted worker's
//! [`Backend::recover`](oz_core::backend::Backend::recover) reattaches to the ones still running
//! (same pid and start time), follows them by polling `/proc`, and reports the recorded exit code.
//! Their output is no longer streamed: it went to pipes of the worker that died.
//!
//! ```no_run
//! use oz_backend_direct::{DirectBackend, DirectConfig};
//! use oz_core::backend::Backend;
//! use oz_core::task::TaskSpec;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = DirectBackend::new(DirectConfig::new("my-worker", "/var/lib/oz/workspaces"))?;
//! let spec = TaskSpec::new("run-1", vec!["/bin/sh".into(), "-c".into(), "echo hello".into()]);
//! let outcome = backend.launch(spec).await?.wait().await;
//! assert!(outcome.succeeded());
//! # Ok(()) }
//! ```

mod backend;
mod config;
pub mod dotenv;
mod error;
pub mod process;
pub mod workspace;

pub use backend::{ADDED_ENV, DirectBackend, NAME};
pub use config::DirectConfig;
pub use error::DirectError;
