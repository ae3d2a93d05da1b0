//! `GET /workers`: the team's connected workers and their load; `POST /repos/pushed`: tell them
//! repos moved (our extensions).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use oz_core::wire::worker::{ReposMoved, ServerMessage};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Caller, Member};
use crate::dispatch::WorkerInfo;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// The handler.
#[utoipa::path(get, path = "/workers", tag = "workers", responses((status = 200, body = Object, description = "{\"workers\": [{worker_id, connections, runs_in_flight, warm_pools?}]}"), BadRequest, Unauthorized))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let workers: Vec<WorkerInfo> = state.dispatcher.workers(&caller.team_id);
    Ok(Json(serde_json::json!({"workers": workers})))
}

/// The most repos one call may name.
const MAX_PUSHED_REPOS: usize = 100;

/// The handler: the team's connected workers are told at once (`repos_moved`), and those with warm
/// pools of environments with these repos replace their ready sandboxes. Call it from CI after a
/// push, or from a push webhook relay.
#[utoipa::path(post, path = "/repos/pushed", tag = "workers", request_body = Object, responses((status = 202, body = Object, description = "{\"workers_told\": n}: how many worker connections were told"), BadRequest, Unauthorized))]
pub async fn repos_pushed(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiJson(pushed): ApiJson<ReposMoved>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if pushed.repos.is_empty() || pushed.repos.len() > MAX_PUSHED_REPOS {
        return Err(ApiError::invalid(format!("repos: name 1 to {MAX_PUSHED_REPOS} repos")));
    }
    for repo in &pushed.repos {
        repo.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let told = state.dispatcher.tell_team(&caller.team_id, &ServerMessage::ReposMoved(pushed));
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"workers_told": told}))))
}
