//! `/agent/schedules`: create, list, get, update, delete, pause, resume.

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use oz_core::wire::api::{AgentConfig, ScheduleCreate, ScheduleHistory, ScheduleItem, ScheduleUpdate, Scope};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Caller, Member};
use crate::dispatch::ws::validate_worker_id;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::scheduler::{parse_cron, schedule_next, time_zone};
use crate::state::AppState;
use crate::store::{ScheduleRecord, StoreError};

fn item(s: ScheduleRecord) -> ScheduleItem {
    ScheduleItem {
        id: s.id,
        name: s.name,
        cron_schedule: s.cron,
        enabled: s.enabled,
        prompt: s.prompt,
        last_spawn_error: s.last_spawn_error,
        environment: s
            .agent_config
            .as_ref()
            .and_then(|c| c.environment_id.clone())
            .map(|id| serde_json::json!({"uid": id})),
        agent_config: s.agent_config,
        created_at: s.created_at,
        updated_at: s.updated_at,
        created_by: s.created_by.map(|u| serde_json::json!({"uid": u})),
        updated_by: s.updated_by.map(|u| serde_json::json!({"uid": u})),
        history: ScheduleHistory { last_ran: s.last_ran_at, next_run: s.next_run_at },
        scope: Some(Scope { kind: "Team".into(), uid: s.team_id }),
        timezone: s.timezone,
    }
}

fn validate(
    state: &AppState,
    name: &str,
    cron: &str,
    timezone: Option<&str>,
    prompt: Option<&str>,
    config: Option<&AgentConfig>,
) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid("name is required"));
    }
    oz_core::validate::text("name", name, 128, false).map_err(|e| ApiError::invalid(e.to_string()))?;
    parse_cron(cron)?;
    time_zone(timezone)?;
    let has_skill = config.and_then(|c| c.skill_spec.as_deref()).is_some_and(|s| !s.trim().is_empty());
    if prompt.is_none_or(|p| p.trim().is_empty()) && !has_skill {
        return Err(ApiError::invalid("prompt is required (unless agent_config.skill_spec is set)"));
    }
    if let Some(p) = prompt {
        oz_core::validate::text("prompt", p, crate::api::runs::MAX_PROMPT_LEN, true)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    match config.and_then(|c| c.worker_host.as_deref()) {
        Some(host) if host != "warp" => validate_worker_id(host)
            .map_err(|e| ApiError::invalid(format!("agent_config.worker_host: {}", e.detail)))?,
        _ if state.config.default_worker_host.is_none() => {
            return Err(ApiError::invalid(
                "agent_config.worker_host is required: this server runs agents on self-hosted workers only",
            ));
        }
        _ => {}
    }
    Ok(())
}

fn not_found(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(format!("there is no schedule {id:?}")),
        other => other.into(),
    }
}

/// `POST /agent/schedules`.
#[utoipa::path(post, path = "/agent/schedules", tag = "schedules", request_body = ScheduleCreate, responses((status = 200, body = ScheduleItem), BadRequest, Unauthorized))]
pub async fn create(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiJson(req): ApiJson<ScheduleCreate>,
) -> Result<Json<ScheduleItem>, ApiError> {
    validate(
        &state,
        &req.name,
        &req.cron_schedule,
        req.timezone.as_deref(),
        req.prompt.as_deref(),
        req.agent_config.as_ref(),
    )?;
    crate::sharing::check_template(&state, &caller.team_id, req.agent_config.as_ref()).await?;
    let now = Timestamp::now();
    let enabled = req.enabled.unwrap_or(true);
    let mut s = ScheduleRecord {
        id: format!("sched_{}", uuid::Uuid::new_v4().simple()),
        team_id: caller.team_id,
        name: req.name,
        cron: req.cron_schedule.split_whitespace().collect::<Vec<_>>().join(" "),
        timezone: req.timezone,
        enabled,
        prompt: req.prompt,
        agent_config: req.agent_config,
        created_by: caller.user_id.clone(),
        updated_by: caller.user_id,
        created_at: now,
        updated_at: now,
        last_ran_at: None,
        next_run_at: None,
        last_spawn_error: None,
    };
    if enabled {
        s.next_run_at = Some(schedule_next(&s, now)?);
    }
    state.store.insert_schedule(&s).await?;
    Ok(Json(item(s)))
}

/// `GET /agent/schedules`.
#[utoipa::path(get, path = "/agent/schedules", tag = "schedules", responses((status = 200, body = Object, description = "{\"schedules\": [ScheduleItem]}"), BadRequest, Unauthorized))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let items: Vec<ScheduleItem> = state.store.schedules(&caller.team_id).await?.into_iter().map(item).collect();
    Ok(Json(serde_json::json!({"schedules": items})))
}

async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<ScheduleRecord, ApiError> {
    state
        .store
        .schedule(&caller.team_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no schedule {id:?}")))
}

/// `GET /agent/schedules/{id}`.
#[utoipa::path(get, path = "/agent/schedules/{id}", tag = "schedules", params(("id" = String, Path)), responses((status = 200, body = ScheduleItem), BadRequest, Unauthorized, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleItem>, ApiError> {
    Ok(Json(item(load(&state, &caller, &id).await?)))
}

/// `PUT /agent/schedules/{id}`: `name`, `cron_schedule` and `enabled` are required.
#[utoipa::path(put, path = "/agent/schedules/{id}", tag = "schedules", params(("id" = String, Path)), request_body = ScheduleUpdate, responses((status = 200, body = ScheduleItem), BadRequest, Unauthorized, NotFound))]
pub async fn update(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ScheduleUpdate>,
) -> Result<Json<ScheduleItem>, ApiError> {
    let mut s = load(&state, &caller, &id).await?;
    let prompt = req.prompt.or(s.prompt.clone());
    let config = req.agent_config.or(s.agent_config.clone());
    let timezone = req.timezone.or(s.timezone.clone());
    validate(&state, &req.name, &req.cron_schedule, timezone.as_deref(), prompt.as_deref(), config.as_ref())?;
    crate::sharing::check_template(&state, &caller.team_id, config.as_ref()).await?;
    let now = Timestamp::now();
    s.name = req.name;
    s.cron = req.cron_schedule.split_whitespace().collect::<Vec<_>>().join(" ");
    s.enabled = req.enabled;
    s.prompt = prompt;
    s.agent_config = config;
    s.timezone = timezone;
    s.updated_by = caller.user_id.clone();
    s.updated_at = now;
    s.next_run_at = if s.enabled { Some(schedule_next(&s, now)?) } else { None };
    state.store.update_schedule(&s).await.map_err(not_found(&id))?;
    Ok(Json(item(s)))
}

/// `DELETE /agent/schedules/{id}`: `{"success": true}`.
#[utoipa::path(delete, path = "/agent/schedules/{id}", tag = "schedules", params(("id" = String, Path)), responses((status = 200, body = Object, description = "{\"success\": true}"), BadRequest, Unauthorized, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.delete_schedule(&caller.team_id, &id).await.map_err(not_found(&id))?;
    Ok(Json(serde_json::json!({"success": true})))
}

async fn set_enabled(
    state: AppState,
    caller: Caller,
    id: String,
    enabled: bool,
) -> Result<Json<ScheduleItem>, ApiError> {
    let mut s = load(&state, &caller, &id).await?;
    let now = Timestamp::now();
    s.enabled = enabled;
    s.updated_at = now;
    s.updated_by = caller.user_id.clone();
    // Resuming starts from now: ticks passed while paused are not made up.
    s.next_run_at = if enabled { Some(schedule_next(&s, now)?) } else { None };
    state.store.update_schedule(&s).await.map_err(not_found(&id))?;
    Ok(Json(item(s)))
}

/// `POST /agent/schedules/{id}/pause`.
#[utoipa::path(post, path = "/agent/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path)), responses((status = 200, body = ScheduleItem), BadRequest, Unauthorized, NotFound))]
pub async fn pause(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleItem>, ApiError> {
    set_enabled(state, caller, id, false).await
}

/// `POST /agent/schedules/{id}/resume`.
#[utoipa::path(post, path = "/agent/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path)), responses((status = 200, body = ScheduleItem), BadRequest, Unauthorized, NotFound))]
pub async fn resume(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleItem>, ApiError> {
    set_enabled(state, caller, id, true).await
}
