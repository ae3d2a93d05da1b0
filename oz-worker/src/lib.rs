//! The worker daemon's core: connects outbound to the control plane over a WebSocket, speaks the Oz
//! worker protocol, runs each assignment on a [`Backend`](oz_core::backend::Backend), and reports the
//! outcome.
//!
//! ```no_run
//! use std::sync::Arc;
//! use oz_core::credentials::ApiKey;
//! use oz_worker::{CommandOptions, Worker, WorkerConfig};
//!
//! # async fn demo(backend: Arc<dyn oz_core::backend::Backend>) -> Result<(), oz_worker::WorkerError> {
//! let command = CommandOptions { entrypoint: "oz".into(), server_root_url: "http://127.0.0.1:8080".into(), ..Default::default() };
//! let config = WorkerConfig::new("my-worker", "ws://127.0.0.1:8080/api/v1/selfhosted/worker/ws", ApiKey::new("oz_..."), command);
//! let worker = Worker::new(config, backend)?;
//! let handle = worker.handle(); // handle.shutdown() on SIGTERM
//! worker.run().await
//! # }
//! ```
//!
//! Metrics: [`Worker::metrics`] and [`metrics::serve`] (the program's `--metrics-listen`).

pub mod backends;
pub mod config;
mod error;
pub mod git;
pub mod metrics;
pub mod mirror;
pub mod outbox;
pub mod pool;
mod worker;

pub use error::WorkerError;
pub use oz_core::runner::CommandOptions;
pub use worker::{Worker, WorkerConfig, WorkerHandle, outcome_message};
