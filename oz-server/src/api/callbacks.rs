//! `POST /agent/runs/{id}/report`: what the in-sandbox runner reports, with its run's workload token.
//! Starting moves a CLAIMED run to INPROGRESS; output and artifacts are recorded; `finished` ends it.

use axum::extract::State;
use axum::http::StatusCode;
use oz_core::run::RunState;
use oz_core::wire::callbacks::{RunnerEvent, RunnerReport};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::RunToken;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

/// The handler.
#[utoipa::path(post, path = "/agent/runs/{id}/report", tag = "callbacks", params(("id" = String, Path)), request_body = RunnerReport, responses((status = 204, description = "Recorded"), BadRequest, Unauthorized, NotFound))]
pub async fn report(
    State(state): State<AppState>,
    token: RunToken,
    ApiPath(run_id): ApiPath<String>,
    ApiJson(report): ApiJson<RunnerReport>,
) -> Result<StatusCode, ApiError> {
    if token.run_id != run_id {
        return Err(ApiError::not_found(format!("there is no run {run_id:?}")));
    }
    let run = state
        .store
        .run(&token.team_id, &run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no run {run_id:?}")))?;
    let body = serde_json::to_value(&report).map_err(ApiError::internal)?;
    state.lifecycle.record(&run.id, report.at, body).await?;
    match &report.event {
        RunnerEvent::Started { .. } | RunnerEvent::CloneStarted { .. } | RunnerEvent::HarnessStarted { .. } => {
            if matches!(report.event, RunnerEvent::HarnessStarted { .. }) {
                state.store.mark_started(&run.id, report.at).await?;
            }
            if run.state == RunState::Claimed {
                state.lifecycle.advance(&run.id, RunState::InProgress, Some("the agent is running".into())).await?;
            }
        }
        RunnerEvent::Artifact(artifact) => state.store.add_artifact(&run.id, artifact, report.at).await?,
        RunnerEvent::Finished { state: end, message, .. } => {
            let to = match end {
                // Someone asked to cancel it, and it did not succeed: it was cancelled (its agent may
                // have died of the stop signal before the runner saw its own).
                RunState::Failed | RunState::Error if run.cancel_requested => RunState::Cancelled,
                RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Error => *end,
                other => {
                    return Err(ApiError::invalid(format!("finished.state must be a terminal state, got {other}")));
                }
            };
            // The runner stopped by a signal nobody asked for (its worker shutting down, say) is not a
            // cancellation: keep the report as an event and let the worker's report (or the lease) end
            // the run with the real reason.
            if to == RunState::Cancelled && !run.cancel_requested {
                return Ok(StatusCode::NO_CONTENT);
            }
            state.lifecycle.advance(&run.id, to, Some(message.clone())).await?;
        }
        _ => {}
    }
    Ok(StatusCode::NO_CONTENT)
}
