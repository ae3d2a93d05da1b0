//! `/admin/...` (our extension; the admin role): the team's users and service accounts, and its
//! credentials (API keys and worker credentials), plus `POST /admin/teams` for a server admin's key.
//! The operations are `crate::principals`', shared with `oz-server admin`.

use axum::Json;
use axum::extract::State;

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::principals;
use crate::state::AppState;

/// `GET /admin/users`.
#[utoipa::path(get, path = "/admin/users", tag = "admin", responses((status = 200, body = UserList), Unauthorized, Forbidden))]
pub async fn users(State(state): State<AppState>, Admin(caller): Admin) -> Result<Json<UserList>, ApiError> {
    let users = state.store.users(&caller.team_id).await?;
    Ok(Json(UserList { users: users.iter().map(principals::user_item).collect() }))
}

/// `POST /admin/users`.
#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = NewUser, responses((status = 200, body = UserItem), BadRequest, Unauthorized, Forbidden))]
pub async fn create_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Json<UserItem>, ApiError> {
    Ok(Json(principals::create_user(state.store.as_ref(), &caller.team_id, &new).await?))
}

/// `PUT /admin/users/{id}`: a new role, or disabled (its keys are refused from the next request on).
#[utoipa::path(put, path = "/admin/users/{id}", tag = "admin", params(("id" = String, Path)), request_body = UserUpdate, responses((status = 200, body = UserItem), BadRequest, Unauthorized, Forbidden, NotFound))]
pub async fn update_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<UserUpdate>,
) -> Result<Json<UserItem>, ApiError> {
    if caller.user_id.as_deref() == Some(id.as_str()) && update.role.is_some_and(|r| r < caller.role) {
        return Err(ApiError::invalid("an admin cannot lower their own role; ask another admin"));
    }
    Ok(Json(principals::update_user(state.store.as_ref(), &caller.team_id, &id, &update).await?))
}

/// `GET /admin/keys`: every credential of the team, without secrets.
#[utoipa::path(get, path = "/admin/keys", tag = "admin", responses((status = 200, body = KeyList), Unauthorized, Forbidden))]
pub async fn keys(State(state): State<AppState>, Admin(caller): Admin) -> Result<Json<KeyList>, ApiError> {
    let keys = state.store.api_keys(&caller.team_id).await?;
    Ok(Json(KeyList { keys: keys.iter().map(principals::key_item).collect() }))
}

/// `POST /admin/keys`: an API key (for a user, at most a role, with an expiry) or a worker credential
/// (for worker ids); the answer carries the secret, once.
#[utoipa::path(post, path = "/admin/keys", tag = "admin", request_body = NewKey, responses((status = 200, body = KeyCreated), BadRequest, Unauthorized, Forbidden))]
pub async fn create_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<Json<KeyCreated>, ApiError> {
    let created =
        principals::create_key(state.store.as_ref(), &caller.team_id, caller.user_id.as_deref(), &new).await?;
    Ok(Json(created))
}

/// `POST /admin/keys/{id}/rotate`: a new secret for the same credential's rights; the old one is
/// refused from the next request on.
#[utoipa::path(post, path = "/admin/keys/{id}/rotate", tag = "admin", params(("id" = String, Path)), responses((status = 200, body = KeyCreated), BadRequest, Unauthorized, Forbidden, NotFound))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyCreated>, ApiError> {
    let rotated = principals::rotate_key(state.store.as_ref(), &caller.team_id, &id).await?;
    state.dispatcher.disconnect_credential(&caller.team_id, &id);
    Ok(Json(rotated))
}

/// `DELETE /admin/keys/{id}`: revokes it (refused from the next request on; a worker connected with
/// it is disconnected).
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin", params(("id" = String, Path)), responses((status = 200, body = KeyItem), Unauthorized, Forbidden, NotFound))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyItem>, ApiError> {
    let revoked = principals::revoke_key(state.store.as_ref(), &caller.team_id, &id).await?;
    state.dispatcher.disconnect_credential(&caller.team_id, &id);
    Ok(Json(revoked))
}

/// `POST /admin/teams`: a new team with its first admin and that admin's key (a server admin's key
/// only: the key of the first team a server makes).
#[utoipa::path(post, path = "/admin/teams", tag = "admin", request_body = NewTeam, responses((status = 200, body = TeamCreated), BadRequest, Unauthorized, Forbidden))]
pub async fn create_team(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(new): ApiJson<NewTeam>,
) -> Result<Json<TeamCreated>, ApiError> {
    if !caller.server_admin {
        return Err(ApiError::forbidden("creating teams needs a server admin's key"));
    }
    Ok(Json(principals::create_team(state.store.as_ref(), &new, false).await?))
}
