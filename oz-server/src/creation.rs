//! Making runs, whatever asks for one: the API (`POST /agent/runs`, follow-ups), a schedule's tick,
//! an integration's webhook. The callers parse and check their own input; this module resolves the
//! worker host, checks the environment, and stores the run QUEUED.

use jiff::Timestamp;
use oz_core::run::RunState;
use oz_core::wire::api::{AgentConfig, StatusMessage};

use crate::dispatch::ws::validate_worker_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{RunRecord, StoreError};

/// What a new run is made from.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    /// The prompt.
    pub prompt: String,
    /// A title; defaults to the start of the prompt.
    pub title: Option<String>,
    /// The agent config (its `worker_host` is resolved against the server's default).
    pub config: Option<AgentConfig>,
    /// `API`, `SCHEDULED_AGENT`, ...
    pub source: String,
    /// Who asked.
    pub creator_id: Option<String>,
    /// The schedule that made it.
    pub schedule_id: Option<String>,
    /// The run that started it.
    pub parent_run_id: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// What started it, as a link (a provider's message, issue or comment).
    pub trigger_url: Option<String>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreationError {
    /// The run cannot be made as asked (no worker host, an unknown environment); the message names
    /// the field at fault and is meant for the caller (the API answers 400 with it).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the store failed while making the run: {0}")]
    Store(#[from] StoreError),
    /// The team is at its cap of unfinished runs (`crate::limits`); the API answers 429.
    #[error("{0}")]
    Limited(#[source] Box<ApiError>),
}

impl From<CreationError> for ApiError {
    fn from(e: CreationError) -> Self {
        match e {
            CreationError::Invalid(detail) => ApiError::invalid(detail),
            CreationError::Store(e) => e.into(),
            CreationError::Limited(e) => *e,
        }
    }
}

/// Builds a QUEUED run for `team_id` without storing it: resolves and checks the worker host,
/// checks the environment belongs to the team, and says in its status message what it waits for.
/// The scheduler stores it itself, in the transaction that moves the schedule to its next tick.
pub async fn prepare(state: &AppState, team_id: &str, new: NewRun) -> Result<RunRecord, CreationError> {
    prepare_for(state, team_id, new, Placement::Worker).await
}

/// Where a run runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On the worker its config names (or the server's default).
    Worker,
    /// Where the runner that registers it runs (`POST /agent/runs/local`).
    Local,
}

async fn prepare_for(
    state: &AppState,
    team_id: &str,
    new: NewRun,
    placement: Placement,
) -> Result<RunRecord, CreationError> {
    let mut config = new.config.unwrap_or_default();
    let worker_host = match (placement, config.worker_host.as_deref()) {
        (Placement::Local, None) => None,
        (Placement::Local, Some(_)) => {
            return Err(CreationError::Invalid(
                "config.worker_host must be absent: a local run runs where it registered".into(),
            ));
        }
        (Placement::Worker, None | Some("warp")) => {
            Some(state.config.default_worker_host.clone().ok_or_else(|| {
                CreationError::Invalid(
                    "config.worker_host is required: this server runs agents on self-hosted workers only".into(),
                )
            })?)
        }
        (Placement::Worker, Some(host)) => Some(host.to_owned()),
    };
    if let Some(host) = &worker_host {
        validate_worker_id(host).map_err(|e| CreationError::Invalid(format!("config.worker_host: {}", e.detail)))?;
    }
    config.worker_host = worker_host.clone();
    if let Some(env_id) = &config.environment_id
        && state.store.environment(team_id, env_id).await?.is_none()
    {
        return Err(CreationError::Invalid(format!("config.environment_id: there is no environment {env_id:?}")));
    }
    let active = state.store.unfinished_runs(team_id).await?;
    state.run_limiter.admit(active).map_err(|e| CreationError::Limited(Box::new(e)))?;
    let references = crate::secret_references::of_config(&config);
    crate::secret_references::check(state.store.as_ref(), team_id, &references).await.map_err(|e| match e {
        crate::secret_references::Refused::Store(e) => CreationError::Store(e),
        refused => CreationError::Invalid(refused.to_string()),
    })?;
    let sharing = crate::sharing::resolve(state, team_id, &config, "config").await.map_err(|e| match e {
        crate::sharing::ResolveError::Invalid(detail) => CreationError::Invalid(detail),
        crate::sharing::ResolveError::Store(e) => CreationError::Store(e),
    })?;
    let now = Timestamp::now();
    let title = new.title.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| new.prompt.chars().take(80).collect());
    let waiting = match &worker_host {
        None => "registered by its runner".to_owned(),
        Some(host) if state.dispatcher.connections(team_id, host) > 0 => format!("waiting for worker {host}"),
        Some(host) => format!("waiting for worker {host}: no worker with this id is connected"),
    };
    Ok(RunRecord {
        id: uuid::Uuid::new_v4().to_string(),
        team_id: team_id.to_owned(),
        creator_id: new.creator_id,
        title,
        prompt: new.prompt,
        state: RunState::Queued,
        source: new.source,
        worker_host,
        config: Some(config),
        status_message: Some(StatusMessage {
            message: waiting,
            error_code: None,
            retryable: None,
            session_debug_until: None,
        }),
        artifacts: Vec::new(),
        metadata: new.metadata,
        schedule_id: new.schedule_id,
        parent_run_id: new.parent_run_id,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        execution_id: None,
        claimed_by: None,
        lease_expires_at: None,
        cancel_requested: false,
        session_id: uuid::Uuid::new_v4().simple().to_string(),
        sharing,
        execution_count: 1,
        continuation: None,
        trigger_url: new.trigger_url,
    })
}

/// Registers a run that its runner runs where it is (an unmanaged `oz agent run`): stored, claimed
/// at once by that runner (no worker is ever offered it; its lease is renewed by its reports and
/// heartbeats), with a workload token for the runner, which is returned (never stored).
pub async fn register_local(state: &AppState, team_id: &str, new: NewRun) -> Result<(RunRecord, String), ApiError> {
    let run = prepare_for(state, team_id, new, Placement::Local).await?;
    state.store.insert_run(&run).await?;
    state.lifecycle.metrics().run_created(&run.source);
    match claim_local(state, &run.id).await {
        Ok(claimed) => Ok(claimed),
        Err(e) => {
            // No worker will ever take it: a run left QUEUED here would wait forever.
            if let Err(end) = state
                .lifecycle
                .advance(&run.id, RunState::Error, Some("its registration could not be completed".into()))
                .await
            {
                tracing::warn!(run_id = %run.id, error = %end, "a local run whose registration failed could not be ended");
            }
            Err(e)
        }
    }
}

async fn claim_local(state: &AppState, run_id: &str) -> Result<(RunRecord, String), ApiError> {
    let mut change = crate::store::StateChange::new(RunState::Queued, RunState::Claimed)
        .message("running where it registered (an unmanaged oz agent run)");
    change.claimed_by = Some(Some(LOCAL_HOLDER.to_owned()));
    change.execution_id = Some(uuid::Uuid::new_v4().to_string());
    let lease =
        jiff::SignedDuration::try_from(state.config.lease_timeout).unwrap_or(jiff::SignedDuration::from_secs(90));
    change.lease_expires_at = Some(Some(Timestamp::now().checked_add(lease).unwrap_or(Timestamp::MAX)));
    let run = state.lifecycle.apply(run_id, change).await?;
    let token = crate::dispatch::assignment::mint_token(state.store.as_ref(), &run, state.config.token_ttl).await?;
    Ok((run, token))
}

/// Who holds a local run (`claimed_by`): its own runner, not a worker (no worker id has an `@`).
pub const LOCAL_HOLDER: &str = "@local-runner";

/// Prepares the run, stores it, counts it and wakes dispatch, which offers it to its worker.
pub async fn create(state: &AppState, team_id: &str, new: NewRun) -> Result<RunRecord, CreationError> {
    let run = prepare(state, team_id, new).await?;
    state.store.insert_run(&run).await?;
    state.lifecycle.metrics().run_created(&run.source);
    state.dispatcher.wake();
    Ok(run)
}
