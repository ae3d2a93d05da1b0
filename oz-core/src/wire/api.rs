//! REST API bodies under `/api/v1`, field for field as the Oz Agent API names them. Optional fields are
//! omitted when absent; unknown fields are ignored on input.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::environment::EnvironmentConfig;
use crate::run::RunState;
use crate::wire::callbacks::Artifact;
use crate::wire::worker::HarnessConfig;

/// The largest page `GET /agent/runs` returns.
pub const MAX_PAGE_LIMIT: u32 = 500;
/// The page size when none is asked for.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
/// At most this many attachments per run request.
pub const MAX_ATTACHMENTS: usize = 5;
/// At most this many metadata keys per run request.
pub const MAX_METADATA_KEYS: usize = 20;

/// `AmbientAgentConfig`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// A name for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// A prompt prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_prompt: Option<String>,
    /// The environment to run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// A skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spec: Option<String>,
    /// Skills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills: Option<Vec<serde_json::Value>>,
    /// MCP servers by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<BTreeMap<String, serde_json::Value>>,
    /// Computer use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_enabled: Option<bool>,
    /// 1..=60 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<u32>,
    /// `warp` or absent = hosted; otherwise a self-hosted worker id, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_host: Option<String>,
    /// The harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessConfig>,
    /// Harness auth secret names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_auth_secrets: Option<serde_json::Value>,
    /// Inference providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_providers: Option<serde_json::Value>,
    /// A runner id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// Who may watch and steer the run's session ([`crate::sharing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sharing: Option<crate::sharing::SessionSharing>,
    /// `CREATOR` or `EXECUTOR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_strategy: Option<String>,
}

/// An attachment of a run request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file name.
    pub file_name: String,
    /// Its MIME type.
    pub mime_type: String,
    /// Its content, base64.
    pub data: String,
}

/// `RunAgentRequest`, the body of `POST /agent/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunAgentRequest {
    /// What to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A skill to run instead of a prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
    /// The agent's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AgentConfig>,
    /// A title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Run for the team rather than the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<bool>,
    /// The agent identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_identity_uid: Option<String>,
    /// A conversation to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Up to five files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    /// The run that started this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// Interactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
    /// Up to 20 keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
    /// `normal`, `plan`, `orchestrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The 200 body of `POST /agent/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCreated {
    /// The run.
    pub run_id: String,
    /// The same id (deprecated).
    pub task_id: String,
    /// Its state.
    pub state: RunState,
    /// Whether the team is at capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_capacity: Option<bool>,
}

/// A run's status message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// The message.
    pub message: String,
    /// An error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Whether retrying may help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Until when a debug session is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_debug_until: Option<Timestamp>,
}

/// A run's schedule.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSchedule {
    /// The schedule.
    pub schedule_id: String,
    /// Its name.
    pub schedule_name: String,
    /// Its cron expression.
    pub cron_schedule: String,
}

/// Who a run is scoped to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// `User` or `Team`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user's or team's id.
    pub uid: String,
}

/// `RunItem`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunItem {
    /// The run.
    pub run_id: String,
    /// The same id.
    pub task_id: String,
    /// Its title.
    pub title: String,
    /// Its state.
    pub state: RunState,
    /// Its prompt.
    pub prompt: String,
    /// Created.
    pub created_at: Timestamp,
    /// Updated.
    pub updated_at: Timestamp,
    /// `LOCAL` or `REMOTE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_location: Option<String>,
    /// When the agent started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Why it is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<StatusMessage>,
    /// `API`, `SCHEDULED_AGENT`, `SLACK`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The schedule that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<RunSchedule>,
    /// Session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Session link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_link: Option<String>,
    /// What triggered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_url: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<serde_json::Value>,
    /// Who runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<serde_json::Value>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_usage: Option<serde_json::Value>,
    /// The agent config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// Conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Parent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// Whether the sandbox runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_sandbox_running: Option<bool>,
    /// Whether it can be cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_run_type_cancellable: Option<bool>,
    /// What it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<Artifact>>,
    /// The skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_skill: Option<serde_json::Value>,
    /// Its scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
    /// How long it ran, ISO-8601 (`PT1M3.5S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time: Option<String>,
}

/// Cursor pagination.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    /// Whether there is more.
    pub has_next_page: bool,
    /// The cursor of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The body of `GET /agent/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    /// This page.
    pub runs: Vec<RunItem>,
    /// Pagination.
    pub page_info: PageInfo,
}

/// `POST /agent/runs/{id}/followups`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupRequest {
    /// The message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `normal`, `plan`, `orchestrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A follow-up to a run that has not ended, as its event stream carries it (`"event": "followup"`):
/// the running agent is to get `message`. See `oz_core::runner::env::FOLLOWUP_FILE`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupEvent {
    /// What the person wrote.
    pub message: String,
    /// `normal`, `plan`, `orchestrate`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The user who wrote it, when a user did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl FollowupEvent {
    /// The event's kind in a run's stream.
    pub const KIND: &'static str = "followup";

    /// The event body as stored in the run's stream.
    pub fn to_event(&self) -> serde_json::Value {
        steering_event(self, Self::KIND)
    }
}

/// `POST /agent/runs/local` (our extension): an unmanaged `oz agent run` registers the run it is
/// about to run on its own machine, so that it is tracked, watched, steered and cancelled like a
/// managed one (`execution_location: LOCAL`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalRunRequest {
    /// What the agent is asked.
    pub prompt: String,
    /// A title; defaults to the start of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `CLI` (the default), `GITHUB_ACTION` or `LOCAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its environment, model, harness and session sharing (`worker_host` must be absent: it runs
    /// where it registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AgentConfig>,
}

/// The answer to `POST /agent/runs/local`: the run, and the workload token its runner reports
/// with (shown once; good for this run only).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRunCreated {
    /// The run's id.
    pub run_id: String,
    /// The run's workload token.
    pub workload_token: String,
    /// Where to watch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_link: Option<String>,
}

impl std::fmt::Debug for LocalRunCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRunCreated")
            .field("run_id", &self.run_id)
            .field("workload_token", &"<redacted>")
            .field("session_link", &self.session_link)
            .finish()
    }
}

/// `value` as a run's stream stores it: its fields, and `"event": kind`.
fn steering_event(value: &impl Serialize, kind: &str) -> serde_json::Value {
    let mut body = serde_json::to_value(value).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("event".into(), kind.into());
    }
    body
}

/// A cancel asked of a run, as its event stream carries it (`"event": "cancel_requested"`); a
/// runner that registered its own run follows these to stop (a managed run's worker stops it).
pub const CANCEL_REQUESTED: &str = "cancel_requested";

/// An interrupt of a run's running agent, as its event stream carries it (`"event": "interrupt"`):
/// the runner sends SIGINT to the harness's process group (what Ctrl-C in a terminal does), so the
/// agent stops what it is doing now; a harness that handles the signal goes on with the session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptEvent {
    /// The user who asked, when a user did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl InterruptEvent {
    /// The event's kind in a run's stream.
    pub const KIND: &'static str = "interrupt";

    /// The event body as stored in the run's stream.
    pub fn to_event(&self) -> serde_json::Value {
        steering_event(self, Self::KIND)
    }
}

/// Keys an editor typed into a run's live terminal (the session WebSocket's `input` message), as
/// its event stream carries them (`"event": "input"`): the runner writes `data` to the harness's
/// terminal, as a keyboard would (Enter is `\r`, Ctrl-C is `\x03`). Kept in the transcript like a
/// follow-up.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEvent {
    /// The keys, as the bytes a terminal sends for them (UTF-8).
    pub data: String,
    /// The user who typed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl InputEvent {
    /// The event's kind in a run's stream.
    pub const KIND: &'static str = "input";

    /// The event body as stored in the run's stream.
    pub fn to_event(&self) -> serde_json::Value {
        steering_event(self, Self::KIND)
    }
}

/// What a person sends a running agent, as its runner follows them in the run's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Steering {
    /// A message for the agent.
    Followup(FollowupEvent),
    /// Stop the current step.
    Interrupt(InterruptEvent),
    /// Keys for the agent's terminal.
    Input(InputEvent),
    /// Stop the run (someone cancelled it).
    Cancel,
}

impl Steering {
    /// The event kinds a runner follows (`?event=` of the run's event stream).
    pub const KINDS: &'static str = "followup,interrupt,input,cancel_requested";
}

/// `POST /agent/schedules`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleCreate {
    /// Its name.
    pub name: String,
    /// 5-field cron, UTC.
    pub cron_schedule: String,
    /// The prompt (required unless a skill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The agent config of its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// For the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<bool>,
    /// Our extension: an IANA time zone for the cron expression (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `PUT /agent/schedules/{id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleUpdate {
    /// Its name.
    pub name: String,
    /// 5-field cron, UTC.
    pub cron_schedule: String,
    /// Whether it fires.
    pub enabled: bool,
    /// The prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The agent config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// Our extension: an IANA time zone for the cron expression (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// When a schedule ran and will run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleHistory {
    /// Last time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ran: Option<Timestamp>,
    /// Next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Timestamp>,
}

/// A schedule.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleItem {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron_schedule: String,
    /// Whether it fires.
    pub enabled: bool,
    /// The prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The last error when spawning a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_spawn_error: Option<String>,
    /// The agent config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// Its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_json::Value>,
    /// Created.
    pub created_at: Timestamp,
    /// Updated.
    pub updated_at: Timestamp,
    /// Creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<serde_json::Value>,
    /// Last updater.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<serde_json::Value>,
    /// Last and next run.
    pub history: ScheduleHistory,
    /// Scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Our extension: an IANA time zone for the cron expression (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `CloudEnvironment`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEnvironment {
    /// Its id.
    pub uid: String,
    /// Its configuration.
    pub config: EnvironmentConfig,
    /// Last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Timestamp>,
    /// Whether setup failed last time.
    #[serde(default)]
    pub setup_failed: bool,
    /// When a run last used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task_run_timestamp: Option<Timestamp>,
    /// Scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<serde_json::Value>,
}

/// The body of `GET /agent/environments`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentList {
    /// All of them.
    pub environments: Vec<CloudEnvironment>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_request_round_trips_the_oz_shape() {
        let body = json!({
            "prompt": "fix it",
            "title": "t",
            "config": {"environment_id": "env-1", "worker_host": "my-worker", "harness": {"type": "codex"}, "idle_timeout_minutes": 5},
            "metadata": {"k": "v"},
            "unknown_future": true
        });
        let req: RunAgentRequest = serde_json::from_value(body).unwrap();
        let config = req.config.as_ref().unwrap();
        assert_eq!(config.worker_host.as_deref(), Some("my-worker"));
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"prompt": "fix it", "title": "t",
                "config": {"environment_id": "env-1", "worker_host": "my-worker", "harness": {"type": "codex"}, "idle_timeout_minutes": 5},
                "metadata": {"k": "v"}})
        );
    }

    #[test]
    fn run_created_and_items_pin_their_fields() {
        let created =
            RunCreated { run_id: "r".into(), task_id: "r".into(), state: RunState::Queued, at_capacity: None };
        assert_eq!(serde_json::to_value(&created).unwrap(), json!({"run_id": "r", "task_id": "r", "state": "QUEUED"}));
        let item = json!({
            "run_id": "r", "task_id": "r", "title": "t", "state": "INPROGRESS", "prompt": "p",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
            "status_message": {"message": "waiting for worker w"}, "artifacts": [{"artifact_type": "PLAN", "content": "x"}],
            "scope": {"type": "Team", "uid": "team-1"}, "brand_new": 1
        });
        let parsed: RunItem = serde_json::from_value(item.clone()).unwrap();
        assert_eq!(parsed.state, RunState::InProgress);
        let mut expected = item;
        expected.as_object_mut().unwrap().remove("brand_new");
        assert_eq!(serde_json::to_value(&parsed).unwrap(), expected);
        let list = RunList { runs: vec![], page_info: PageInfo { has_next_page: false, next_cursor: None } };
        assert_eq!(serde_json::to_value(&list).unwrap(), json!({"runs": [], "page_info": {"has_next_page": false}}));
    }

    #[test]
    fn schedules_and_environments_pin_their_fields() {
        let create: ScheduleCreate =
            serde_json::from_value(json!({"name": "n", "cron_schedule": "0 * * * *", "prompt": "p"})).unwrap();
        assert_eq!(create.enabled, None);
        assert!(serde_json::from_value::<ScheduleCreate>(json!({"name": "n"})).is_err());
        assert!(serde_json::from_value::<ScheduleUpdate>(json!({"name": "n", "cron_schedule": "* * * * *"})).is_err());
        let env = json!({"environments": [{"uid": "e1", "config": {"name": "api", "github_repos": [{"owner": "a", "repo": "b"}], "setup_commands": []}, "setup_failed": false}]});
        let parsed: EnvironmentList = serde_json::from_value(env.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), env);
    }
}

/// Our extension: `POST /integrations` and `PUT /integrations/{id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrationRequest {
    /// Its name.
    pub name: String,
    /// For a generic webhook, the prompt of its runs (required): `{{payload}}` is replaced by the
    /// delivery's body, else the body is appended. For a provider, optional instructions put before
    /// what the person wrote.
    #[serde(default)]
    pub prompt: String,
    /// The agent config of its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The provider it listens to (Slack, Linear, GitHub); absent: a generic signed webhook. Fixed at
    /// creation: an update may change the settings, not the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSettings>,
}

/// Our extension: a provider's settings. Credentials are never given here: each `*_secret` field
/// names a team secret (`PUT /secrets/{name}`) holding the value, read when it is needed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderSettings {
    /// A Slack app: mentions, thread replies, `/oz`, buttons.
    Slack(SlackSettings),
    /// A Linear workspace: assigned or labelled issues, mentions in their comments.
    Linear(LinearSettings),
    /// A GitHub App: `@app` comments and labelled issues.
    Github(GitHubSettings),
}

impl ProviderSettings {
    /// `slack`, `linear` or `github`: the integration's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSettings::Slack(_) => "slack",
            ProviderSettings::Linear(_) => "linear",
            ProviderSettings::Github(_) => "github",
        }
    }

    /// Every team secret it names, with the field naming it.
    pub fn secret_names(&self) -> Vec<(&'static str, &str)> {
        match self {
            ProviderSettings::Slack(s) => {
                vec![("signing_secret", s.signing_secret.as_str()), ("bot_token_secret", s.bot_token_secret.as_str())]
            }
            ProviderSettings::Linear(s) => {
                vec![("webhook_secret", s.webhook_secret.as_str()), ("api_key_secret", s.api_key_secret.as_str())]
            }
            ProviderSettings::Github(s) => {
                vec![
                    ("webhook_secret", s.webhook_secret.as_str()),
                    ("private_key_secret", s.private_key_secret.as_str()),
                ]
            }
        }
    }
}

/// A Slack app's settings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackSettings {
    /// The team secret holding the app's signing secret (Basic Information, App Credentials).
    pub signing_secret: String,
    /// The team secret holding the bot token (`xoxb-...`).
    pub bot_token_secret: String,
    /// Slack user ids (`U...`) who may start and steer runs; `*` for anyone in the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// Channel ids (`C...`) where anyone may start and steer runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_channels: Vec<String>,
    /// The Slack workspace (`T...`) events must come from; others are ignored (an app distributed
    /// to several workspaces signs all their events with one secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The Web API's root; default `https://slack.com/api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

/// A Linear workspace's settings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearSettings {
    /// The team secret holding the webhook's signing secret.
    pub webhook_secret: String,
    /// The team secret holding the API key the agent's user posts with.
    pub api_key_secret: String,
    /// The agent's Linear user id (the API key's user, required): an issue assigned to it starts
    /// a run, and its own comments are never taken as requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_user_id: Option<String>,
    /// A label's name: an issue given it starts a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What a comment says to reach the agent (default `@oz`): such a comment on an issue with a
    /// run is a follow-up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mention: Option<String>,
    /// The workflow state the issue moves to when its run opens a pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_state_id: Option<String>,
    /// Linear user ids who may trigger it; empty or `*`: anyone in the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// The Linear workspace (`organizationId`) webhooks must come from; others are ignored (an
    /// OAuth app's webhook fires for every workspace that installed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// The API's root; default `https://api.linear.app` (GraphQL at `/graphql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

/// A GitHub App's settings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubSettings {
    /// The team secret holding the App's webhook secret.
    pub webhook_secret: String,
    /// The App's id (or client id).
    pub app: String,
    /// The team secret holding the App's private key (PEM).
    pub private_key_secret: String,
    /// The App's slug: comments that say `@<slug>` reach the agent.
    pub app_slug: String,
    /// A label's name: an issue given it starts a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// GitHub logins who may trigger it besides the repository's owners, members and collaborators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// The REST API's root; default `https://api.github.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

/// Our extension: an integration (a named trigger fired by signed webhooks).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrationItem {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `webhook`, `slack`, `linear` or `github`.
    pub kind: String,
    /// Whether deliveries make runs.
    pub enabled: bool,
    /// The prompt of its runs.
    pub prompt: String,
    /// The agent config of its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<AgentConfig>,
    /// Its provider's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSettings>,
    /// Where to POST signed deliveries (for Slack: its Events API request URL).
    pub webhook_url: String,
    /// Every URL to give the provider, by purpose (Slack: `events`, `commands`, `interactivity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub urls: BTreeMap<String, String>,
    /// The signing secret: present only in the response that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Updated.
    pub updated_at: Timestamp,
}

/// Our extension: the answer to an accepted webhook delivery.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAccepted {
    /// The run it started.
    pub run_id: String,
}

/// Our extension: one event of `GET /agent/runs/{id}/events` (Server-Sent Events; the SSE `id` is
/// `seq`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStreamEvent {
    /// Its position in the run's stream, from 1.
    pub seq: i64,
    /// When it happened.
    pub at: Timestamp,
    /// The run.
    pub run_id: String,
    /// The event: `{"event": "state", "state": ..., "status_message": ...}` for state changes, else a
    /// runner report (`output`, `artifact`, `finished`, ...).
    pub event: serde_json::Value,
}

impl RunStreamEvent {
    /// The event's kind (`state`, `output`, `finished`, ...).
    pub fn kind(&self) -> &str {
        self.event.get("event").and_then(|k| k.as_str()).unwrap_or("")
    }
    /// For a state change, the new state.
    pub fn state(&self) -> Option<RunState> {
        (self.kind() == "state")
            .then(|| self.event.get("state").and_then(|s| serde_json::from_value(s.clone()).ok()))
            .flatten()
    }
    /// For a runner report, the report.
    pub fn runner_report(&self) -> Option<crate::wire::callbacks::RunnerReport> {
        (self.kind() != "state").then(|| serde_json::from_value(self.event.clone()).ok()).flatten()
    }
    /// For a follow-up to the running agent, the follow-up.
    pub fn followup(&self) -> Option<FollowupEvent> {
        (self.kind() == FollowupEvent::KIND).then(|| serde_json::from_value(self.event.clone()).ok()).flatten()
    }
    /// For a follow-up or an interrupt of the running agent, which.
    pub fn steering(&self) -> Option<Steering> {
        match self.kind() {
            FollowupEvent::KIND => self.followup().map(Steering::Followup),
            InterruptEvent::KIND => serde_json::from_value(self.event.clone()).ok().map(Steering::Interrupt),
            InputEvent::KIND => serde_json::from_value(self.event.clone()).ok().map(Steering::Input),
            CANCEL_REQUESTED => Some(Steering::Cancel),
            _ => None,
        }
    }
}
