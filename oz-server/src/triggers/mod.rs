//! Triggers where people work: a Slack mention, a Linear issue, a GitHub comment becomes a run (or a
//! follow-up to the run already started there, or a cancel), and what becomes of that run is posted
//! back where it was asked for ([`postback`]).
//!
//! Each provider's module checks its request's signature on the raw body before anything is
//! parsed, decides what the event means ([`Decision`]), and the shared code here acts on it: a run
//! is stored in the same transaction as its delivery's id, so a provider's retry or a replay never
//! starts a second one, and a run that could not be stored leaves nothing that would stop the retry.
//! Credentials are team secrets named by the integration's settings, opened only when used.

pub mod github;
pub mod linear;
pub mod postback;
pub mod slack;

mod client;
mod signature;

use std::time::Duration;

use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use oz_core::failure::ErrorCode;
use oz_core::wire::api::{FollowupEvent, ProviderSettings};
use secrecy::SecretString;

use crate::creation::{self, NewRun};
use crate::error::ApiError;
use crate::lifecycle::Followed;
use crate::state::AppState;
use crate::store::{IntegrationRecord, RunRecord, RunTriggerRecord};
use crate::vault;

/// How long a delivery's id is remembered: longer than any provider retries or redelivers (Slack
/// within an hour, Linear up to six hours later, GitHub by hand for three days).
pub const DELIVERY_MEMORY: SignedDuration = SignedDuration::from_hours(80);

/// The largest request body a provider's endpoint reads (Slack's and Linear's are a few kilobytes,
/// GitHub's issue events rarely above a hundred).
pub const MAX_BODY: usize = 1024 * 1024;

/// How long fetching a trigger's context (a Slack thread, a Linear issue's comments) may take while
/// the provider waits for our answer (Slack gives 3 s); without it the run starts with what the
/// event carried.
const CONTEXT_TIMEOUT: Duration = Duration::from_millis(1500);

/// The longest prompt a trigger makes, in characters (the API's own limit is larger).
const MAX_TRIGGER_PROMPT: usize = 60_000;

/// The API root an integration's calls go to: the provider's own (`official`), or `configured`
/// when the operator allowed it (`ServerConfig::provider_api_urls`): an integration sends its
/// credentials there, so a team cannot choose where on its own.
pub fn provider_api_url(
    config: &crate::config::ServerConfig,
    configured: Option<&str>,
    official: &str,
) -> Result<reqwest::Url, String> {
    let Some(text) = configured.filter(|t| t.trim_end_matches('/') != official.trim_end_matches('/')) else {
        return client::base_url(official);
    };
    let url = client::base_url(text)?;
    if !config.provider_api_urls.iter().any(|allowed| !allowed.is_empty() && url.as_str().starts_with(allowed.as_str()))
    {
        return Err(format!(
            "{text:?} is not the provider's API; the server's operator must allow it first (oz-server --allow-provider-api-url)"
        ));
    }
    Ok(url)
}

/// [`provider_api_url`] as a trigger error.
pub(crate) fn api_root(
    state: &AppState,
    provider: &'static str,
    configured: Option<&str>,
    official: &str,
) -> Result<reqwest::Url, TriggerError> {
    provider_api_url(&state.config, configured, official).map_err(|detail| {
        TriggerError::Provider(client::CallError::Refused {
            provider,
            what: "settings",
            status: 0,
            detail,
            retryable: false,
            retry_after: None,
        })
    })
}

/// Why an integration's request was refused: as a bad signature, so that an unknown integration and
/// a forged request look the same from outside.
pub(crate) fn refused(why: &str) -> ApiError {
    ApiError::unauthenticated(format!("the delivery was refused: {why}"))
}

/// The integration `id` if it exists and is of `kind`, with its provider's settings.
pub(crate) async fn load(
    state: &AppState,
    id: &str,
    kind: &str,
) -> Result<(IntegrationRecord, ProviderSettings), ApiError> {
    let integration =
        state.store.integration_by_id(id).await?.ok_or_else(|| refused("the signature does not match"))?;
    match integration.provider.clone() {
        Some(settings) if settings.kind() == kind => Ok((integration, settings)),
        _ => Err(refused("the signature does not match")),
    }
}

/// A team secret an integration names, opened.
pub(crate) async fn team_secret(state: &AppState, team_id: &str, name: &str) -> Result<SecretString, TriggerError> {
    let record = state
        .store
        .secret(team_id, name)
        .await?
        .ok_or_else(|| TriggerError::MissingSecret { name: name.to_owned() })?;
    state
        .keyring
        .open(&vault::secret_place(team_id, name), &record.sealed)
        .map_err(|source| TriggerError::Sealed { name: name.to_owned(), source })
}

/// The signing secret named `name`, for checking a request not yet verified: whatever fails is an
/// opaque 503 (logged in full), so that nothing about the integration leaks to an unknown caller.
pub(crate) async fn signing_secret(
    state: &AppState,
    integration: &IntegrationRecord,
    name: &str,
) -> Result<SecretString, ApiError> {
    team_secret(state, &integration.team_id, name).await.map_err(|e| {
        tracing::warn!(integration_id = %integration.id, error = %oz_core::error::error_chain(&e), "an integration cannot verify its deliveries");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::InternalError, "the delivery cannot be verified now")
            .retryable(true)
    })
}

/// A string field of a provider's JSON, or `""`.
pub(crate) fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Checks a signature header holding `prefix` then the hex HMAC-SHA256 of the raw body under
/// `secret` (Linear's `Linear-Signature`, GitHub's `X-Hub-Signature-256: sha256=...`).
pub(crate) fn check_body_signature(
    secret: &SecretString,
    headers: &axum::http::HeaderMap,
    header: &'static str,
    prefix: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    use secrecy::ExposeSecret;
    let given =
        headers.get(header).and_then(|v| v.to_str().ok()).ok_or_else(|| refused(&format!("missing {header}")))?;
    let hex =
        given.trim().strip_prefix(prefix).ok_or_else(|| refused(&format!("{header} must start with {prefix:?}")))?;
    if signature::matches(secret.expose_secret().as_bytes(), &[body], hex) {
        Ok(())
    } else {
        Err(refused("the signature does not match"))
    }
}

/// Whether `text` says `handle` (`@oz`, `@my-app`) as a word: not `@ozzie`, `@oz-two` or
/// `me@oz.io`; `@oz,` and `@oz.` at a sentence's end are.
pub(crate) fn mentions(text: &str, handle: &str) -> bool {
    let wanted = handle.to_lowercase();
    if wanted.is_empty() {
        return false;
    }
    let lower = text.to_lowercase();
    let bytes = lower.as_bytes();
    let in_word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut from = 0;
    while let Some(at) = lower[from..].find(&wanted) {
        let start = from + at;
        let end = start + wanted.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = match bytes.get(end) {
            None => true,
            Some(b'.') => bytes.get(end + 1).is_none_or(|n| n.is_ascii_whitespace()),
            Some(b) => !in_word(*b),
        };
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

/// Why a trigger could not be acted on or a post-back could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// The integration names a secret the team does not have.
    #[error("the integration names the team secret {name:?}, which does not exist")]
    MissingSecret {
        /// The secret's name.
        name: String,
    },
    /// A secret could not be opened.
    #[error("the team secret {name:?} could not be opened")]
    Sealed {
        /// The secret's name.
        name: String,
        /// Why.
        #[source]
        source: vault::VaultError,
    },
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] crate::store::StoreError),
    /// The provider's API failed or refused.
    #[error(transparent)]
    Provider(#[from] client::CallError),
    /// The GitHub App could not mint an installation token.
    #[error("the GitHub App could not get an installation token")]
    Credentials(#[source] oz_credentials::CredentialError),
}

impl TriggerError {
    /// When to try again, if trying again may help.
    pub(crate) fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            TriggerError::Provider(e) => e.retry_after(),
            TriggerError::Store(_) => Some(None),
            TriggerError::Credentials(e) => match e {
                oz_credentials::CredentialError::Transport { .. } => Some(None),
                other => other.status().is_some_and(|s| s == 429 || s >= 500).then_some(None),
            },
            _ => None,
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Store(e) => e.into(),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::InternalError,
                format!("the integration cannot act now: {}", oz_core::error::error_chain(&other)),
            )
            .retryable(true),
        }
    }
}

/// What a provider's event asks for.
#[derive(Debug)]
pub(crate) enum Decision {
    /// A new run.
    Start(Start),
    /// A message to the run started in `thread_key`.
    FollowUp {
        /// Where it was written.
        thread_key: String,
        /// What was written.
        message: String,
        /// Who wrote it, as the provider names them.
        by: String,
    },
    /// Cancel the run started in `thread_key` (Linear's Stop).
    Cancel {
        /// Where the run was started.
        thread_key: String,
    },
    /// Nothing to do; why, for the answer and the log.
    Ignore(&'static str),
}

/// A run a provider's event starts.
#[derive(Debug)]
pub(crate) struct Start {
    /// The provider's id of this delivery (a retry or a replay carries the same).
    pub(crate) delivery: String,
    /// Where later messages to the run come from.
    pub(crate) thread_key: String,
    /// Where to post back, as the provider's module reads it.
    pub(crate) reply: serde_json::Value,
    /// What the person asked, with its context.
    pub(crate) request: String,
    /// The run's title.
    pub(crate) title: String,
    /// A link to what started it.
    pub(crate) trigger_url: Option<String>,
    /// Who asked, as the provider names them (kept in the run's metadata).
    pub(crate) by: String,
}

/// The run's prompt: the integration's instructions, if any, then the request.
fn prompt(instructions: &str, request: &str) -> String {
    let text = if instructions.trim().is_empty() {
        request.to_owned()
    } else {
        format!("{}\n\n{request}", instructions.trim_end())
    };
    text.chars().take(MAX_TRIGGER_PROMPT).collect()
}

/// Stores the run `start` asks for, with its trigger, unless its delivery was seen before (then
/// `None`). `source` is the run's source (`SLACK`, `LINEAR`, `GITHUB_WEBHOOK`).
pub(crate) async fn start_run(
    state: &AppState,
    integration: &IntegrationRecord,
    source: &str,
    start: Start,
) -> Result<Option<RunRecord>, ApiError> {
    let new = NewRun {
        prompt: prompt(&integration.prompt, &start.request),
        title: Some(start.title.chars().take(120).collect()),
        config: integration.agent_config.clone(),
        source: source.to_owned(),
        creator_id: integration.created_by.clone(),
        schedule_id: None,
        parent_run_id: None,
        metadata: Some(serde_json::json!({"integration_id": integration.id, "requested_by": start.by})),
        trigger_url: start.trigger_url,
    };
    let run = creation::prepare(state, &integration.team_id, new).await?;
    let provider = integration.provider.as_ref().map(ProviderSettings::kind).unwrap_or("webhook");
    let trigger = RunTriggerRecord {
        run_id: run.id.clone(),
        integration_id: integration.id.clone(),
        provider: provider.to_owned(),
        thread_key: start.thread_key,
        reply: start.reply,
        posted: None,
        target: None,
        steps_done: 0,
        message_ref: None,
        message_execution: 0,
        attempts: 0,
        next_attempt_at: None,
        created_at: run.created_at,
    };
    let forget = run.created_at.checked_sub(DELIVERY_MEMORY).unwrap_or(run.created_at);
    if !state.store.insert_triggered_run(&run, &trigger, &start.delivery, forget).await? {
        tracing::info!(integration_id = %integration.id, delivery = %start.delivery, "a delivery seen before: no second run");
        return Ok(None);
    }
    tracing::info!(integration_id = %integration.id, run_id = %run.id, source, "an integration's event started a run");
    state.lifecycle.metrics().run_created(&run.source);
    state.dispatcher.wake();
    state.hub.state_changes().notify_one();
    Ok(Some(run))
}

/// What became of a follow-up from a provider.
#[derive(Debug)]
pub(crate) enum FollowUpOutcome {
    /// It reached the run (running, or continued after its end).
    Sent(String),
    /// No run of this integration was started there.
    NoRun,
    /// Its delivery was seen before.
    Duplicate,
}

/// Sends `message` to the run this integration started in `thread_key`, once per `delivery`. A run
/// that ended is continued (in a new execution, posted back like its first).
pub(crate) async fn follow_up(
    state: &AppState,
    integration: &IntegrationRecord,
    delivery: &str,
    thread_key: &str,
    message: String,
    by: String,
) -> Result<FollowUpOutcome, ApiError> {
    let Some(trigger) = state.store.run_trigger_in_thread(&integration.id, thread_key).await? else {
        return Ok(FollowUpOutcome::NoRun);
    };
    let message: String = message.trim().chars().take(MAX_TRIGGER_PROMPT).collect();
    if message.is_empty() {
        return Err(ApiError::invalid("the message is empty"));
    }
    // Continuing a run that ended makes it unfinished again: the team's cap applies, as to a new one.
    if let Some(run) = state.store.run_by_id(&trigger.run_id).await?
        && run.state.is_terminal()
    {
        let active = state.store.unfinished_runs(&integration.team_id).await?;
        state.run_limiter.admit(active)?;
    }
    let now = Timestamp::now();
    let forget = now.checked_sub(DELIVERY_MEMORY).unwrap_or(now);
    if !state.store.record_delivery(&integration.id, delivery, now, forget).await? {
        return Ok(FollowUpOutcome::Duplicate);
    }
    // The integration speaks for its creator, whose runs these are.
    let event = FollowupEvent { message, mode: None, by: integration.created_by.clone() };
    match state.lifecycle.followup(&trigger.run_id, &event, |_| Ok(())).await {
        Ok(Followed::ToTheRunningAgent(run)) => {
            tracing::info!(run_id = %run.id, by, "a provider's message reached a running agent");
            Ok(FollowUpOutcome::Sent(run.id))
        }
        Ok(Followed::Continued(run)) => {
            state.dispatcher.wake();
            tracing::info!(run_id = %run.id, by, "a provider's message continued a run that had ended");
            Ok(FollowUpOutcome::Sent(run.id))
        }
        Err(e) => {
            // Not acted on: the provider's retry must be able to.
            if let Err(forget) = state.store.forget_delivery(&integration.id, delivery).await {
                tracing::warn!(error = %forget, "a failed follow-up's delivery could not be forgotten");
            }
            Err(e)
        }
    }
}

/// Acts on `decision` (the caller has checked the integration is enabled): the answer's JSON body
/// says what was done.
pub(crate) async fn act(
    state: &AppState,
    integration: &IntegrationRecord,
    source: &str,
    delivery: &str,
    decision: Decision,
) -> Result<serde_json::Value, ApiError> {
    Ok(match decision {
        Decision::Ignore(why) => {
            tracing::debug!(integration_id = %integration.id, why, "an integration's event was ignored");
            serde_json::json!({"ignored": why})
        }
        Decision::Start(start) => match start_run(state, integration, source, start).await {
            Ok(Some(run)) => serde_json::json!({"run_id": run.id}),
            Ok(None) => serde_json::json!({"ignored": "this delivery was already received"}),
            Err(e) => refusal(integration, e)?,
        },
        Decision::Cancel { thread_key } => match state.store.run_trigger_in_thread(&integration.id, &thread_key).await?
        {
            Some(trigger) => match cancel(state, &trigger.run_id).await {
                Ok(()) => serde_json::json!({"cancelled": trigger.run_id}),
                Err(e) => serde_json::json!({"ignored": e.detail}),
            },
            None => serde_json::json!({"ignored": "no run was started here"}),
        },
        Decision::FollowUp { thread_key, message, by } => {
            match follow_up(state, integration, delivery, &thread_key, message, by).await {
                Ok(FollowUpOutcome::Sent(run_id)) => serde_json::json!({"followed_up": run_id}),
                Ok(FollowUpOutcome::NoRun) => serde_json::json!({"ignored": "no run was started here"}),
                Ok(FollowUpOutcome::Duplicate) => serde_json::json!({"ignored": "this delivery was already received"}),
                Err(e) => refusal(integration, e)?,
            }
        }
    })
}

/// A refusal that retrying cannot change (the team at its cap of runs, a run that cannot be
/// continued) is acknowledged, so the provider does not retry or count the endpoint as failing;
/// anything else (the store failing) is an error the provider retries.
fn refusal(integration: &IntegrationRecord, e: ApiError) -> Result<serde_json::Value, ApiError> {
    if e.status.is_client_error() {
        tracing::warn!(integration_id = %integration.id, status = %e.status, detail = %e.detail, "an integration's request was refused");
        Ok(serde_json::json!({"ignored": e.detail}))
    } else {
        Err(e)
    }
}

/// Cancels run `run_id` for a provider's user (a Slack button): as `POST /agent/runs/{id}/cancel`,
/// without a caller's access check (the provider's allow-list was checked).
pub(crate) async fn cancel(state: &AppState, run_id: &str) -> Result<(), ApiError> {
    crate::api::runs::cancel_run(state, run_id).await
}
