//! `GET /workers`: the team's connected workers and their load (our extension).

use axum::Json;
use axum::extract::State;

use crate::auth::Caller;
use crate::dispatch::WorkerInfo;
use crate::error::ApiError;
use crate::state::AppState;

/// The handler.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let workers: Vec<WorkerInfo> = state.dispatcher.workers(&caller.team_id);
    Ok(Json(serde_json::json!({"workers": workers})))
}
