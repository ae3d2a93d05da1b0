//! `/integrations` (our extension): named triggers, and `POST /integrations/{id}/webhook`, where a
//! signed delivery becomes a run.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use oz_core::failure::ErrorCode;
use std::collections::BTreeMap;

use oz_core::wire::api::{IntegrationItem, IntegrationRequest, ProviderSettings, WebhookAccepted};

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
    let root = format!("{}/api/v1/integrations/{}", state.public_url, i.id);
    let urls: BTreeMap<String, String> = match i.provider.as_ref().map(ProviderSettings::kind) {
        Some("slack") => [
            ("events", format!("{root}/slack/events")),
            ("commands", format!("{root}/slack/commands")),
            ("interactivity", format!("{root}/slack/interactivity")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        Some(kind) => [("webhook".to_owned(), format!("{root}/{kind}/webhook"))].into_iter().collect(),
        None => BTreeMap::new(),
    };
    let webhook_url = urls.get("events").or_else(|| urls.get("webhook")).cloned().unwrap_or(format!("{root}/webhook"));
    IntegrationItem {
        webhook_url,
        urls,
        id: i.id,
        name: i.name,
        kind: i.kind,
        enabled: i.enabled,
        prompt: i.prompt,
        agent_config: i.agent_config,
        provider: i.provider,
        secret: shown_secret,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

async fn validate(state: &AppState, team_id: &str, req: &IntegrationRequest) -> Result<(), ApiError> {
    if req.name.trim().is_empty() {
        return Err(ApiError::invalid("name is required"));
    }
    oz_core::validate::text("name", &req.name, 128, false).map_err(|e| ApiError::invalid(e.to_string()))?;
    if req.provider.is_none() && req.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt is required"));
    }
    oz_core::validate::text("prompt", &req.prompt, crate::api::runs::MAX_PROMPT_LEN, true)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(provider) = &req.provider {
        let environment = req.agent_config.as_ref().and_then(|c| c.environment_id.as_deref());
        validate_provider(state, team_id, provider, environment).await?;
    }
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

/// Where else the team secret `name` is used, if it is: a git provider's, a run's (an
/// environment's `secrets`, an agent config's `harness_auth_secrets`), or another kind of
/// integration's.
async fn used_elsewhere(state: &AppState, team_id: &str, name: &str) -> Result<Option<String>, ApiError> {
    if let Some((host, _)) =
        state.store.git_providers(team_id).await?.into_iter().find(|(_, p)| p.secret_names().contains(&name))
    {
        return Ok(Some(format!("the git provider of {host}'s")));
    }
    for environment in state.store.environments(team_id).await? {
        if environment.config.secrets.values().any(|n| n == name) {
            return Ok(Some(format!("handed to the runs of environment {:?}", environment.config.name)));
        }
    }
    Ok(None)
}

/// A provider's settings: the secrets they name exist, its API root is usable, and it says who may
/// trigger it where the provider has no notion of it.
async fn validate_provider(
    state: &AppState,
    team_id: &str,
    provider: &ProviderSettings,
    environment: Option<&str>,
) -> Result<(), ApiError> {
    let kind = provider.kind();
    for (field, name) in provider.secret_names() {
        if name.trim().is_empty() {
            return Err(ApiError::invalid(format!("provider.{field} is required: the name of a team secret")));
        }
        if state.store.secret(team_id, name).await?.is_none() {
            return Err(ApiError::invalid(format!(
                "provider.{field}: the team has no secret {name:?} (an admin sets it with PUT /secrets/{name} or `oz secret set {name}`)"
            )));
        }
        if let Some(used) = used_elsewhere(state, team_id, name).await? {
            return Err(ApiError::invalid(format!(
                "provider.{field}: the secret {name:?} is {used}; an integration sends its credentials to its provider, so it names secrets of its own"
            )));
        }
    }
    let base = match provider {
        ProviderSettings::Slack(s) => {
            if s.allowed_users.is_empty() && s.allowed_channels.is_empty() {
                return Err(ApiError::invalid(
                    "provider.allowed_users or provider.allowed_channels is required: who may start runs from Slack (allowed_users [\"*\"] for anyone in the workspace)",
                ));
            }
            s.api_base_url.as_deref()
        }
        ProviderSettings::Linear(l) => {
            if l.agent_user_id.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(ApiError::invalid(
                    "provider.agent_user_id is required: the Linear user the API key acts as (issues assigned to it start runs; its own comments are never requests)",
                ));
            }
            l.api_base_url.as_deref()
        }
        ProviderSettings::Github(g) => {
            if g.app_slug.trim().is_empty() || g.app.trim().is_empty() {
                return Err(ApiError::invalid("provider.app and provider.app_slug are required"));
            }
            if environment.is_none() {
                return Err(ApiError::invalid(
                    "agent_config.environment_id is required for GitHub: events are acted on only from the repositories its environment lists",
                ));
            }
            g.api_base_url.as_deref()
        }
    };
    let official = match provider {
        ProviderSettings::Slack(_) => crate::triggers::slack::SLACK_API,
        ProviderSettings::Linear(_) => crate::triggers::linear::LINEAR_API,
        ProviderSettings::Github(_) => oz_credentials::GITHUB_API,
    };
    crate::triggers::provider_api_url(&state.config, base, official)
        .map_err(|e| ApiError::invalid(format!("provider.api_base_url: {e}")))?;
    tracing::debug!(kind, "provider settings checked");
    Ok(())
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
    validate(&state, &caller.team_id, &req).await?;
    crate::sharing::check_template(&state, &caller.team_id, req.agent_config.as_ref()).await?;
    let now = Timestamp::now();
    let id = format!("int_{}", uuid::Uuid::new_v4().simple());
    // A provider signs with its own secret (a team secret the settings name): none is made here.
    let signing_secret = req
        .provider
        .is_none()
        .then(|| format!("whsec_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()));
    let sealed = state
        .keyring
        .seal(&vault::integration_place(&id), signing_secret.as_deref().unwrap_or(""))
        .map_err(ApiError::internal)?;
    let record = IntegrationRecord {
        id,
        team_id: caller.team_id,
        name: req.name,
        kind: req.provider.as_ref().map(ProviderSettings::kind).unwrap_or("webhook").into(),
        provider: req.provider,
        secret: sealed,
        enabled: req.enabled.unwrap_or(true),
        prompt: req.prompt,
        agent_config: req.agent_config,
        created_by: caller.user_id,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_integration(&record).await?;
    Ok(Json(item(&state, record, signing_secret)))
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
    validate(&state, &caller.team_id, &req).await?;
    crate::sharing::check_template(&state, &caller.team_id, req.agent_config.as_ref()).await?;
    let mut i = state
        .store
        .integration(&caller.team_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no integration {id:?}")))?;
    if req.provider.as_ref().map(ProviderSettings::kind).unwrap_or("webhook") != i.kind {
        return Err(ApiError::invalid(format!(
            "provider: this integration is a {} integration; its provider cannot change (make a new integration)",
            i.kind
        )));
    }
    i.provider = req.provider;
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
    let integration = state
        .store
        .integration_by_id(&id)
        .await?
        .filter(|i| i.provider.is_none())
        .ok_or_else(|| refused("the signature does not match"))?;
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
    // Kept as long as the providers' deliveries (one table): longer than the signature's window.
    let forget = at
        .checked_sub(crate::triggers::DELIVERY_MEMORY.max(jiff::SignedDuration::from_secs(2 * REPLAY_WINDOW_SECS)))
        .unwrap_or(at);
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
        trigger_url: None,
    };
    let run = match creation::create(&state, &integration.team_id, new).await {
        Ok(run) => run,
        Err(e) => {
            // Not acted on: the sender's retry must be able to.
            if let Err(forget) = state.store.forget_delivery(&integration.id, &signature).await {
                tracing::warn!(error = %forget, "a failed delivery could not be forgotten");
            }
            return Err(e.into());
        }
    };
    Ok((StatusCode::ACCEPTED, Json(WebhookAccepted { run_id: run.id })))
}
