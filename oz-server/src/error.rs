//! Errors: [`ApiError`] becomes an RFC 7807 problem document with Oz's `error` code; [`ServerError`]
//! is what starting the server can fail with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oz_core::failure::ErrorCode;
use oz_core::wire::problem::{PROBLEM_CONTENT_TYPE, Problem};

use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Oz's error code.
    pub code: ErrorCode,
    /// What went wrong, for the caller (never a secret, never an internal detail).
    pub detail: String,
    /// Overrides the default (429 and 5xx are retryable).
    pub retryable: Option<bool>,
    /// Seconds to send as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retryable: None, retry_after: None }
    }
    /// 400 `invalid_request`.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, detail)
    }
    /// 404 `resource_not_found`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::ResourceNotFound, what)
    }
    /// 401 `authentication_required`.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::AuthenticationRequired, detail).retryable(false)
    }
    /// 403 `not_authorized`: authenticated, but this key's role (or kind) may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::NotAuthorized, detail).retryable(false)
    }
    /// 409 `conflict`.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, detail)
    }
    /// 500 `internal_error`; the cause is logged, not shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let trace = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(trace_id = %trace, "internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            format!("internal error (trace id {trace})"),
        )
    }
    /// Sets `retryable`.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }
    /// The problem document.
    pub fn problem(&self) -> Problem {
        let mut p = Problem::new(self.status.as_u16(), self.code, self.detail.clone());
        if let Some(r) = self.retryable {
            p.retryable = r;
        }
        p
    }
}

/// A request to a WebSocket endpoint that is not a WebSocket upgrade.
impl From<axum::extract::ws::rejection::WebSocketUpgradeRejection> for ApiError {
    fn from(e: axum::extract::ws::rejection::WebSocketUpgradeRejection) -> Self {
        ApiError::new(
            e.status(),
            ErrorCode::InvalidRequest,
            format!("this endpoint takes a WebSocket: {}", e.body_text()),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::StateChanged { expected, actual } => {
                ApiError::conflict(format!("the run changed state meanwhile ({expected} -> {actual}); retry"))
                    .retryable(true)
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// What starting the server can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Binding the listener.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Making a team, user or credential was refused.
    #[error(transparent)]
    Principal(#[from] crate::principals::PrincipalError),
}
