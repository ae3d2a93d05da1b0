//! The error type of oz-core: invalid input and illegal state changes.

use crate::run::RunState;

/// Everything oz-core can refuse. Each message names the offending field and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value failed validation.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// What was being validated, for example `docker_image` or `github_repos[1].repo`.
        field: String,
        /// Why it was refused, in words a person can act on.
        reason: String,
    },
    /// A run state change the state machine does not allow.
    #[error("a run cannot move from {from} to {to}")]
    IllegalTransition {
        /// The current state.
        from: RunState,
        /// The state that was asked for.
        to: RunState,
    },
}

impl Error {
    /// Builds an [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The same error with its field name prefixed by `parent` (`repos[2]` + `owner` = `repos[2].owner`).
    pub fn within(self, parent: &str) -> Self {
        match self {
            Error::Invalid { field, reason } => Error::Invalid { field: format!("{parent}.{field}"), reason },
            other => other,
        }
    }
}

/// An error and those of its causes its message does not already show, `outer: inner: innermost`
/// (a reqwest error says "error sending request" and only its causes say "Connection refused"): the
/// one-line form of an error for people (the CLI, the runner's messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
