//! A fake of GitLab's project access tokens API (v4), checking each request as GitLab documents it
//! and answering as GitLab does:
//!
//! - every request: `PRIVATE-TOKEN` is the configured token, else 401;
//! - the project id is a number or a URL-encoded path (`acme%2Fapi`; an unencoded slash would make
//!   it another route, answered 404); an unknown project is 404;
//! - `POST /api/v4/projects/:id/access_tokens`: a JSON body with `name`, `scopes` (known scopes
//!   only), `access_level` (10, 15, 20, 30, 40 or 50; 40 when absent) and `expires_at` (required
//!   since GitLab 16, a date after today and within a year); 201 with the token's `id`, a `glpat-`
//!   `token` and the rest of GitLab's fields; 400 otherwise;
//! - `DELETE /api/v4/projects/:id/access_tokens/:token_id`: 204, or 404 for an unknown token.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::support::{Recorded, percent_decode, serve};

const SCOPES: &[&str] = &[
    "api",
    "read_api",
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
    "create_runner",
    "manage_runner",
    "ai_features",
    "k8s_proxy",
    "self_rotate",
];

/// A token the fake created.
#[derive(Clone, Debug)]
pub struct ProjectToken {
    pub id: u64,
    pub project: String,
    pub token: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub access_level: u64,
    pub expires_at: Date,
    pub revoked: bool,
}

struct Inner {
    admin_token: String,
    projects: Vec<(u64, String)>,
    tokens: Vec<ProjectToken>,
    requests: Vec<Recorded>,
    report_scopes: Option<Vec<String>>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake.
pub struct FakeGitLab {
    pub url: String,
    state: Shared,
}

impl FakeGitLab {
    /// A fake GitLab that takes `admin_token` and has `projects` (`(id, path)`).
    pub async fn start(admin_token: &str, projects: &[(u64, &str)]) -> Self {
        let state = Arc::new(Mutex::new(Inner {
            admin_token: admin_token.into(),
            projects: projects.iter().map(|(id, path)| (*id, path.to_string())).collect(),
            tokens: Vec::new(),
            requests: Vec::new(),
            report_scopes: None,
        }));
        let url = serve(Router::new().fallback(handle).with_state(state.clone())).await;
        Self { url, state }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn tokens(&self) -> Vec<ProjectToken> {
        self.state.lock().unwrap().tokens.clone()
    }

    /// From now on, created tokens are reported with these scopes (a misbehaving GitLab).
    pub fn report_scopes(&self, scopes: &[&str]) {
        self.state.lock().unwrap().report_scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
    }
}

fn message(status: StatusCode, message: Value) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

fn bad_request(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": error }))).into_response()
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    state.requests.push(Recorded::new(&method, &uri, &headers, &body));
    if headers.get("private-token").and_then(|v| v.to_str().ok()) != Some(state.admin_token.as_str()) {
        return message(StatusCode::UNAUTHORIZED, json!("401 Unauthorized"));
    }
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let (project, rest) = match segments.as_slice() {
        ["api", "v4", "projects", id, rest @ ..] => (*id, rest),
        _ => return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "404 Not Found"}))).into_response(),
    };
    let Some(project) = state.project(project) else {
        return message(StatusCode::NOT_FOUND, json!("404 Project Not Found"));
    };
    match (&method, rest) {
        (&Method::POST, ["access_tokens"]) => state.create(&headers, project, &body),
        (&Method::DELETE, ["access_tokens", id]) => state.revoke(&project, id),
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "404 Not Found"}))).into_response(),
    }
}

impl Inner {
    /// A project by id or by URL-encoded path.
    fn project(&self, raw: &str) -> Option<String> {
        let by_id = raw.parse::<u64>().ok().and_then(|id| self.projects.iter().find(|(p, _)| *p == id));
        let decoded = percent_decode(raw)?;
        by_id.or_else(|| self.projects.iter().find(|(_, path)| *path == decoded)).map(|(_, path)| path.clone())
    }

    fn create(&mut self, headers: &HeaderMap, project: String, body: &Bytes) -> Response {
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            return bad_request("fake: the body must be JSON");
        }
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return bad_request("fake: the body must be a JSON object");
        };
        let Some(name) = fields.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
            return bad_request("name is missing");
        };
        let scopes: Option<Vec<String>> = fields
            .get("scopes")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .and_then(|s| s.iter().map(|s| s.as_str().filter(|s| SCOPES.contains(s)).map(str::to_owned)).collect());
        let Some(scopes) = scopes else {
            return bad_request("scopes does not have a valid value");
        };
        let access_level = match fields.get("access_level") {
            None => 40,
            Some(level) => match level.as_u64().filter(|l| [10, 15, 20, 30, 40, 50].contains(l)) {
                Some(level) => level,
                None => return bad_request("access_level does not have a valid value"),
            },
        };
        let Some(expires_at) = fields.get("expires_at") else {
            return bad_request("expires_at is missing");
        };
        let Some(expires_at) = expires_at.as_str().and_then(|d| d.parse::<Date>().ok()) else {
            return bad_request("expires_at is invalid");
        };
        let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
        if expires_at <= today {
            return message(StatusCode::BAD_REQUEST, json!({"expires_at": ["must be in the future"]}));
        }
        if expires_at > today.checked_add(jiff::Span::new().days(365)).unwrap() {
            return message(
                StatusCode::BAD_REQUEST,
                json!({"expires_at": ["must be before the maximum allowable lifetime"]}),
            );
        }
        let id = 100 + self.tokens.len() as u64;
        let token = ProjectToken {
            id,
            project,
            token: format!("glpat-{}", uuid::Uuid::new_v4().simple()),
            name: name.to_owned(),
            scopes: self.report_scopes.clone().unwrap_or(scopes),
            access_level,
            expires_at,
            revoked: false,
        };
        let answer = json!({
            "id": token.id,
            "name": token.name,
            "revoked": false,
            "created_at": Timestamp::now().to_string(),
            "description": null,
            "scopes": token.scopes,
            "user_id": 9000 + id,
            "last_used_at": null,
            "active": true,
            "expires_at": token.expires_at.to_string(),
            "access_level": token.access_level,
            "token": token.token,
        });
        self.tokens.push(token);
        (StatusCode::CREATED, axum::Json(answer)).into_response()
    }

    fn revoke(&mut self, project: &str, id: &str) -> Response {
        let id = id.parse::<u64>().ok();
        match self.tokens.iter_mut().find(|t| Some(t.id) == id && t.project == project && !t.revoked) {
            Some(token) => {
                token.revoked = true;
                StatusCode::NO_CONTENT.into_response()
            }
            None => message(StatusCode::NOT_FOUND, json!("404 Not Found")),
        }
    }
}
