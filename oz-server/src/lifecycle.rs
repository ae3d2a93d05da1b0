//! The one place a run's state changes: the oz-core state machine checks the move, the store applies
//! it only if nobody changed the run meanwhile, the change is recorded as an event (stored and
//! published live), and a run that ends has its workload tokens and git credentials revoked.

use std::sync::Arc;

use jiff::Timestamp;
use oz_core::run::RunState;
use oz_core::wire::api::RunItem;
use serde_json::json;

use crate::error::ApiError;
use crate::git_credentials::GitCredentialBroker;
use crate::hub::EventHub;
use crate::metrics::ServerMetrics;
use crate::store::{RunEventRecord, RunRecord, StateChange, Store, StoreError};

/// Changes runs' states and records their events.
#[derive(Clone)]
pub struct Lifecycle {
    store: Arc<dyn Store>,
    hub: EventHub,
    metrics: ServerMetrics,
    /// Striped per-run locks: a state change and its event are recorded together, so no other event
    /// of the run gets a sequence number between them (a runner's report cannot precede the state
    /// change that a reader already saw).
    stripes: Arc<[tokio::sync::Mutex<()>]>,
    /// The git credentials runs were issued, revoked when they end.
    credentials: GitCredentialBroker,
}

const STRIPES: usize = 64;

impl Lifecycle {
    /// Over a store and a hub.
    pub fn new(store: Arc<dyn Store>, hub: EventHub) -> Self {
        let stripes: Vec<tokio::sync::Mutex<()>> = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self {
            store,
            hub,
            metrics: ServerMetrics::default(),
            stripes: stripes.into(),
            credentials: GitCredentialBroker::default(),
        }
    }

    /// The git credentials runs hold.
    pub fn credentials(&self) -> &GitCredentialBroker {
        &self.credentials
    }

    /// The server's metrics (state changes are counted here).
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies `change` to the run `run_id`. A run whose cancel was answered ends CANCELLED, whatever
    /// end it was about to reach: the check and the cancel's record are ordered by the run's lock
    /// (see [`Lifecycle::request_cancel`]), so no cancel answered 200 is overtaken.
    pub async fn apply(&self, run_id: &str, mut change: StateChange) -> Result<RunRecord, ApiError> {
        change.from.transition(change.to).map_err(|e| ApiError::conflict(e.to_string()))?;
        let _ordered = self.stripe(run_id).lock().await;
        if matches!(change.to, RunState::Succeeded | RunState::Failed | RunState::Error)
            && self.store.run_by_id(run_id).await?.is_some_and(|r| r.cancel_requested)
        {
            let ended = change.to;
            let why = change.status_message.as_ref().map(|m| m.message.clone()).unwrap_or_default();
            change.to = RunState::Cancelled;
            change.status_message = Some(oz_core::wire::api::StatusMessage {
                message: format!("cancelled as asked (it ended {ended} first: {why})"),
                error_code: None,
                retryable: None,
                session_debug_until: None,
            });
            change.from.transition(change.to).map_err(|e| ApiError::conflict(e.to_string()))?;
        }
        let now = Timestamp::now();
        let run = self.store.change_state(run_id, &change, now).await.map_err(|e| match e {
            StoreError::StateChanged { expected, actual } => {
                ApiError::conflict(format!("the run is {actual} now, not {expected}")).retryable(true)
            }
            other => other.into(),
        })?;
        let mut body = json!({"event": "state", "state": run.state});
        if let Some(m) = &run.status_message {
            body["status_message"] = json!(m);
        }
        self.append(run_id, now, body).await?;
        // An ended run's tokens die with it; so do those of an attempt whose run went back to the
        // queue (the next attempt gets its own), so a stale attempt cannot report or resolve.
        if run.state.is_terminal() || run.state == RunState::Queued {
            self.store.revoke_tokens(run_id).await?;
            // The provider is asked off the request path; a failure is logged.
            let credentials = self.credentials.clone();
            let ended = run_id.to_owned();
            tokio::spawn(async move { credentials.revoke(&ended).await });
        }
        let age = std::time::Duration::try_from(now.duration_since(run.created_at)).unwrap_or_default();
        self.metrics.state_changed(run.state, age);
        tracing::info!(run_id, from = %change.from, to = %run.state, "run state changed");
        Ok(run)
    }

    /// Moves the run to `to` from whatever state it is in now, if the state machine allows that move;
    /// `Ok(None)` if it does not (for example, the run already ended).
    pub async fn advance(
        &self,
        run_id: &str,
        to: RunState,
        message: Option<String>,
    ) -> Result<Option<RunRecord>, ApiError> {
        for _ in 0..3 {
            let Some(run) = self.store.run_by_id(run_id).await? else {
                return Err(ApiError::not_found(format!("no run {run_id}")));
            };
            if !run.state.can_transition_to(to) {
                return Ok(None);
            }
            let mut change = StateChange::new(run.state, to);
            if let Some(m) = &message {
                change = change.message(m.clone());
            }
            if to == RunState::Queued {
                change.claimed_by = Some(None);
                change.lease_expires_at = Some(None);
            }
            match self.apply(run_id, change).await {
                Ok(run) => return Ok(Some(run)),
                Err(e) if e.status == axum::http::StatusCode::CONFLICT => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Stores an event of the run and publishes it live; returns its sequence number.
    pub async fn record(&self, run_id: &str, at: Timestamp, body: serde_json::Value) -> Result<i64, ApiError> {
        let _ordered = self.stripe(run_id).lock().await;
        self.append(run_id, at, body).await
    }

    fn stripe(&self, run_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(run_id);
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Records that run `run` is to be cancelled (and says so in its history), unless it ended
    /// meanwhile: then `Ok(Some(state))` with its end. Under the run's lock, so an end being applied
    /// either comes first (and the cancel is refused) or sees the cancel (and ends CANCELLED).
    pub async fn request_cancel(&self, run_id: &str, holder: &str) -> Result<Option<RunState>, ApiError> {
        let _ordered = self.stripe(run_id).lock().await;
        let current = self.store.run_by_id(run_id).await?.ok_or_else(|| ApiError::not_found("no such run"))?;
        if current.state.is_terminal() {
            return Ok(Some(current.state));
        }
        let now = Timestamp::now();
        self.store.request_cancel(run_id, now).await?;
        self.append(run_id, now, json!({"event": "cancel_requested", "worker_id": holder})).await?;
        Ok(None)
    }

    /// Records `body` in run `run_id`'s history unless the run has ended: then `Ok(Some(state))`
    /// with its end. Under the run's lock, as [`Lifecycle::request_cancel`]: an end being applied
    /// comes either before (and nothing is recorded) or after the record.
    pub async fn record_unless_ended(
        &self,
        run_id: &str,
        at: Timestamp,
        body: serde_json::Value,
    ) -> Result<Option<RunState>, ApiError> {
        let _ordered = self.stripe(run_id).lock().await;
        let current = self.store.run_by_id(run_id).await?.ok_or_else(|| ApiError::not_found("no such run"))?;
        if current.state.is_terminal() {
            return Ok(Some(current.state));
        }
        self.append(run_id, at, body).await?;
        Ok(None)
    }

    /// A follow-up to run `run_id`, decided under the run's lock (as a cancel is): to a run that has
    /// not ended, it is recorded for its running agent; to an ended run, if `may_continue` allows,
    /// it is recorded and continues the run in a new execution (QUEUED again, with the follow-up as
    /// what its agent is asked, its steering following from that event).
    pub async fn followup(
        &self,
        run_id: &str,
        followup: &oz_core::wire::api::FollowupEvent,
        may_continue: impl FnOnce(&RunRecord) -> Result<(), ApiError>,
    ) -> Result<Followed, ApiError> {
        let _ordered = self.stripe(run_id).lock().await;
        let current = self.store.run_by_id(run_id).await?.ok_or_else(|| ApiError::not_found("no such run"))?;
        let now = Timestamp::now();
        if !current.state.is_terminal() {
            self.append(run_id, now, followup.to_event()).await?;
            return Ok(Followed::ToTheRunningAgent(current));
        }
        may_continue(&current)?;
        let to = current.state.reopen().map_err(|e| ApiError::conflict(e.to_string()))?;
        let execution = current.execution_count + 1;
        let message = oz_core::wire::api::StatusMessage {
            message: format!("continued by a follow-up after it ended {}: execution {execution}", current.state),
            error_code: None,
            retryable: None,
            session_debug_until: None,
        };
        // The state change, its event and the follow-up's are stored in one transaction: a reader of
        // the history never sees the follow-up after the end without the run going on. The new
        // execution's steering starts after the follow-up, which is its prompt.
        let (run, events) = self.store.continue_run(run_id, current.state, followup, &message, now).await?;
        for event in events {
            self.hub.publish(event);
        }
        debug_assert_eq!(run.state, to);
        let age = std::time::Duration::try_from(now.duration_since(run.created_at)).unwrap_or_default();
        self.metrics.state_changed(run.state, age);
        tracing::info!(run_id, from = %current.state, to = %run.state, execution, "run continued by a follow-up");
        Ok(Followed::Continued(run))
    }

    /// Records a runner's report once: `false` if report `runner_seq` of `attempt` is stored already
    /// (a resend after a lost answer).
    pub async fn record_report(
        &self,
        run_id: &str,
        attempt: &str,
        runner_seq: u64,
        at: Timestamp,
        body: serde_json::Value,
    ) -> Result<bool, ApiError> {
        let _ordered = self.stripe(run_id).lock().await;
        let Some(seq) = self.store.append_report(run_id, attempt, runner_seq, at, &body).await? else {
            return Ok(false);
        };
        self.hub.publish(RunEventRecord { run_id: run_id.to_owned(), seq, at, body });
        Ok(true)
    }

    async fn append(&self, run_id: &str, at: Timestamp, body: serde_json::Value) -> Result<i64, ApiError> {
        let seq = self.store.append_event(run_id, at, &body).await?;
        self.hub.publish(RunEventRecord { run_id: run_id.to_owned(), seq, at, body });
        Ok(seq)
    }
}

/// What became of a follow-up ([`Lifecycle::followup`]).
#[derive(Debug)]
pub enum Followed {
    /// The run had not ended: its running agent gets it.
    ToTheRunningAgent(RunRecord),
    /// The run had ended: it goes on in a new execution, queued.
    Continued(RunRecord),
}

/// A stored run as the API shows it.
pub fn run_item(run: &RunRecord, public_url: &str) -> RunItem {
    let run_time = match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => {
            f.duration_since(s).try_into().ok().map(|d: std::time::Duration| format!("PT{:.3}S", d.as_secs_f64()))
        }
        _ => None,
    };
    RunItem {
        run_id: run.id.clone(),
        task_id: run.id.clone(),
        title: run.title.clone(),
        state: run.state,
        prompt: run.prompt.clone(),
        created_at: run.created_at,
        updated_at: run.updated_at,
        // A run with no worker host registered itself from where it runs (`POST /agent/runs/local`).
        execution_location: Some(if run.worker_host.is_some() { "REMOTE" } else { "LOCAL" }.into()),
        started_at: run.started_at,
        status_message: run.status_message.clone(),
        source: Some(run.source.clone()),
        schedule: None,
        session_id: (!run.session_id.is_empty()).then(|| run.session_id.clone()),
        session_link: (!run.session_id.is_empty()).then(|| crate::sharing::session_link(public_url, &run.session_id)),
        trigger_url: run.trigger_url.clone(),
        creator: run.creator_id.as_ref().map(|c| json!({"uid": c})),
        executor: run.worker_host.as_ref().map(|w| json!({"worker_id": w})),
        request_usage: None,
        agent_config: run.config.clone(),
        conversation_id: None,
        parent_run_id: run.parent_run_id.clone(),
        is_sandbox_running: Some(matches!(run.state, RunState::Claimed | RunState::InProgress | RunState::Blocked)),
        is_run_type_cancellable: Some(!run.state.is_terminal()),
        artifacts: (!run.artifacts.is_empty()).then(|| run.artifacts.clone()),
        agent_skill: None,
        scope: Some(oz_core::wire::api::Scope { kind: "Team".into(), uid: run.team_id.clone() }),
        metadata: run.metadata.as_ref().and_then(|m| serde_json::from_value(m.clone()).ok()),
        run_time,
    }
}
