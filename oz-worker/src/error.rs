//! The worker's error type.

/// What the worker can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// A configured value failed oz-core's validation.
    #[error("invalid worker configuration: {0}")]
    Invalid(#[from] oz_core::Error),
    /// The backend could not be made.
    #[error("{0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The YAML file does not parse or names unknown keys.
    #[error("invalid worker configuration: the config file is invalid: {0}")]
    ConfigFile(#[source] Box<serde_saphyr::Error>),
    /// The WebSocket URL or its request could not be built.
    #[error("the worker WebSocket request is invalid: {0}")]
    Request(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// The API key cannot be sent as a header value (its text is never shown).
    #[error("the API key is not a valid header value")]
    ApiKeyHeader,
    /// Connecting to the control plane failed.
    #[error("could not connect to the control plane: {0}")]
    Connect(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// Connecting to the control plane took too long.
    #[error("could not connect to the control plane: no answer within {0:?}")]
    ConnectTimeout(std::time::Duration),
}

impl WorkerError {
    /// A backend's own error, kept as the cause.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkerError::Backend(Box::new(e))
    }
}
