//! Posting back: what becomes of a run a provider's event started goes back where it was asked for.
//! A status message is posted at once ("started, watch here"), updated as the run moves, and the
//! outcome (with its pull request) is posted when it ends; a run continued by a follow-up gets a new
//! status message. Progress is kept in the store ([`RunTriggerRecord`]): after a failure, and after a
//! restart, posting resumes at the step it stopped at. A provider that answers 429 or 5xx is tried
//! again with backoff (its `Retry-After` honoured); the run itself is never affected.

use std::time::Duration;

use jiff::Timestamp;
use oz_core::run::RunState;
use oz_core::wire::api::ProviderSettings;
use oz_core::wire::callbacks::Artifact;

use super::{TriggerError, github, linear, slack};
use crate::state::AppState;
use crate::store::{IntegrationRecord, RunRecord, RunTriggerRecord};

/// How many times one step is tried before it is given up (logged, and the next state posted).
const MAX_ATTEMPTS: u32 = 8;
/// The first retry's wait; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the poster looks again with nothing to wake it.
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// Runs the poster until the task is aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let changes = state.hub.state_changes();
        loop {
            let wait = match post_due(&state).await {
                Ok(()) => match state.store.next_postback_at().await {
                    Ok(Some(at)) => Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default(),
                    Ok(None) => IDLE_LOOK,
                    Err(e) => {
                        tracing::warn!(error = %e, "post-backs: the store failed");
                        Duration::from_secs(5)
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %oz_core::error::error_chain(&e), "post-backs: the store failed");
                    Duration::from_secs(5)
                }
            };
            let wait = wait.min(IDLE_LOOK);
            if !wait.is_zero() {
                tokio::select! {
                    _ = changes.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    })
}

/// Posts everything due now.
async fn post_due(state: &AppState) -> Result<(), TriggerError> {
    loop {
        let due = state.store.pending_postbacks(Timestamp::now(), 32).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut progressed = false;
        for trigger in due {
            let before = trigger.clone();
            let span =
                tracing::info_span!("postback", run_id = %trigger.run_id, integration_id = %trigger.integration_id);
            let after = tracing::Instrument::instrument(post_one(state, trigger), span).await?;
            progressed |= after.posted != before.posted;
        }
        if !progressed {
            return Ok(());
        }
    }
}

/// Where a run is, as far as the people who asked for it care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Queued, offered or claimed: not started yet.
    Waiting,
    /// Its agent works.
    Working,
    /// Its agent waits for an answer (the people who asked must act).
    Blocked,
    /// It ended.
    Ended,
}

impl Phase {
    fn of(state: RunState) -> Self {
        match state {
            s if s.is_terminal() => Phase::Ended,
            RunState::InProgress => Phase::Working,
            RunState::Blocked => Phase::Blocked,
            _ => Phase::Waiting,
        }
    }
}

/// `<execution>:<state>`, as `run_triggers.posted` keeps it.
fn marker(run: &RunRecord) -> String {
    format!("{}:{}", run.execution_count, run.state.as_str())
}

/// The phase a marker names, with its execution.
fn parse_marker(marker: Option<&str>) -> Option<(u32, Phase)> {
    let (execution, state) = marker?.split_once(':')?;
    Some((execution.parse().ok()?, Phase::of(state.parse().ok()?)))
}

/// One thing to post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Post the status message (its id is kept).
    CreateStatus,
    /// Edit the status message.
    UpdateStatus,
    /// Post the outcome as a new message (it notifies, where an edit does not).
    Outcome,
    /// Move the Linear issue to the configured state (a pull request was opened).
    MoveIssue,
}

/// What posting `run` takes after what `trigger` says was posted.
fn plan(trigger: &RunTriggerRecord, run: &RunRecord, settings: &ProviderSettings) -> Vec<Step> {
    let phase = Phase::of(run.state);
    let mut steps = Vec::new();
    if trigger.message_ref.is_none() || trigger.message_execution != run.execution_count {
        steps.push(Step::CreateStatus);
    } else if parse_marker(trigger.posted.as_deref()) != Some((run.execution_count, phase)) {
        steps.push(Step::UpdateStatus);
    }
    if phase == Phase::Ended {
        steps.push(Step::Outcome);
        let pull_request = run.artifacts.iter().any(|a| matches!(a, Artifact::PullRequest { .. }));
        if let ProviderSettings::Linear(l) = settings
            && l.pull_request_state_id.is_some()
            && pull_request
            && run.state == RunState::Succeeded
        {
            steps.push(Step::MoveIssue);
        }
    }
    steps
}

/// A run as its post-backs show it.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The run.
    pub(crate) run_id: String,
    /// Its state.
    pub(crate) state: RunState,
    /// Its phase.
    pub(crate) phase: Phase,
    /// Which execution.
    pub(crate) execution: u32,
    /// Its session, to watch and steer.
    pub(crate) session_link: String,
    /// Why it is where it is.
    pub(crate) detail: Option<String>,
    /// Its pull requests: (url, branch).
    pub(crate) pull_requests: Vec<(String, String)>,
    /// Its other artifacts, as links or names.
    pub(crate) other_artifacts: Vec<String>,
    /// How long it ran.
    pub(crate) run_time: Option<String>,
}

/// How links and emphasis are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Markup {
    /// Slack's mrkdwn: `<url|text>`, `*bold*`.
    Slack,
    /// Markdown (Linear, GitHub): `[text](url)`, `**bold**`.
    Markdown,
}

impl Markup {
    fn link(self, url: &str, text: &str) -> String {
        match self {
            Markup::Slack => format!("<{url}|{text}>"),
            Markup::Markdown => format!("[{text}]({url})"),
        }
    }

    fn bold(self, text: &str) -> String {
        match self {
            Markup::Slack => format!("*{text}*"),
            Markup::Markdown => format!("**{text}**"),
        }
    }
}

impl Progress {
    fn of(run: &RunRecord, public_url: &str) -> Self {
        let mut pull_requests = Vec::new();
        let mut other_artifacts = Vec::new();
        for artifact in &run.artifacts {
            match artifact {
                Artifact::PullRequest { url, branch } => pull_requests.push((url.clone(), branch.clone())),
                Artifact::ExternalReference { url, title, .. } => {
                    other_artifacts.push(if title.is_empty() { url.clone() } else { format!("{title}: {url}") })
                }
                Artifact::Screenshot { url } => other_artifacts.push(format!("screenshot: {url}")),
                Artifact::File { path, .. } => other_artifacts.push(format!("file: {path}")),
                Artifact::Plan { .. } => other_artifacts.push("a plan".to_owned()),
            }
        }
        let run_time = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => Duration::try_from(f.duration_since(s)).ok().map(|d| {
                let secs = d.as_secs();
                if secs >= 60 { format!("{}m {}s", secs / 60, secs % 60) } else { format!("{secs}s") }
            }),
            _ => None,
        };
        Progress {
            run_id: run.id.clone(),
            state: run.state,
            phase: Phase::of(run.state),
            execution: run.execution_count,
            session_link: crate::sharing::session_link(public_url, &run.session_id),
            detail: run.status_message.as_ref().map(|m| m.message.clone()).filter(|m| !m.trim().is_empty()),
            pull_requests,
            other_artifacts,
            run_time,
        }
    }

    fn state_words(&self) -> &'static str {
        match self.state {
            RunState::Queued | RunState::Pending => "⏳ Queued",
            RunState::Claimed => "⏳ Starting",
            RunState::InProgress => "🏃 Working",
            RunState::Blocked => "✋ Waiting for an answer",
            RunState::Succeeded => "✅ Done",
            RunState::Failed => "❌ Failed",
            RunState::Error => "⚠️ Stopped by an error",
            RunState::Cancelled => "🛑 Cancelled",
        }
    }

    /// The status message: where the run is and where to watch it.
    pub(crate) fn status_text(&self, markup: Markup) -> String {
        let again =
            if self.execution > 1 { format!(" (continued, execution {})", self.execution) } else { String::new() };
        let mut text = format!(
            "{}{again}: Oz is on it. {}",
            markup.bold(self.state_words()),
            markup.link(&self.session_link, "Watch and steer the session")
        );
        if self.phase == Phase::Ended {
            text =
                format!("{}{again}. {}", markup.bold(self.state_words()), markup.link(&self.session_link, "Session"));
        }
        text
    }

    /// The outcome: how the run ended, with what it produced.
    pub(crate) fn outcome_text(&self, markup: Markup) -> String {
        let mut text = markup.bold(self.state_words());
        if let Some(time) = &self.run_time {
            text.push_str(&format!(" after {time}"));
        }
        text.push('.');
        if let Some(detail) = &self.detail {
            text.push(' ');
            text.push_str(detail);
        }
        for (url, branch) in &self.pull_requests {
            text.push_str(&format!("\nPull request: {} (branch `{branch}`)", markup.link(url, url)));
        }
        for other in &self.other_artifacts {
            text.push_str(&format!("\n{other}"));
        }
        text.push_str(&format!("\n{}", markup.link(&self.session_link, "Session and transcript")));
        text
    }
}

/// A provider's poster.
pub(crate) enum Poster {
    /// Slack's Web API.
    Slack(slack::SlackApi),
    /// Linear's GraphQL API.
    Linear(linear::LinearApi),
    /// GitHub's REST API as the App.
    GitHub(Box<github::GitHubApi>),
}

impl Poster {
    async fn of(
        state: &AppState,
        integration: &IntegrationRecord,
        settings: &ProviderSettings,
    ) -> Result<Self, TriggerError> {
        Ok(match settings {
            ProviderSettings::Slack(s) => Poster::Slack(slack::SlackApi::of(state, integration, s).await?),
            ProviderSettings::Linear(s) => Poster::Linear(linear::LinearApi::of(state, integration, s).await?),
            ProviderSettings::Github(s) => {
                Poster::GitHub(Box::new(github::GitHubApi::of(state, integration, s).await?))
            }
        })
    }

    async fn step(
        &mut self,
        step: Step,
        trigger: &mut RunTriggerRecord,
        progress: &Progress,
        settings: &ProviderSettings,
    ) -> Result<(), TriggerError> {
        match self {
            Poster::Slack(api) => api.post(step, trigger, progress).await,
            Poster::Linear(api) => api.post(step, trigger, progress, settings).await,
            Poster::GitHub(api) => api.post(step, trigger, progress).await,
        }
    }
}

/// Posts what is due for one trigger; returns it as saved.
async fn post_one(state: &AppState, mut trigger: RunTriggerRecord) -> Result<RunTriggerRecord, TriggerError> {
    let Some(run) = state.store.run_by_id(&trigger.run_id).await? else { return Ok(trigger) };
    let current = marker(&run);
    if trigger.target.as_deref() != Some(current.as_str()) {
        trigger.target = Some(current.clone());
        trigger.steps_done = 0;
        trigger.attempts = 0;
    }
    let integration = state.store.integration_by_id(&trigger.integration_id).await?;
    let Some((integration, settings)) = integration.and_then(|i| i.provider.clone().map(|s| (i, s))) else {
        // Deleted: nowhere to post.
        settle(&mut trigger, current);
        state.store.save_postback(&trigger).await?;
        return Ok(trigger);
    };
    let steps = plan(&trigger, &run, &settings);
    let progress = Progress::of(&run, &state.public_url);
    let mut poster = match Poster::of(state, &integration, &settings).await {
        Ok(poster) => Some(poster),
        Err(e) => {
            if trigger.attempts + 1 >= MAX_ATTEMPTS {
                tracing::warn!(error = %oz_core::error::error_chain(&e), "post-backs for this state were given up");
                state.lifecycle.metrics().postback(&trigger.provider, "given_up");
                settle(&mut trigger, current);
            } else {
                failed(&mut trigger, &current, &e);
            }
            state.store.save_postback(&trigger).await?;
            return Ok(trigger);
        }
    };
    let skip = usize::try_from(trigger.steps_done).unwrap_or(usize::MAX);
    for step in steps.into_iter().skip(skip) {
        let Some(api) = poster.as_mut() else { break };
        match api.step(step, &mut trigger, &progress, &settings).await {
            Ok(()) => {
                state.lifecycle.metrics().postback(&trigger.provider, "posted");
                trigger.steps_done += 1;
                trigger.attempts = 0;
                trigger.next_attempt_at = None;
                state.store.save_postback(&trigger).await?;
            }
            Err(e) if e.retry_after().is_some() && trigger.attempts + 1 < MAX_ATTEMPTS => {
                state.lifecycle.metrics().postback(&trigger.provider, "retried");
                failed(&mut trigger, &current, &e);
                state.store.save_postback(&trigger).await?;
                return Ok(trigger);
            }
            Err(e) => {
                state.lifecycle.metrics().postback(&trigger.provider, "given_up");
                tracing::warn!(?step, error = %oz_core::error::error_chain(&e), "a post-back step was given up");
                trigger.steps_done += 1;
                trigger.attempts = 0;
                state.store.save_postback(&trigger).await?;
            }
        }
    }
    settle(&mut trigger, current);
    state.store.save_postback(&trigger).await?;
    Ok(trigger)
}

/// Records that `current` is fully posted.
fn settle(trigger: &mut RunTriggerRecord, current: String) {
    trigger.posted = Some(current);
    trigger.target = None;
    trigger.steps_done = 0;
    trigger.attempts = 0;
    trigger.next_attempt_at = None;
}

/// Records a failed attempt: the next one waits (as the provider asked, else with backoff); one
/// that cannot succeed by waiting gives the target up.
fn failed(trigger: &mut RunTriggerRecord, current: &str, e: &TriggerError) {
    let Some(asked) = e.retry_after() else {
        tracing::warn!(error = %oz_core::error::error_chain(e), "a post-back cannot be made; the run goes on");
        settle(trigger, current.to_owned());
        return;
    };
    trigger.attempts += 1;
    let backoff = FIRST_BACKOFF.saturating_mul(1 << trigger.attempts.min(16)).min(MAX_BACKOFF) / 2;
    let wait = asked.unwrap_or(backoff).max(Duration::from_millis(200));
    tracing::info!(attempt = trigger.attempts, wait = ?wait, error = %oz_core::error::error_chain(e), "a post-back will be tried again");
    trigger.next_attempt_at = Timestamp::now().checked_add(wait).ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_phase_of_an_execution() {
        assert_eq!(parse_marker(Some("1:QUEUED")), Some((1, Phase::Waiting)));
        assert_eq!(parse_marker(Some("2:INPROGRESS")), Some((2, Phase::Working)));
        assert_eq!(parse_marker(Some("3:SUCCEEDED")), Some((3, Phase::Ended)));
        assert_eq!(parse_marker(Some("x:QUEUED")), None);
        assert_eq!(parse_marker(None), None);
    }
}
