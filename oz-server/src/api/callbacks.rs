//! The in-sandbox runner's calls, with its run's workload token: `GET /agent/runs/{id}/resolved`
//! (what it needs to start, once) and `POST /agent/runs/{id}/report` (what it reports).
//! Starting moves a CLAIMED run to INPROGRESS; output and artifacts are recorded; `finished` ends it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use oz_core::run::RunState;
use oz_core::wire::callbacks::{Continuation, MAX_CONVERSATION_BYTES, ResolvedRun, RunnerEvent, RunnerReport};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::RunToken;
use crate::error::ApiError;
use crate::extract::{ApiBytes, ApiJson, ApiPath};
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
    if matches!(report.event, RunnerEvent::Heartbeat) {
        // Proof of life only (a runner that registered its own run has no worker to renew its lease).
        if matches!(run.state, RunState::Claimed | RunState::InProgress | RunState::Blocked) {
            state.dispatcher.heard_from(&run.id).await?;
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    let body = serde_json::to_value(&report).map_err(ApiError::internal)?;
    // A resend (the runner did not hear the answer) is stored once; what it changes is applied
    // again, since every change below but an artifact is idempotent.
    if matches!(run.state, RunState::Claimed | RunState::InProgress | RunState::Blocked) {
        state.dispatcher.heard_from(&run.id).await?;
    }
    let fresh = match report.seq {
        Some(seq) => state.lifecycle.record_report(&run.id, &token.token_id, seq, report.at, body).await?,
        None => {
            state.lifecycle.record(&run.id, report.at, body).await?;
            true
        }
    };
    match &report.event {
        RunnerEvent::Started { .. } | RunnerEvent::CloneStarted { .. } | RunnerEvent::HarnessStarted { .. } => {
            if matches!(report.event, RunnerEvent::HarnessStarted { .. }) {
                state.store.mark_started(&run.id, report.at).await?;
                state.store.close_resolution(&run.id, jiff::Timestamp::now()).await?;
            }
            if run.state == RunState::Claimed {
                state.lifecycle.advance(&run.id, RunState::InProgress, Some("the agent is running".into())).await?;
            }
        }
        RunnerEvent::Artifact(artifact) if fresh => state.store.add_artifact(&run.id, artifact, report.at).await?,
        RunnerEvent::Finished { state: end, message, .. } => {
            // A run whose cancel was answered ends CANCELLED whatever end is reported here: the
            // lifecycle sees to that for every path (`Lifecycle::apply`).
            let to = match end {
                RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Error => *end,
                other => {
                    return Err(ApiError::invalid(format!("finished.state must be a terminal state, got {other}")));
                }
            };
            // The runner stopped by a signal nobody asked for (its worker shutting down, say) is not a
            // cancellation: keep the report as an event and let the worker's report (or the lease) end
            // the run with the real reason. A local run has no worker: its runner was stopped by the
            // person who started it (Ctrl-C), and that is a cancellation.
            let local = run.claimed_by.as_deref() == Some(crate::creation::LOCAL_HOLDER);
            if to == RunState::Cancelled && !run.cancel_requested && !local {
                return Ok(StatusCode::NO_CONTENT);
            }
            state.lifecycle.advance(&run.id, to, Some(message.clone())).await?;
        }
        _ => {}
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /agent/runs/{id}/resolved`: what the runner needs to start (prompt, environment, the values
/// of the secrets the run references, git credentials for its repositories), until the runner
/// reports that the harness started and for at most `resolution_window` (config) after the first answer:
/// the harness itself (with a token it should not have) is refused, even if that report was lost.
/// Repeatable before that, so the runner's retries are safe.
#[utoipa::path(get, path = "/agent/runs/{id}/resolved", tag = "callbacks", params(("id" = String, Path)), responses((status = 200, body = ResolvedRun), BadRequest, Unauthorized, NotFound, (status = 409, description = "The harness has started", body = Problem, content_type = "application/problem+json")))]
pub async fn resolved(
    State(state): State<AppState>,
    token: RunToken,
    ApiPath(run_id): ApiPath<String>,
) -> Result<axum::Json<ResolvedRun>, ApiError> {
    let not_found = || ApiError::not_found(format!("there is no run {run_id:?}"));
    if token.run_id != run_id {
        return Err(not_found());
    }
    let run = state.store.run(&token.team_id, &run_id).await?.ok_or_else(not_found)?;
    if !state.store.open_resolution(&token.token_id, jiff::Timestamp::now(), state.config.resolution_window).await? {
        return Err(ApiError::conflict(
            "this run's configuration is no longer handed out (its harness has started, or it was fetched long ago)",
        )
        .retryable(false));
    }
    let config = run.config.clone().unwrap_or_default();
    let environment = match &config.environment_id {
        Some(id) => Some(
            state
                .store
                .environment(&run.team_id, id)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("the run's environment {id:?} no longer exists")))?
                .config,
        ),
        None => None,
    };
    let mut references: Vec<_> = environment.iter().flat_map(crate::secret_references::of_environment).collect();
    references.extend(crate::secret_references::of_config(&config));
    // Again here: a provider may have been set up, or a secret deleted, since the run was made.
    crate::secret_references::check(state.store.as_ref(), &run.team_id, &references).await?;
    let mut secret_env = std::collections::BTreeMap::new();
    for reference in references {
        let value = crate::api::secrets::open(&state, &run.team_id, &reference.name).await?.ok_or_else(|| {
            ApiError::invalid(format!("{}: the team has no secret {:?}", reference.field, reference.name))
        })?;
        secret_env.insert(reference.variable, secrecy::ExposeSecret::expose_secret(&value).to_owned());
    }
    let git_credentials = match &environment {
        Some(env) => state.lifecycle.credentials().issue(state.store.as_ref(), &state.keyring, &run, env).await?,
        None => Vec::new(),
    };
    let continuation = match &run.continuation {
        Some(c) => Some(Continuation {
            execution: run.execution_count,
            after_seq: c.after_seq,
            conversation: state.store.has_conversation(&run.id).await?,
        }),
        None => None,
    };
    let prompt = run.continuation.map_or(run.prompt, |c| c.followup.message);
    Ok(axum::Json(ResolvedRun { prompt, continuation, environment, secret_env, git_credentials }))
}

/// `PUT /agent/runs/{id}/conversation`: the runner keeps what its agent kept of its conversation,
/// for the run's next execution (a follow-up after the run ended) to go on from. The body is an
/// archive the runner makes (`application/octet-stream`, at most `MAX_CONVERSATION_BYTES`),
/// stored sealed and never opened here; it replaces the one before. Only while the run has not
/// ended (the runner sends it before its end): 409 after.
#[utoipa::path(put, path = "/agent/runs/{id}/conversation", tag = "callbacks", params(("id" = String, Path)), request_body(content = ConversationArchive, content_type = "application/octet-stream"), responses((status = 204, description = "Kept"), (status = 413, description = "Larger than the limit", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The run has ended", body = Problem, content_type = "application/problem+json"), Unauthorized, NotFound))]
pub async fn put_conversation(
    State(state): State<AppState>,
    token: RunToken,
    ApiPath(run_id): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> Result<StatusCode, ApiError> {
    let run = own_run(&state, &token, &run_id).await?;
    if body.len() > MAX_CONVERSATION_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            oz_core::failure::ErrorCode::InvalidRequest,
            format!("a conversation is kept up to {MAX_CONVERSATION_BYTES} bytes; this one is {}", body.len()),
        ));
    }
    if run.state.is_terminal() {
        return Err(ApiError::conflict(format!(
            "the run has ended ({}): its conversation is kept before its end",
            run.state
        )));
    }
    let place = crate::vault::conversation_place(&run.id);
    let sealed = state.keyring.seal_bytes(&place, &body).map_err(ApiError::internal)?;
    state.store.put_conversation(&run.id, &sealed, body.len(), jiff::Timestamp::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /agent/runs/{id}/conversation`: what an execution before kept of the run's conversation
/// (`PUT`), for the runner of a continuation; 404 when none was kept.
#[utoipa::path(get, path = "/agent/runs/{id}/conversation", tag = "callbacks", params(("id" = String, Path)), responses((status = 200, description = "The archive", body = ConversationArchive, content_type = "application/octet-stream"), Unauthorized, NotFound))]
pub async fn conversation(
    State(state): State<AppState>,
    token: RunToken,
    ApiPath(run_id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    let run = own_run(&state, &token, &run_id).await?;
    let sealed = state
        .store
        .conversation(&run.id)
        .await?
        .ok_or_else(|| ApiError::not_found("no conversation was kept for this run"))?;
    let place = crate::vault::conversation_place(&run.id);
    let bytes = state.keyring.open_bytes(&place, &sealed).map_err(ApiError::internal)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// The run its workload token is for, by the path's id (404 for any other).
async fn own_run(state: &AppState, token: &RunToken, run_id: &str) -> Result<crate::store::RunRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("there is no run {run_id:?}"));
    if token.run_id != run_id {
        return Err(not_found());
    }
    state.store.run(&token.team_id, run_id).await?.ok_or_else(not_found)
}
