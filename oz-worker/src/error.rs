//! The worker's error type.

/// What the worker can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// Connecting to the control plane failed.
    #[error("could not connect to the control plane: {0}")]
    Connect(String),
}

impl From<oz_core::Error> for WorkerError {
    fn from(e: oz_core::Error) -> Self {
        WorkerError::Config(e.to_string())
    }
}
