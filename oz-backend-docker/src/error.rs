//! The crate's error type: what can go wrong before any task runs.

/// Why the Docker backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// No engine answered at the address.
    #[error("cannot reach the Docker engine at {addr}: {message} (is dockerd running? is DOCKER_HOST right?)")]
    Unreachable {
        /// Where we looked.
        addr: String,
        /// What the client said.
        message: String,
    },
    /// The engine runs on a platform tasks cannot use.
    #[error("the Docker engine runs {os}/{arch}; this backend needs linux/amd64 or linux/arm64")]
    UnsupportedPlatform {
        /// Its OS.
        os: String,
        /// Its architecture.
        arch: String,
    },
    /// The configuration is unusable.
    #[error("invalid Docker backend configuration: {0}")]
    Config(String),
    /// An engine call failed.
    #[error("Docker engine: {0}")]
    Engine(String),
}

impl From<bollard::errors::Error> for DockerError {
    fn from(e: bollard::errors::Error) -> Self {
        DockerError::Engine(crate::engine::describe(&e))
    }
}
