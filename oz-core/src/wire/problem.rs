//! RFC 7807 problem documents, with Oz's `error` code and `retryable`.

use serde::{Deserialize, Serialize};

use crate::failure::ErrorCode;

/// The content type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An API error, as `application/problem+json`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    /// A short summary.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this case.
    #[serde(default)]
    pub detail: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Oz's error code.
    pub error: ErrorCode,
    /// Whether retrying the same request may succeed.
    #[serde(default)]
    pub retryable: bool,
    /// A trace id for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Where to authenticate, for `external_authentication_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    /// The provider to authenticate with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    /// A problem with the conventional title for `status`.
    pub fn new(status: u16, error: ErrorCode, detail: impl Into<String>) -> Self {
        let title = match status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            422 => "Unprocessable Entity",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ if status >= 500 => "Internal Server Error",
            _ => "Error",
        };
        Self {
            kind: format!("https://docs.oz.dev/errors/{}", error.as_str()),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            instance: None,
            error,
            retryable: status == 429 || status >= 500,
            trace_id: None,
            auth_url: None,
            provider: None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {}): {}", self.title, self.error, self.status, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_problem_shape() {
        let mut p = Problem::new(404, ErrorCode::ResourceNotFound, "no run r1");
        p.instance = Some("/api/v1/agent/runs/r1".into());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "type": "https://docs.oz.dev/errors/resource_not_found", "title": "Not Found", "status": 404,
                "detail": "no run r1", "instance": "/api/v1/agent/runs/r1", "error": "resource_not_found",
                "retryable": false
            })
        );
        let minimal: Problem =
            serde_json::from_str(r#"{"status":503,"error":"resource_unavailable","retryable":true,"new":1}"#).unwrap();
        assert_eq!(minimal.kind, "about:blank");
        assert!(minimal.retryable);
        assert!(Problem::new(500, ErrorCode::InternalError, "x").retryable);
    }
}
