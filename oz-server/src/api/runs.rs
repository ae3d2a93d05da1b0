//! `/agent/runs`: create (also `/agent/run`), list with filters and cursor pages, get, cancel,
//! transcript.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use oz_core::run::RunState;
use oz_core::wire::admin::Role;
use oz_core::wire::api::{
    DEFAULT_PAGE_LIMIT, MAX_ATTACHMENTS, MAX_METADATA_KEYS, MAX_PAGE_LIMIT, PageInfo, RunAgentRequest, RunCreated,
    RunItem, RunList,
};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Caller, Member, Principal};
use crate::creation::{self, NewRun};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, query_pairs};
use crate::lifecycle::{Followed, run_item};
use crate::sharing::steerable_run;
use crate::state::AppState;
use crate::store::{PageRequest, RunFilter, RunRecord, RunSort, SortValue, StateChange};

/// The longest prompt accepted, in bytes.
pub const MAX_PROMPT_LEN: usize = 100 * 1024;

fn validate_request(req: &RunAgentRequest) -> Result<(), ApiError> {
    let prompt = req.prompt.as_deref().unwrap_or("");
    if prompt.trim().is_empty() && req.skill.as_deref().unwrap_or("").trim().is_empty() {
        return Err(ApiError::invalid("prompt is required (or skill)"));
    }
    oz_core::validate::text("prompt", prompt, MAX_PROMPT_LEN, true).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(title) = &req.title {
        oz_core::validate::text("title", title, 512, false).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    if let Some(a) = &req.attachments {
        if a.len() > MAX_ATTACHMENTS {
            return Err(ApiError::invalid(format!(
                "attachments: at most {MAX_ATTACHMENTS} are allowed, got {}",
                a.len()
            )));
        }
        for (i, att) in a.iter().enumerate() {
            base64::engine::general_purpose::STANDARD
                .decode(&att.data)
                .map_err(|_| ApiError::invalid(format!("attachments[{i}].data is not base64")))?;
        }
    }
    if req.metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA_KEYS) {
        return Err(ApiError::invalid(format!("metadata: at most {MAX_METADATA_KEYS} keys are allowed")));
    }
    if let Some(kind) = req.config.as_ref().and_then(|c| c.harness.as_ref()).and_then(|h| h.kind.as_ref())
        && !kind.is_known()
    {
        return Err(ApiError::invalid(format!(
            "config.harness.type {:?} is not one of oz, claude, codex, gemini, command",
            kind.as_str()
        )));
    }
    if let Some(minutes) = req.config.as_ref().and_then(|c| c.idle_timeout_minutes)
        && !(1..=60).contains(&minutes)
    {
        return Err(ApiError::invalid(format!("config.idle_timeout_minutes must be 1-60, got {minutes}")));
    }
    Ok(())
}

/// `POST /agent/runs` and `POST /agent/run`.
#[utoipa::path(post, path = "/agent/runs", tag = "runs", request_body = RunAgentRequest, responses((status = 200, body = RunCreated), BadRequest, Unauthorized))]
pub async fn create(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiJson(req): ApiJson<RunAgentRequest>,
) -> Result<Json<RunCreated>, ApiError> {
    validate_request(&req)?;
    state.run_limiter.take(&caller.key_id)?;
    let new = NewRun {
        prompt: req.prompt.clone().unwrap_or_default(),
        title: req.title.clone(),
        config: req.config.clone(),
        source: "API".into(),
        creator_id: caller.user_id.clone(),
        schedule_id: None,
        parent_run_id: req.parent_run_id.clone(),
        metadata: req.metadata.as_ref().map(|m| serde_json::json!(m)),
        trigger_url: None,
    };
    let run = creation::create(&state, &caller.team_id, new).await?;
    Ok(created(run))
}

/// `POST /agent/runs/local` (our extension): an unmanaged `oz agent run` registers the run it runs
/// where it is; the run is tracked, watched, steered and cancelled like a managed one
/// (`execution_location: LOCAL`), and its runner reports with the workload token answered (once).
#[utoipa::path(post, path = "/agent/runs/local", tag = "runs", request_body = LocalRunRequest, responses((status = 200, body = LocalRunCreated), BadRequest, Unauthorized, Forbidden))]
pub async fn register_local(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiJson(req): ApiJson<oz_core::wire::api::LocalRunRequest>,
) -> Result<Json<oz_core::wire::api::LocalRunCreated>, ApiError> {
    let as_request = RunAgentRequest {
        prompt: Some(req.prompt.clone()),
        title: req.title.clone(),
        config: req.config.clone(),
        ..Default::default()
    };
    validate_request(&as_request)?;
    // A managed run's secrets and git credentials reach only its sandbox; a local run's reach the
    // machine that registered it, so naming an environment is handing its secrets to the caller,
    // and only admins may read secrets.
    if req.config.as_ref().is_some_and(|c| c.environment_id.is_some()) && caller.role < Role::Admin {
        return Err(ApiError::forbidden(format!(
            "a local run with an environment is given that environment's secrets and git credentials where it runs; \
             this needs the admin role, and this key acts as {} (run without --environment, or in a sandbox)",
            caller.role
        )));
    }
    let source = req.source.clone().unwrap_or_else(|| "CLI".into());
    if !matches!(source.as_str(), "CLI" | "GITHUB_ACTION" | "LOCAL") {
        return Err(ApiError::invalid(format!("source {source:?} is not one of CLI, GITHUB_ACTION, LOCAL")));
    }
    state.run_limiter.take(&caller.key_id)?;
    let new = NewRun {
        prompt: req.prompt,
        title: req.title,
        config: req.config,
        source,
        creator_id: caller.user_id.clone(),
        schedule_id: None,
        parent_run_id: None,
        metadata: None,
        trigger_url: None,
    };
    let (run, workload_token) = creation::register_local(&state, &caller.team_id, new).await?;
    let session_link = Some(crate::sharing::session_link(&state.public_url, &run.session_id));
    Ok(Json(oz_core::wire::api::LocalRunCreated { run_id: run.id, workload_token, session_link }))
}

/// What `POST /agent/runs` and its follow-ups answer.
fn created(run: RunRecord) -> Json<RunCreated> {
    Json(RunCreated { run_id: run.id.clone(), task_id: run.id, state: run.state, at_capacity: None })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    v: SortValue,
    id: String,
}

fn sort_value(run: &RunRecord, sort: RunSort) -> SortValue {
    match sort {
        RunSort::CreatedAt => SortValue::Micros(run.created_at.as_microsecond()),
        RunSort::UpdatedAt => SortValue::Micros(run.updated_at.as_microsecond()),
        RunSort::Title => SortValue::Text(run.title.clone()),
        RunSort::Agent => SortValue::Text(run.config.as_ref().and_then(|c| c.name.clone()).unwrap_or_default()),
    }
}

fn parse_time(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    value.parse().map_err(|_| {
        ApiError::invalid(format!("{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, got {value:?}"))
    })
}

/// `GET /agent/runs`.
#[utoipa::path(get, path = "/agent/runs", tag = "runs", params(("limit" = Option<u32>, Query, description = "1-500, default 20"), ("cursor" = Option<String>, Query), ("state" = Option<Vec<RunState>>, Query, description = "repeatable"), ("name" = Option<String>, Query), ("model_id" = Option<String>, Query), ("creator" = Option<String>, Query), ("source" = Option<String>, Query), ("created_after" = Option<String>, Query), ("created_before" = Option<String>, Query), ("updated_after" = Option<String>, Query), ("environment_id" = Option<String>, Query), ("schedule_id" = Option<String>, Query), ("ancestor_run_id" = Option<String>, Query), ("q" = Option<String>, Query), ("sort_by" = Option<String>, Query, description = "updated_at, created_at, title, agent"), ("sort_order" = Option<String>, Query, description = "asc or desc")), responses((status = 200, body = RunList), BadRequest, Unauthorized))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<RunList>, ApiError> {
    let mut filter = RunFilter::default();
    let mut limit = DEFAULT_PAGE_LIMIT;
    let mut cursor: Option<String> = None;
    let mut sort = RunSort::CreatedAt;
    let mut descending = true;
    for (key, value) in query_pairs(query.as_deref()) {
        match key.as_str() {
            "limit" => {
                limit = value.parse().ok().filter(|l| (1..=MAX_PAGE_LIMIT).contains(l)).ok_or_else(|| {
                    ApiError::invalid(format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}, got {value:?}"))
                })?
            }
            "cursor" => cursor = Some(value),
            "state" => {
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    filter.states.push(s.parse().map_err(|_| {
                        ApiError::invalid(format!("state {s:?} is not one of QUEUED, PENDING, CLAIMED, INPROGRESS, SUCCEEDED, FAILED, BLOCKED, ERROR, CANCELLED"))
                    })?);
                }
            }
            "name" => filter.name = Some(value),
            "model_id" => filter.model_id = Some(value),
            "creator" => filter.creator = Some(value),
            "source" => filter.source = Some(value),
            "created_after" => filter.created_after = Some(parse_time("created_after", &value)?),
            "created_before" => filter.created_before = Some(parse_time("created_before", &value)?),
            "updated_after" => filter.updated_after = Some(parse_time("updated_after", &value)?),
            "environment_id" => filter.environment_id = Some(value),
            "schedule_id" => filter.schedule_id = Some(value),
            "ancestor_run_id" => filter.ancestor_run_id = Some(value),
            "q" => filter.q = Some(value),
            "sort_by" => {
                sort = match value.as_str() {
                    "created_at" => RunSort::CreatedAt,
                    "updated_at" => RunSort::UpdatedAt,
                    "title" => RunSort::Title,
                    "agent" => RunSort::Agent,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "sort_by {other:?} is not one of updated_at, created_at, title, agent"
                        )));
                    }
                }
            }
            "sort_order" => {
                descending = match value.as_str() {
                    "desc" => true,
                    "asc" => false,
                    other => return Err(ApiError::invalid(format!("sort_order {other:?} is not asc or desc"))),
                }
            }
            _ => {} // unknown parameters are ignored, as Oz does
        }
    }
    let after = match cursor {
        Some(c) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(&c)
                .map_err(|_| ApiError::invalid("cursor is not a cursor this server issued"))?;
            let parsed: Cursor = serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::invalid("cursor is not a cursor this server issued"))?;
            Some((parsed.v, parsed.id))
        }
        None => None,
    };
    let page = PageRequest { sort, descending, limit, after };
    // An admin lists all of the team's runs; anyone else those their sharing lets them see.
    if caller.role < oz_core::wire::admin::Role::Admin {
        filter.visible_to = Some(crate::store::RunViewer { user_id: caller.user_id.clone() });
    }
    let mut runs = state.store.list_runs(&caller.team_id, &filter, &page).await?;
    let has_next_page = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_cursor = if has_next_page {
        runs.last().map(|last| {
            let c = Cursor { v: sort_value(last, sort), id: last.id.clone() };
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default())
        })
    } else {
        None
    };
    Ok(Json(RunList {
        runs: runs.iter().map(|r| run_item(r, &state.public_url)).collect(),
        page_info: PageInfo { has_next_page, next_cursor },
    }))
}

/// Loads a run the principal may see (its sharing and the caller's role decide: [`crate::sharing`]);
/// a workload token sees its own run only. Not found otherwise.
pub async fn visible_run(state: &AppState, principal: &Principal, run_id: &str) -> Result<RunRecord, ApiError> {
    crate::sharing::run_access(state, principal, run_id).await.map(|(run, _)| run)
}

/// `GET /agent/runs/{id}`.
#[utoipa::path(get, path = "/agent/runs/{id}", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = RunItem), BadRequest, Unauthorized, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Json<RunItem>, ApiError> {
    Ok(Json(run_item(&visible_run(&state, &principal, &run_id).await?, &state.public_url)))
}

/// `POST /agent/runs/{id}/cancel`: 200 with the run id; 400 if it already ended. Unlike Oz (409
/// while PENDING), an offered run is cancelled at once and its worker told to drop the offer; 409
/// (retryable) only if the run kept changing state under the cancel.
#[utoipa::path(post, path = "/agent/runs/{id}/cancel", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = String, description = "The run id"), (status = 409, description = "The run kept changing state: retry", body = Problem, content_type = "application/problem+json"), BadRequest, Unauthorized, NotFound))]
pub async fn cancel(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Json<String>, ApiError> {
    steerable_run(&state, &caller, &run_id).await?;
    cancel_run(&state, &run_id).await?;
    Ok(Json(run_id))
}

/// Cancels run `run_id` (whoever asked was checked): a run not yet claimed ends CANCELLED here; a
/// claimed one is asked to stop and ends as its runner reports. 400 if it already ended.
pub(crate) async fn cancel_run(state: &AppState, run_id: &str) -> Result<(), ApiError> {
    // The run may move between the read and the change (dispatched, claimed): read again and redo.
    for _ in 0..5 {
        let run = state.store.run_by_id(run_id).await?.ok_or_else(|| ApiError::not_found("no such run"))?;
        let before_it_started = match run.state {
            s if s.is_terminal() => return Err(ApiError::invalid(format!("the run already ended ({s})"))),
            RunState::Queued => "cancelled before it started",
            // Offered, not claimed: cancelled here, and the worker is told to drop the offer.
            RunState::Pending => "cancelled while it was offered to a worker",
            _ => {
                // In the history: the cancel was asked (what became of it follows as the end state).
                let holder = run.claimed_by.clone().unwrap_or_default();
                if let Some(ended) = state.lifecycle.request_cancel(&run.id, &holder).await? {
                    return Err(ApiError::invalid(format!("the run already ended ({ended})")));
                }
                state.dispatcher.forward_cancel(&run);
                return Ok(());
            }
        };
        let change = StateChange::new(run.state, RunState::Cancelled).message(before_it_started);
        match state.lifecycle.apply(&run.id, change).await {
            Ok(_) => {
                state.dispatcher.forward_cancel(&run);
                return Ok(());
            }
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict("the run kept changing state; retry in a moment").retryable(true))
}

/// `POST /agent/runs/{id}/interrupt`: stops what the running agent is doing now (an `interrupt`
/// event in its stream, which its runner follows: SIGINT to the harness's processes, as Ctrl-C in a
/// terminal); the run goes on if the harness handles it. 200 with the run id; 409 while its agent
/// has not started (nothing to interrupt; an interrupt is never kept for later); 400 once it ended.
#[utoipa::path(post, path = "/agent/runs/{id}/interrupt", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = String, description = "The run id"), (status = 409, description = "The agent has not started yet", body = Problem, content_type = "application/problem+json"), BadRequest, Unauthorized, Forbidden, NotFound))]
pub async fn interrupt(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Json<String>, ApiError> {
    let run = steerable_run(&state, &caller, &run_id).await?;
    if run.state.is_terminal() {
        return Err(ApiError::invalid(format!("the run already ended ({})", run.state)));
    }
    // Its runner follows interrupts from the run's first event on: one recorded before the harness
    // started would stop the agent as soon as it starts.
    if run.started_at.is_none() {
        return Err(ApiError::conflict(format!(
            "the run's agent has not started yet ({}): nothing to interrupt",
            run.state
        )));
    }
    let event = oz_core::wire::api::InterruptEvent { by: caller.user_id.clone() };
    if let Some(ended) = state.lifecycle.record_unless_ended(&run.id, jiff::Timestamp::now(), event.to_event()).await? {
        return Err(ApiError::invalid(format!("the run already ended ({ended})")));
    }
    Ok(Json(run.id))
}

/// `GET /agent/runs/{id}/transcript`: 302 to the stored transcript.
#[utoipa::path(get, path = "/agent/runs/{id}/transcript", tag = "runs", params(("id" = String, Path)), responses((status = 302, description = "Redirect to the transcript"), BadRequest, Unauthorized, NotFound))]
pub async fn transcript(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let location = format!("/api/v1/agent/runs/{}/transcript/content", run.id);
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// `GET /agent/runs/{id}/transcript/content`: every stored event of the run, as a JSON array.
#[utoipa::path(get, path = "/agent/runs/{id}/transcript/content", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = Vec<Object>), BadRequest, Unauthorized, NotFound))]
pub async fn transcript_content(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = state.store.events(&run.id, after, 1000).await?;
        if batch.is_empty() {
            break;
        }
        after = batch.last().map_or(after, |e| e.seq);
        out.extend(batch.into_iter().map(|e| serde_json::json!({"seq": e.seq, "at": e.at, "event": e.body})));
    }
    Ok(Json(out))
}

/// `POST /agent/runs/{id}/followups`: continues a run with a new message, and answers with the
/// same run. To a run that has not ended, the message goes to its running agent (a `followup` event
/// in its stream, which its runner follows). A run that ended goes on in a new execution, as Oz's
/// do: QUEUED again, offered to a worker, its agent asked the follow-up and given back what it kept
/// of its conversation (`GET /agent/runs/{id}/conversation`); only its own team may continue it,
/// and a run that ran where it registered (`LOCAL`) has no worker to go on on (409).
#[utoipa::path(post, path = "/agent/runs/{id}/followups", tag = "runs", params(("id" = String, Path)), request_body = FollowupRequest, responses((status = 200, body = RunCreated), (status = 409, description = "The run ended where it registered (LOCAL): no worker can continue it", body = Problem, content_type = "application/problem+json"), BadRequest, Unauthorized, Forbidden, NotFound))]
pub async fn followup(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(run_id): ApiPath<String>,
    ApiJson(req): ApiJson<oz_core::wire::api::FollowupRequest>,
) -> Result<Json<RunCreated>, ApiError> {
    let run = steerable_run(&state, &caller, &run_id).await?;
    let message = req.message.unwrap_or_default();
    if message.trim().is_empty() {
        return Err(ApiError::invalid("message is required"));
    }
    oz_core::validate::text("message", &message, MAX_PROMPT_LEN, true).map_err(|e| ApiError::invalid(e.to_string()))?;
    state.run_limiter.take(&caller.key_id)?;
    if let Some(mode) = &req.mode
        && !matches!(mode.as_str(), "normal" | "plan" | "orchestrate")
    {
        return Err(ApiError::invalid(format!("mode {mode:?} is not one of normal, plan, orchestrate")));
    }
    let event = oz_core::wire::api::FollowupEvent { message, mode: req.mode, by: caller.user_id.clone() };
    // Whether the run has ended is decided under its lock: a follow-up either reaches its running
    // agent or continues it, never neither.
    let may_continue = |ended: &crate::store::RunRecord| {
        // Its config's shares and secret references name its own team's users and secrets.
        if ended.team_id != caller.team_id {
            return Err(ApiError::forbidden(format!(
                "run {} has ended and belongs to another team: only its own team may continue it",
                ended.id
            )));
        }
        // Its git credentials act as its creator (the default strategy): a new execution mints
        // new ones, so only the creator, or an admin, may start one for a run that ended.
        let as_creator = ended
            .config
            .as_ref()
            .and_then(|c| c.credential_strategy.as_deref())
            .is_none_or(|s| s.eq_ignore_ascii_case("CREATOR"));
        let is_creator = caller.user_id.is_some() && caller.user_id == ended.creator_id;
        if as_creator && caller.role < Role::Admin && !is_creator {
            return Err(ApiError::forbidden(format!(
                "run {} has ended and its git credentials act as its creator: only its creator or an admin may continue it (or start a new run)",
                ended.id
            )));
        }
        if ended.worker_host.is_none() {
            return Err(ApiError::conflict(format!(
                "run {} ran where it was registered (LOCAL) and has ended: no worker can continue it; run `oz agent run` again there",
                ended.id
            )));
        }
        Ok(())
    };
    // A continued run is unfinished again: it counts against its team's cap as a new one does.
    if run.state.is_terminal() {
        state.run_limiter.admit(state.store.unfinished_runs(&run.team_id).await?)?;
    }
    let run = match state.lifecycle.followup(&run.id, &event, may_continue).await? {
        Followed::ToTheRunningAgent(run) => run,
        Followed::Continued(run) => {
            state.dispatcher.wake();
            run
        }
    };
    Ok(created(run))
}
