//! The Direct backend's error type.

use oz_core::backend::BackendError;
use oz_core::failure::FailureReason;

/// What can go wrong in the Direct backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// The configuration is unusable.
    #[error("invalid Direct backend configuration: {0}")]
    Config(String),
    /// The task spec is invalid.
    #[error(transparent)]
    Spec(#[from] oz_core::Error),
    /// The per-task workspace could not be made.
    #[error("could not prepare the workspace {path}: {source}")]
    Workspace {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The task's command could not be started.
    #[error("could not start {command:?}: {source}")]
    Spawn {
        /// `argv[0]`.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The setup command failed or wrote an unreadable environment file.
    #[error("setup_command failed: {0}")]
    Setup(String),
    /// Removing the workspace failed.
    #[error("could not remove the workspace {path}: {source}")]
    Cleanup {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl DirectError {
    /// The Oz failure reason this error is reported as.
    pub fn reason(&self) -> FailureReason {
        match self {
            DirectError::Config(_) | DirectError::Workspace { .. } => FailureReason::WorkspaceSetup,
            DirectError::Spec(_) => FailureReason::AgentInvocation,
            DirectError::Spawn { .. } => FailureReason::AgentInvocation,
            DirectError::Setup(_) => FailureReason::SetupCommand,
            DirectError::Cleanup { .. } => FailureReason::Cleanup,
        }
    }
}

impl From<DirectError> for BackendError {
    fn from(e: DirectError) -> Self {
        BackendError::new(e.reason(), e.to_string())
    }
}
