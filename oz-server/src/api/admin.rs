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
    let rotated = principals::rotate_key(state.store.as_ref(), &caller.team_id, &id, caller.server_admin).await?;
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

/// `GET /admin/git-providers`: how the team's runs get git credentials, per host.
#[utoipa::path(get, path = "/admin/git-providers", tag = "admin", responses((status = 200, body = GitProviderList), Unauthorized, Forbidden))]
pub async fn git_providers(
    State(state): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<GitProviderList>, ApiError> {
    let providers = state.store.git_providers(&caller.team_id).await?;
    Ok(Json(GitProviderList {
        git_providers: providers.into_iter().map(|(host, provider)| GitProviderItem { host, provider }).collect(),
    }))
}

/// `PUT /admin/git-providers/{host}`: the provider for a git host (`github.com`); the secrets it
/// names must exist.
#[utoipa::path(put, path = "/admin/git-providers/{host}", tag = "admin", params(("host" = String, Path)), request_body = GitProvider, responses((status = 200, body = GitProviderItem), BadRequest, Unauthorized, Forbidden))]
pub async fn put_git_provider(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(host): ApiPath<String>,
    ApiJson(provider): ApiJson<GitProvider>,
) -> Result<Json<GitProviderItem>, ApiError> {
    let host = host.to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !host_ok {
        return Err(ApiError::invalid(format!("host {host:?}: a git host name, with an optional :port")));
    }
    for name in provider.secret_names() {
        oz_core::wire::secrets::validate_secret_name("secret", name).map_err(|e| ApiError::invalid(e.to_string()))?;
        if state.store.secret(&caller.team_id, name).await?.is_none() {
            return Err(ApiError::invalid(format!("the team has no secret {name:?} (PUT /secrets/{name} first)")));
        }
    }
    state.store.put_git_provider(&caller.team_id, &host, &provider).await?;
    // The workers' preparation credentials came from the provider this replaces.
    state.lifecycle.credentials().forget_team(&caller.team_id).await;
    Ok(Json(GitProviderItem { host, provider }))
}

/// `DELETE /admin/git-providers/{host}`.
#[utoipa::path(delete, path = "/admin/git-providers/{host}", tag = "admin", params(("host" = String, Path)), responses((status = 200, body = Object, description = "{\"success\": true}"), Unauthorized, Forbidden, NotFound))]
pub async fn delete_git_provider(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.delete_git_provider(&caller.team_id, &host.to_ascii_lowercase()).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found(format!("there is no git provider for {host:?}")),
        other => other.into(),
    })?;
    state.lifecycle.credentials().forget_team(&caller.team_id).await;
    Ok(Json(serde_json::json!({"success": true})))
}
