//! `GET /workers`: the team's connected workers and their load (our extension).

use axum::Json;
use axum::extract::State;

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::Caller;
use crate::dispatch::WorkerInfo;
use crate::error::ApiError;
use crate::state::AppState;

/// The handler.
#[utoipa::path(get, path = "/workers", tag = "workers", responses((status = 200, body = Object, description = "{\"workers\": [{worker_id, connections, runs_in_flight}]}"), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad credentials", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let workers: Vec<WorkerInfo> = state.dispatcher.workers(&caller.team_id);
    Ok(Json(serde_json::json!({"workers": workers})))
}
