//! `/agent/environments`: list (as Oz), and our extension: create, get, update, delete.

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use oz_core::environment::EnvironmentConfig;
use oz_core::wire::api::{CloudEnvironment, EnvironmentList, Scope};

#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Member, Principal, RunToken, WorkerCredential};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::EnvironmentRecord;

fn cloud(env: EnvironmentRecord) -> CloudEnvironment {
    CloudEnvironment {
        uid: env.id,
        config: env.config,
        last_updated: Some(env.updated_at),
        // Set by the handlers from what the workers say of their warm pools.
        setup_failed: false,
        last_task_run_timestamp: None,
        scope: Some(Scope { kind: "Team".into(), uid: env.team_id }),
        creator: env.creator_id.map(|c| serde_json::json!({"uid": c})),
    }
}

fn validated(config: EnvironmentConfig) -> Result<EnvironmentConfig, ApiError> {
    config.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(config)
}

/// Every secret an environment names exists in its team (a run would otherwise fail to start).
async fn check_secrets(state: &AppState, team_id: &str, config: &EnvironmentConfig) -> Result<(), ApiError> {
    let references = crate::secret_references::of_environment(config);
    Ok(crate::secret_references::check(state.store.as_ref(), team_id, &references).await?)
}

/// The one environment a workload token may read: its run's (none if the run names none).
async fn run_environment(state: &AppState, token: &RunToken) -> Result<Option<String>, ApiError> {
    let run = state.store.run(&token.team_id, &token.run_id).await?;
    Ok(run.and_then(|r| r.config).and_then(|c| c.environment_id))
}

/// `GET /agent/environments` (API key: the team's environments; a run's workload token: its run's
/// environment only).
#[utoipa::path(get, path = "/agent/environments", tag = "environments", responses((status = 200, body = EnvironmentList), BadRequest, Unauthorized))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<EnvironmentList>, ApiError> {
    let mut envs = state.store.environments(principal.team_id()).await?;
    if let Principal::Run(token) = &principal {
        let own = run_environment(&state, token).await?;
        envs.retain(|e| own.as_deref() == Some(e.id.as_str()));
    }
    let failing = state.dispatcher.failing_environments(principal.team_id());
    let environments = envs
        .into_iter()
        .map(|e| {
            let failed = failing.contains(&e.id);
            CloudEnvironment { setup_failed: failed, ..cloud(e) }
        })
        .collect();
    Ok(Json(EnvironmentList { environments }))
}

/// `POST /agent/environments`.
#[utoipa::path(post, path = "/agent/environments", tag = "environments", request_body = EnvironmentConfig, responses((status = 200, body = CloudEnvironment), BadRequest, Unauthorized))]
pub async fn create(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiJson(config): ApiJson<EnvironmentConfig>,
) -> Result<Json<CloudEnvironment>, ApiError> {
    let config = validated(config)?;
    check_secrets(&state, &caller.team_id, &config).await?;
    let now = Timestamp::now();
    let record = EnvironmentRecord {
        id: format!("env_{}", uuid::Uuid::new_v4().simple()),
        team_id: caller.team_id,
        config,
        creator_id: caller.user_id,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_environment(&record).await?;
    Ok(Json(cloud(record)))
}

/// `GET /agent/environments/{id}`.
#[utoipa::path(get, path = "/agent/environments/{id}", tag = "environments", params(("id" = String, Path)), responses((status = 200, body = CloudEnvironment), BadRequest, Unauthorized, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CloudEnvironment>, ApiError> {
    let not_found = || ApiError::not_found(format!("there is no environment {id:?}"));
    if let Principal::Run(token) = &principal
        && run_environment(&state, token).await?.as_deref() != Some(id.as_str())
    {
        return Err(not_found());
    }
    let env = state.store.environment(principal.team_id(), &id).await?.ok_or_else(not_found)?;
    let failed = state.dispatcher.failing_environments(principal.team_id()).contains(&env.id);
    Ok(Json(CloudEnvironment { setup_failed: failed, ..cloud(env) }))
}

/// `GET /selfhosted/worker/environments/{id}`: an environment of the worker credential's team, for
/// the worker's warm pools (which prepare it before any task, so no run's token can fetch it). The
/// configuration names its secrets; their values are never in it.
#[utoipa::path(get, path = "/selfhosted/worker/environments/{id}", tag = "workers", params(("id" = String, Path)), responses((status = 200, body = CloudEnvironment), BadRequest, Unauthorized, NotFound))]
pub async fn for_worker(
    State(state): State<AppState>,
    credential: WorkerCredential,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CloudEnvironment>, ApiError> {
    let env = state
        .store
        .environment(&credential.team_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no environment {id:?}")))?;
    Ok(Json(cloud(env)))
}

/// `POST /selfhosted/worker/environments/{id}/git-credentials`: read-only, short-lived git
/// credentials for the repositories of an environment of the worker credential's team, for the
/// worker's own git (its mirrors, its warm pools' HEAD checks), so that a private repository can be
/// mirrored and warmed with no credential in any sandbox. Empty when the team has no git provider
/// for the environment's host.
#[utoipa::path(post, path = "/selfhosted/worker/environments/{id}/git-credentials", tag = "workers", params(("id" = String, Path)), responses((status = 200, body = oz_core::wire::callbacks::PreparationCredentials), BadRequest, Unauthorized, NotFound))]
pub async fn preparation_credentials(
    State(state): State<AppState>,
    credential: WorkerCredential,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<oz_core::wire::callbacks::PreparationCredentials>, ApiError> {
    let env = state
        .store
        .environment(&credential.team_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no environment {id:?}")))?;
    let git_credentials = state
        .lifecycle
        .credentials()
        .issue_for_preparation(state.store.as_ref(), &state.keyring, &credential.team_id, &env.id, &env.config)
        .await?;
    tracing::info!(environment = %env.id, worker_key = %credential.key_id, issued = git_credentials.len(), "preparation git credentials");
    Ok(Json(oz_core::wire::callbacks::PreparationCredentials { git_credentials }))
}

/// `PUT /agent/environments/{id}`.
#[utoipa::path(put, path = "/agent/environments/{id}", tag = "environments", params(("id" = String, Path)), request_body = EnvironmentConfig, responses((status = 200, body = CloudEnvironment), BadRequest, Unauthorized, NotFound))]
pub async fn update(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
    ApiJson(config): ApiJson<EnvironmentConfig>,
) -> Result<Json<CloudEnvironment>, ApiError> {
    let config = validated(config)?;
    check_secrets(&state, &caller.team_id, &config).await?;
    state.store.update_environment(&caller.team_id, &id, &config, Timestamp::now()).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found(format!("there is no environment {id:?}")),
        other => other.into(),
    })?;
    // Its preparation credential was issued for what it was: the next ask gets one for what it is.
    state.lifecycle.credentials().forget_environment(&caller.team_id, &id).await;
    get(State(state), Principal::Key(caller), ApiPath(id)).await
}

/// `DELETE /agent/environments/{id}`: `{"success": true}`.
#[utoipa::path(delete, path = "/agent/environments/{id}", tag = "environments", params(("id" = String, Path)), responses((status = 200, body = Object, description = "{\"success\": true}"), BadRequest, Unauthorized, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    Member(caller): Member,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.delete_environment(&caller.team_id, &id).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found(format!("there is no environment {id:?}")),
        other => other.into(),
    })?;
    state.lifecycle.credentials().forget_environment(&caller.team_id, &id).await;
    Ok(Json(serde_json::json!({"success": true})))
}
