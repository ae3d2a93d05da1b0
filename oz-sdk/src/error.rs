//! The SDK's error type.

use oz_core::wire::problem::Problem;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a problem document.
    #[error("{0}")]
    Api(Box<Problem>),
    /// The request did not get an answer (connection, timeout).
    #[error("could not reach the API: {0}")]
    Transport(String),
    /// The answer could not be read.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The client is misconfigured (no API key, bad base URL).
    #[error("client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The problem document, for API errors.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(p) => Some(p),
            _ => None,
        }
    }
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }
    /// Whether retrying may help (a retryable problem, or a transport error).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(p) => p.retryable,
            Error::Transport(_) => true,
            _ => false,
        }
    }
}

/// `Result<T, oz_sdk::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
