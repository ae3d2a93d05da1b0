//! The crate's error type: what can go wrong before any task runs. Task failures are reported as
//! `oz_core::backend::BackendError` with an Oz failure reason instead.

use std::path::PathBuf;

use crate::engine::describe;

/// Why the Docker backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// No engine answered at the address.
    #[error("cannot reach the Docker engine at {addr}: {} (is dockerd running? is DOCKER_HOST right?)", describe(.source))]
    Unreachable {
        /// Where we looked.
        addr: String,
        /// What the client said.
        #[source]
        source: bollard::errors::Error,
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
    /// A configured value failed oz-core's validation.
    #[error("invalid Docker backend configuration: {0}")]
    Invalid(#[source] oz_core::Error),
    /// A file the configuration names could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An engine call failed.
    #[error("Docker engine: {}", describe(.0))]
    Engine(#[from] bollard::errors::Error),
}

impl DockerError {
    /// A validation error of oz-core.
    pub fn invalid(e: oz_core::Error) -> Self {
        DockerError::Invalid(e)
    }
}
