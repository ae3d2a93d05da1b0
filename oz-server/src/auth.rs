//! Who is calling: an API key (a team member) or a run's workload token. Every query is then scoped
//! to the caller's team (or run).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jiff::Timestamp;

use crate::error::ApiError;
use crate::secrets;
use crate::state::AppState;

/// A caller authenticated with an API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's team: every query is scoped to it.
    pub team_id: String,
    /// The user the key acts as.
    pub user_id: Option<String>,
}

/// A runner authenticated with its run's workload token: good for that run only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunToken {
    /// The one run it may touch.
    pub run_id: String,
    /// The run's team.
    pub team_id: String,
}

/// Either kind of caller, for read endpoints a runner also needs (its run, its environments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API key.
    Key(Caller),
    /// A workload token.
    Run(RunToken),
}

impl Principal {
    /// The team.
    pub fn team_id(&self) -> &str {
        match self {
            Principal::Key(c) => &c.team_id,
            Principal::Run(r) => &r.team_id,
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <API key>"))?;
    let text = value.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
    text.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be `Bearer <API key>`"))
}

async fn caller_from(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let invalid = || ApiError::unauthenticated("the API key is not valid");
    let (id, secret) = secrets::parse(secrets::API_KEY_PREFIX, token).ok_or_else(invalid)?;
    let key = state.store.api_key(id).await?.ok_or_else(invalid)?;
    if key.revoked || !secrets::verify(secret, &key.secret_hash) {
        return Err(invalid());
    }
    Ok(Caller { team_id: key.team_id, user_id: key.user_id })
}

async fn run_token_from(state: &AppState, token: &str) -> Result<RunToken, ApiError> {
    let invalid = || ApiError::unauthenticated("the workload token is not valid");
    let (id, secret) = secrets::parse(secrets::WORKLOAD_TOKEN_PREFIX, token).ok_or_else(invalid)?;
    let record = state.store.token(id).await?.ok_or_else(invalid)?;
    if !secrets::verify(secret, &record.secret_hash) {
        return Err(invalid());
    }
    if record.revoked {
        return Err(ApiError::unauthenticated("the workload token was revoked: its run has ended"));
    }
    if Timestamp::now() >= record.expires_at {
        return Err(ApiError::unauthenticated("the workload token has expired"));
    }
    Ok(RunToken { run_id: record.run_id, team_id: record.team_id })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with(secrets::WORKLOAD_TOKEN_PREFIX) {
            return Err(ApiError::unauthenticated("a workload token cannot be used here; use an API key"));
        }
        caller_from(state, token).await
    }
}

impl FromRequestParts<AppState> for RunToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        run_token_from(state, bearer(parts)?).await
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with(secrets::WORKLOAD_TOKEN_PREFIX) {
            run_token_from(state, token).await.map(Principal::Run)
        } else {
            caller_from(state, token).await.map(Principal::Key)
        }
    }
}
