//! Building a `task_assignment` for a run: the task, its agent config, the environment's image and
//! variables, and a freshly minted workload token for this run only.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use oz_core::runner::env as runner_env;
use oz_core::wire::worker::{AgentConfigSnapshot, AssignedTask, Owner, OwnerType, TaskAssignment, TaskDefinition};

use crate::error::ApiError;
use crate::secrets;
use crate::store::{RunRecord, Store, WorkloadTokenRecord};

/// Mints and stores a workload token for `run` (good for it only, for `token_ttl` at most; revoked
/// when it ends); returns its text, which is never stored.
pub async fn mint_token(store: &dyn Store, run: &RunRecord, token_ttl: Duration) -> Result<String, ApiError> {
    let minted = secrets::mint(secrets::WORKLOAD_TOKEN_PREFIX);
    let ttl = jiff::SignedDuration::try_from(token_ttl).unwrap_or(jiff::SignedDuration::from_hours(24));
    store
        .insert_token(&WorkloadTokenRecord {
            id: minted.id.clone(),
            run_id: run.id.clone(),
            team_id: run.team_id.clone(),
            secret_hash: minted.hash.clone(),
            expires_at: Timestamp::now().checked_add(ttl).unwrap_or(Timestamp::MAX),
            revoked: false,
        })
        .await?;
    Ok(minted.text)
}

/// Builds the assignment of `run` (attempt `execution_id`), minting and storing its workload token.
pub async fn build(
    store: &dyn Store,
    run: &RunRecord,
    execution_id: &str,
    public_url: &str,
    token_ttl: Duration,
) -> Result<TaskAssignment, ApiError> {
    let config = run.config.clone().unwrap_or_default();
    let environment = match &config.environment_id {
        Some(id) => store.environment(&run.team_id, id).await?,
        None => None,
    };
    let token = mint_token(store, run, token_ttl).await?;
    let mut env_vars: BTreeMap<String, String> =
        environment.as_ref().map(|e| e.config.env_vars.clone()).unwrap_or_default();
    env_vars.insert(runner_env::WORKLOAD_TOKEN.into(), token);
    if !public_url.is_empty() {
        env_vars.insert(runner_env::SERVER_ROOT_URL.into(), public_url.to_owned());
    }
    Ok(TaskAssignment {
        task_id: run.id.clone(),
        execution_id: Some(execution_id.to_owned()),
        task: AssignedTask {
            id: run.id.clone(),
            title: run.title.clone(),
            // What its agent is asked in this execution: a continued run's follow-up.
            task_definition: TaskDefinition {
                prompt: run.continuation.as_ref().map_or_else(|| run.prompt.clone(), |c| c.followup.message.clone()),
            },
            created_at: run.created_at,
            updated_at: run.updated_at,
            owner: Owner { kind: OwnerType::Team, id: run.team_id.clone() },
            // The conversation a continued run's agent goes on with (its runner fetches it).
            agent_conversation_id: run.continuation.as_ref().map(|_| run.id.clone()),
            agent_config_snapshot: Some(AgentConfigSnapshot {
                environment_id: config.environment_id.clone(),
                base_prompt: config.base_prompt.clone(),
                model_id: config.model_id.clone(),
                profile_id: None,
                skill_spec: config.skill_spec.clone(),
                mcp_servers: config.mcp_servers.as_ref().map(|m| serde_json::json!(m)),
                computer_use_enabled: config.computer_use_enabled,
                idle_timeout_minutes: config.idle_timeout_minutes,
                harness: config.harness.clone(),
                harness_auth_secrets: config.harness_auth_secrets.clone(),
                inference_providers: config.inference_providers.clone(),
                session_sharing: config.session_sharing.clone(),
            }),
        },
        docker_image: environment.as_ref().and_then(|e| e.config.docker_image.clone()),
        sidecar_image: None,
        env_vars,
        additional_sidecars: Vec::new(),
        additional_oz_args: Vec::new(),
        instance_shape: None,
    })
}
