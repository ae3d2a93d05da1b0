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
#[utoipa::path(get, path = "/workers", tag = "workers", responses((status = 200, body = Object, description = "{\"workers\": [{worker_id, connections, runs_in_flight, warm_pools?}]}"), BadRequest, Unauthorized))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let workers: Vec<WorkerInfo> = state.dispatcher.workers(&caller.team_id);
    Ok(Json(serde_json::json!({"workers": workers})))
}
