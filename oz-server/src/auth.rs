//! Who is calling: an API key (a user's, with a role), a worker credential (the worker WebSocket
//! only), or a run's workload token (its own run only). Every query is then scoped to the caller's
//! team (or run); revocation, expiry and disabled users take effect on the next request, since every
//! request reads its credential from the store. A browser signed in to the dashboard sends a cookie
//! instead of a key ([`crate::sign_in`]); it acts as the key it was made from.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jiff::Timestamp;

use oz_core::wire::admin::{KeyKind, Role};

use crate::error::ApiError;
use crate::secrets;
use crate::state::AppState;
use crate::store::KeyWithUser;

/// A caller authenticated with an API key (not a worker credential), with the role it acts with:
/// the narrower of its key's ceiling and its user's role. Any role may read; handlers that change
/// something take [`Member`] or [`Admin`] instead, so the check cannot be forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's team: every query is scoped to it.
    pub team_id: String,
    /// The user the key acts as (`None` for keys made before users had roles).
    pub user_id: Option<String>,
    /// The key's public id.
    pub key_id: String,
    /// What it may do.
    pub role: Role,
    /// Whether it may create teams.
    pub server_admin: bool,
    /// The dashboard sign-in it came by, when a browser's cookie stood in for the key.
    pub sign_in_id: Option<String>,
}

impl Caller {
    /// `Forbidden` unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs the {role} role; this key acts as {}", self.role)))
        }
    }
}

/// A caller with at least the member role (create, steer and cancel runs; environments; schedules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member(pub Caller);

/// A caller with the admin role (users, credentials, secrets, integrations, workers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin(pub Caller);

/// A worker credential, for the worker WebSocket: the worker ids it may connect as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCredential {
    /// Its team.
    pub team_id: String,
    /// Its public id.
    pub key_id: String,
    /// The worker ids it was issued for.
    pub worker_ids: Vec<String>,
}

/// A runner authenticated with its run's workload token: good for that run only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunToken {
    /// The token's public id.
    pub token_id: String,
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

/// A credential that authenticates: known, its secret right, not revoked, not expired, its user
/// (if any) not disabled.
pub(crate) async fn credential_from(state: &AppState, token: &str) -> Result<KeyWithUser, ApiError> {
    let invalid = || ApiError::unauthenticated("the API key is not valid");
    let (id, secret) = secrets::parse(secrets::API_KEY_PREFIX, token).ok_or_else(invalid)?;
    let found = state.store.api_key(id).await?.ok_or_else(invalid)?;
    if !secrets::verify(secret, &found.key.secret_hash) {
        return Err(invalid());
    }
    if let Some(why) = lapsed(&found, Timestamp::now()) {
        return Err(ApiError::unauthenticated(why));
    }
    Ok(found)
}

/// Why a stored credential no longer authenticates at `now` (revoked, expired, its user disabled or
/// gone), or `None`. Also what the dispatcher checks open worker connections against.
pub fn lapsed(found: &KeyWithUser, now: Timestamp) -> Option<&'static str> {
    if found.key.revoked_at.is_some() {
        Some("the API key was revoked")
    } else if found.key.expires_at.is_some_and(|at| now >= at) {
        Some("the API key has expired")
    } else if found.user.as_ref().is_some_and(|u| u.disabled) {
        Some("the API key's user is disabled")
    } else if found.key.user_id.is_some() && found.user.is_none() {
        Some("the API key is not valid")
    } else {
        None
    }
}

/// The caller an API key's text acts as.
pub(crate) async fn caller_from(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    caller_of(credential_from(state, token).await?)
}

/// The caller a stored API key acts as now (what a sign-in acts as).
pub(crate) async fn caller_of_key(state: &AppState, key_id: &str) -> Result<Caller, ApiError> {
    let found =
        state.store.api_key(key_id).await?.ok_or_else(|| ApiError::unauthenticated("the API key is not valid"))?;
    if let Some(why) = lapsed(&found, Timestamp::now()) {
        return Err(ApiError::unauthenticated(why));
    }
    caller_of(found)
}

pub(crate) fn caller_of(KeyWithUser { key, user }: KeyWithUser) -> Result<Caller, ApiError> {
    if key.kind == KeyKind::Worker {
        return Err(ApiError::forbidden("a worker credential only opens the worker WebSocket; use an API key"));
    }
    // Keys made before users had roles act as their team's admin.
    let user_role = user.as_ref().map_or(Role::Admin, |u| u.role);
    let role = key.role.map_or(user_role, |ceiling| ceiling.min(user_role));
    Ok(Caller {
        team_id: key.team_id,
        user_id: key.user_id,
        key_id: key.id,
        role,
        server_admin: key.server_admin,
        sign_in_id: None,
    })
}

/// The credential a request was let in with, read again as on a new request (its role may have
/// been lowered since): what open streams and sockets check every `ServerConfig::credential_recheck`.
pub(crate) async fn still_valid(state: &AppState, principal: &Principal) -> Result<Principal, ApiError> {
    match principal {
        Principal::Key(caller) => {
            if let Some(id) = &caller.sign_in_id {
                crate::sign_in::still_signed_in(state, id).await?;
            }
            let fresh = caller_of_key(state, &caller.key_id).await?;
            Ok(Principal::Key(Caller { sign_in_id: caller.sign_in_id.clone(), ..fresh }))
        }
        Principal::Run(token) => {
            let record = state
                .store
                .token(&token.token_id)
                .await?
                .ok_or_else(|| ApiError::unauthenticated("the workload token is not valid"))?;
            token_usable(&record)?;
            Ok(principal.clone())
        }
    }
}

fn token_usable(record: &crate::store::WorkloadTokenRecord) -> Result<(), ApiError> {
    if record.revoked {
        return Err(ApiError::unauthenticated("the workload token was revoked: its run has ended"));
    }
    if Timestamp::now() >= record.expires_at {
        return Err(ApiError::unauthenticated("the workload token has expired"));
    }
    Ok(())
}

async fn run_token_from(state: &AppState, token: &str) -> Result<RunToken, ApiError> {
    let invalid = || ApiError::unauthenticated("the workload token is not valid");
    let (id, secret) = secrets::parse(secrets::WORKLOAD_TOKEN_PREFIX, token).ok_or_else(invalid)?;
    let record = state.store.token(id).await?.ok_or_else(invalid)?;
    if !secrets::verify(secret, &record.secret_hash) {
        return Err(invalid());
    }
    token_usable(&record)?;
    Ok(RunToken { token_id: record.id, run_id: record.run_id, team_id: record.team_id })
}

/// Whether a request sends no bearer credential (then a dashboard sign-in cookie may stand in; a
/// proxy's `Authorization: Basic` does not turn the cookie off).
fn no_authorization(parts: &Parts) -> bool {
    !parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if no_authorization(parts)
            && let Some(signed_in) = crate::sign_in::caller_of_request(state, parts).await
        {
            return signed_in;
        }
        let token = bearer(parts)?;
        if token.starts_with(secrets::WORKLOAD_TOKEN_PREFIX) {
            return Err(ApiError::unauthenticated("a workload token cannot be used here; use an API key"));
        }
        caller_from(state, token).await
    }
}

impl FromRequestParts<AppState> for Member {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(Role::Member)?;
        Ok(Member(caller))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(Role::Admin)?;
        Ok(Admin(caller))
    }
}

impl FromRequestParts<AppState> for WorkerCredential {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let KeyWithUser { key, .. } = credential_from(state, token).await?;
        if key.kind != KeyKind::Worker {
            return Err(ApiError::forbidden(
                "the worker WebSocket needs a worker credential (oz-server admin key create --worker-id ...), not an API key",
            ));
        }
        Ok(WorkerCredential { team_id: key.team_id, key_id: key.id, worker_ids: key.worker_ids })
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
        if no_authorization(parts)
            && let Some(signed_in) = crate::sign_in::caller_of_request(state, parts).await
        {
            return signed_in.map(Principal::Key);
        }
        let token = bearer(parts)?;
        if token.starts_with(secrets::WORKLOAD_TOKEN_PREFIX) {
            run_token_from(state, token).await.map(Principal::Run)
        } else {
            caller_from(state, token).await.map(Principal::Key)
        }
    }
}
