//! `/secrets` (our extension): a team's secrets, write-only. Any role lists their names; an admin
//! sets and deletes them; no endpoint returns a value (a run gets the ones it references through its
//! workload token). Values are sealed before they reach the store (`crate::vault`).

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use oz_core::wire::secrets::{SecretItem, SecretList, SecretWrite, validate_secret_name};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::{SecretRecord, StoreError};
use crate::vault;

/// The largest value accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

fn item(s: &SecretRecord) -> SecretItem {
    SecretItem {
        name: s.name.clone(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        updated_by: s.updated_by.clone(),
    }
}

/// `GET /secrets`: names and times.
#[utoipa::path(get, path = "/secrets", tag = "secrets", responses((status = 200, body = SecretList), Unauthorized))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<SecretList>, ApiError> {
    let secrets = state.store.secrets(&caller.team_id).await?;
    Ok(Json(SecretList { secrets: secrets.iter().map(item).collect() }))
}

/// `PUT /secrets/{name}`: sets the value (sealed at once; never returned).
#[utoipa::path(put, path = "/secrets/{name}", tag = "secrets", params(("name" = String, Path)), request_body = SecretWrite, responses((status = 200, body = SecretItem), BadRequest, Unauthorized, Forbidden))]
pub async fn put(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(write): ApiJson<SecretWrite>,
) -> Result<Json<SecretItem>, ApiError> {
    validate_secret_name("name", &name).map_err(|e| ApiError::invalid(e.to_string()))?;
    if write.value.is_empty() || write.value.len() > MAX_SECRET_LEN {
        return Err(ApiError::invalid(format!("value: 1 to {MAX_SECRET_LEN} bytes")));
    }
    if write.value.contains('\0') {
        return Err(ApiError::invalid("value: must not contain a NUL byte"));
    }
    let now = Timestamp::now();
    let created_at = state.store.secret(&caller.team_id, &name).await?.map_or(now, |s| s.created_at);
    let sealed = state
        .keyring
        .seal(&vault::secret_place(&caller.team_id, &name), write.value.as_str())
        .map_err(ApiError::internal)?;
    let record =
        SecretRecord { team_id: caller.team_id, name, sealed, updated_by: caller.user_id, created_at, updated_at: now };
    state.store.put_secret(&record).await?;
    if created_at != now {
        // The old value's page versions must not linger in the write-ahead log.
        state.store.forget_overwritten().await?;
    }
    Ok(Json(item(&record)))
}

/// `DELETE /secrets/{name}`.
#[utoipa::path(delete, path = "/secrets/{name}", tag = "secrets", params(("name" = String, Path)), responses((status = 200, body = Object, description = "{\"success\": true}"), Unauthorized, Forbidden, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.delete_secret(&caller.team_id, &name).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found(format!("there is no secret {name:?}")),
        other => other.into(),
    })?;
    state.store.forget_overwritten().await?;
    Ok(Json(serde_json::json!({"success": true})))
}

/// The value of a team secret, for the one place that hands it to its run.
pub async fn open(state: &AppState, team_id: &str, name: &str) -> Result<Option<secrecy::SecretString>, ApiError> {
    let Some(record) = state.store.secret(team_id, name).await? else { return Ok(None) };
    let value = state.keyring.open(&vault::secret_place(team_id, name), &record.sealed).map_err(ApiError::internal)?;
    Ok(Some(value))
}
