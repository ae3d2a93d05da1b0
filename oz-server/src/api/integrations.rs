//! `/integrations` (our extension): named triggers, and `POST /integrations/{id}/webhook`, where a
//! signed delivery becomes a run.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use oz_core::failure::ErrorCode;
use oz_core::wire::api::{IntegrationItem, IntegrationRequest, WebhookAccepted};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Admin, Caller};
use crate::creation::{self, NewRun};
use crate::dispatch::ws::validate_worker_id;
use crate::error::ApiError;
use crate::extract::{ApiBytes, ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::{IntegrationRecord, StoreError};
use crate::vault;
use crate::webhook::{self, REPLAY_WINDOW_SECS, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER};

/// The largest payload put into a prompt, in bytes.
pub const MAX_PAYLOAD_IN_PROMPT: usize = 64 * 1024;

/// `shown_secret`: the signing secret in the clear, for the one answer that carries it.
fn item(state: &AppState, i: IntegrationRecord, shown_secret: Option<String>) -> IntegrationItem {
    IntegrationItem {
        webhook_url: format!("{}/api/v1/integrations/{}/webhook", state.public_url, i.id),
        id: i.id,
        name: i.name,
        kind: i.kind,
        enabled: i.enabled,
        prompt: i.prompt,
        agent_config: i.agent_config,
        secret: shown_secret,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

fn validate(state: &AppState, req: &IntegrationRequest) -> Result<(), ApiError> {
    if req.name.trim().is_empty() {
        return Err(ApiError::invalid("name is required"));
    }
    oz_core::validate::text("name", &req.name, 128, false).map_err(|e| ApiError::invalid(e.to_string()))?;
    if req.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt is required"));
    }
    oz_core::validate::text("prompt", &req.prompt, crate::api::runs::MAX_PROMPT_LEN, true)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    match req.agent_config.as_ref().and_then(|c| c.worker_host.as_deref()) {
        Some(host) if host != "warp" => {
            validate_worker_id(host).map_err(|e| ApiError::invalid(format!("agent_config.worker_host: {}", e.detail)))
        }
        _ if state.config.default_worker_host.is_none() => Err(ApiError::invalid(
            "agent_config.worker_host is required: this server runs agents on self-hosted workers only",
        )),
        _ => Ok(()),
    }
}

fn not_found(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(format!("there is no integration {id:?}")),
        other => other.into(),
    }
}

/// `POST /integrations`: the response carries the signing secret, once.
#[utoipa::path(post, path = "/integrations", tag = "integrations", request_body = IntegrationRequest, responses((status = 200, body = IntegrationItem, description = "Carries the signing secret, once"), BadRequest, Unauthorized))]
pub async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(req): ApiJson<IntegrationRequest>,
) -> Result<Json<IntegrationItem>, ApiError> {
    validate(&state, &req)?;
    crate::sharing::check_template(&state, &caller.team_id, req.agent_config.as_ref()).await?;
    let now = Timestamp::now();
    let id = format!("int_{}", uuid::Uuid::new_v4().simple());
    let signing_secret = format!("whsec_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let sealed = state.keyring.seal(&vault::integration_place(&id), &signing_secret).map_err(ApiError::internal)?;
    let record = IntegrationRecord {
        id,
        team_id: caller.team_id,
        name: req.name,
        kind: "webhook".into(),
        secret: sealed,
        enabled: req.enabled.unwrap_or(true),
        prompt: req.prompt,
        agent_config: req.agent_config,
        created_by: caller.user_id,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_integration(&record).await?;
    Ok(Json(item(&state, record, Some(signing_secret))))
}

/// `GET /integrations`.
#[utoipa::path(get, path = "/integrations", tag = "integrations", responses((status = 200, body = Object, description = "{\"integrations\": [IntegrationItem]}"), BadRequest, Unauthorized))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let items: Vec<IntegrationItem> =
        state.store.integrations(&caller.team_id).await?.into_iter().map(|i| item(&state, i, None)).collect();
    Ok(Json(serde_json::json!({"integrations": items})))
}

/// `GET /integrations/{id}`.
#[utoipa::path(get, path = "/integrations/{id}", tag = "integrations", params(("id" = String, Path)), responses((status = 200, body = IntegrationItem), BadRequest, Unauthorized, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<IntegrationItem>, ApiError> {
    let i = state
        .store
        .integration(&caller.team_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no integration {id:?}")))?;
    Ok(Json(item(&state, i, None)))
}

/// `PUT /integrations/{id}` (the secret is kept).
#[utoipa::path(put, path = "/integrations/{id}", tag = "integrations", params(("id" = String, Path)), request_body = IntegrationRequest, responses((status = 200, body = IntegrationItem), BadRequest, Unauthorized, NotFound))]
pub async fn update(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<IntegrationRequest>,
) -> Result<Json<IntegrationItem>, ApiError> {
    validate(&state, &req)?;
    crate::sharing::check_template(&state, &caller.team_id, req.agent_config.as_ref()).await?;
    let mut i = state
        .store
        .integration(&caller.team_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no integration {id:?}")))?;
    i.name = req.name;
    i.prompt = req.prompt;
    i.agent_config = req.agent_config;
    i.enabled = req.enabled.unwrap_or(i.enabled);
    i.updated_at = Timestamp::now();
    state.store.update_integration(&i).await.map_err(not_found(&id))?;
    Ok(Json(item(&state, i, None)))
}

/// `DELETE /integrations/{id}`.
#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations", params(("id" = String, Path)), responses((status = 200, body = Object, description = "{\"success\": true}"), BadRequest, Unauthorized, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.delete_integration(&caller.team_id, &id).await.map_err(not_found(&id))?;
    Ok(Json(serde_json::json!({"success": true})))
}

/// `POST /integrations/{id}/webhook`: no API key; the signature is the credential. 202 with the run.
#[utoipa::path(post, path = "/integrations/{id}/webhook", tag = "integrations", params(("id" = String, Path), ("X-Oz-Timestamp" = i64, Header, description = "unix seconds"), ("X-Oz-Signature" = String, Header, description = "v1=<hex HMAC-SHA256(secret, timestamp.body)>")), request_body(content = String, content_type = "application/octet-stream"), responses((status = 202, body = WebhookAccepted), (status = 401, description = "Bad signature, stale or unknown", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Replayed delivery", body = Problem, content_type = "application/problem+json")))]
pub async fn deliver(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<(StatusCode, Json<WebhookAccepted>), ApiError> {
    // Unknown integrations and bad signatures look the same from outside.
    let refused = |why: &str| ApiError::unauthenticated(format!("the delivery was refused: {why}"));
    let integration =
        state.store.integration_by_id(&id).await?.ok_or_else(|| refused("the signature does not match"))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = Timestamp::now().as_second();
    let secret = if vault::is_sealed(&integration.secret) {
        state
            .keyring
            .open(&vault::integration_place(&integration.id), &integration.secret)
            .map_err(ApiError::internal)?
    } else {
        secrecy::SecretString::from(integration.secret.clone())
    };
    let secret = secrecy::ExposeSecret::expose_secret(&secret);
    webhook::verify(secret, header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER), &body, now).map_err(|e| match e {
        SignatureError::Malformed(m) => refused(m),
        other => refused(&other.to_string()),
    })?;
    if !integration.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::IntegrationDisabled,
            "the integration is disabled",
        ));
    }
    let signature = header(SIGNATURE_HEADER).unwrap_or_default().trim().to_owned();
    let at = Timestamp::now();
    let forget = at.checked_sub(jiff::SignedDuration::from_secs(2 * REPLAY_WINDOW_SECS)).unwrap_or(at);
    if !state.store.record_delivery(&integration.id, &signature, at, forget).await? {
        return Err(ApiError::conflict("this delivery was already received (a replay)"));
    }
    let payload = String::from_utf8_lossy(&body[..body.len().min(MAX_PAYLOAD_IN_PROMPT)]).into_owned();
    let prompt = if integration.prompt.contains("{{payload}}") {
        integration.prompt.replace("{{payload}}", &payload)
    } else if payload.trim().is_empty() {
        integration.prompt.clone()
    } else {
        format!("{}\n\nPayload:\n{payload}", integration.prompt)
    };
    let new = NewRun {
        prompt,
        title: Some(integration.name.clone()),
        config: integration.agent_config.clone(),
        source: "WEBHOOK".into(),
        creator_id: integration.created_by.clone(),
        schedule_id: None,
        parent_run_id: None,
        metadata: Some(serde_json::json!({"integration_id": integration.id})),
    };
    let run = creation::create(&state, &integration.team_id, new).await?;
    Ok((StatusCode::ACCEPTED, Json(WebhookAccepted { run_id: run.id })))
}
