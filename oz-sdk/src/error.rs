//! The SDK's error type. No variant's message or `Debug` holds the credential: reqwest errors are
//! kept without their URL, and the credential only ever travels in a header.

use oz_core::wire::problem::Problem;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a problem document (or an error status, made into one).
    #[error("{0}")]
    Api(Box<Problem>),
    /// The request did not get an answer (connection, timeout, a dropped connection).
    #[error("could not reach the API: {0}")]
    Transport(#[source] reqwest::Error),
    /// The answer could not be read.
    #[error("unexpected response: {source}: {excerpt}")]
    Decode {
        /// Why it could not be read.
        #[source]
        source: serde_json::Error,
        /// The start of the body (lossy UTF-8).
        excerpt: String,
    },
    /// A run's event stream dropped again and again before the run ended.
    #[error("the event stream kept dropping ({drops} times in a row)")]
    EventsDropped {
        /// How many times in a row.
        drops: usize,
        /// The last drop's cause, when it was not a clean end of the stream.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A live session's WebSocket could not be opened, or broke.
    #[error("the live session's connection failed: {0}")]
    Session(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// The client is misconfigured (no API key, bad base URL).
    #[error("client configuration: {0}")]
    Config(String),
    /// The HTTP client could not be set up (for one, no CA certificates on the system to verify
    /// TLS with).
    #[error("the HTTP client could not be set up: {0}")]
    Setup(#[source] reqwest::Error),
}

/// How much of an unreadable body an [`Error::Decode`] keeps.
const EXCERPT_BYTES: usize = 200;

impl Error {
    pub(crate) fn decode(source: serde_json::Error, body: &[u8]) -> Self {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]).into_owned();
        Error::Decode { source, excerpt }
    }

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
    /// Whether retrying may help (a retryable problem, a transport error, a dropping event stream).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(p) => p.retryable,
            Error::Transport(_) | Error::EventsDropped { .. } => true,
            _ => false,
        }
    }
}

/// `Result<T, oz_sdk::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
