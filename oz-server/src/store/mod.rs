//! Persistence: the [`Store`] trait the rest of the server uses, and its records. SQLite is the
//! embedded default ([`sqlite::SqliteStore`]); the trait is what a PostgreSQL store implements next.
//!
//! Everything that must survive a restart lives here: teams and keys, environments, runs (which are
//! also the queue), their events, workload tokens, and dispatch leases.

pub mod sqlite;

use async_trait::async_trait;
use jiff::Timestamp;
use oz_core::environment::EnvironmentConfig;
use oz_core::run::RunState;
use oz_core::wire::admin::{GitProvider, KeyKind, PrincipalKind, Role};
use oz_core::wire::api::{AgentConfig, StatusMessage};
use oz_core::wire::callbacks::Artifact;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database's folder or file could not be made.
    #[error("could not create {path}: {source}")]
    Create {
        /// What.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The schema could not be brought up to date (a migration failed, or an applied one differs
    /// from its file).
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {what}: {message}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A compare-and-set found another state than expected.
    #[error("the run is {actual}, not {expected}")]
    StateChanged {
        /// What the caller expected.
        expected: RunState,
        /// What it is.
        actual: RunState,
    },
    /// Nothing with that id.
    #[error("not found")]
    NotFound,
}

/// A team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A user or service account of a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Its id.
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// Person or service account.
    pub kind: PrincipalKind,
    /// Its role in the team.
    pub role: Role,
    /// Disabled users' keys are refused.
    pub disabled: bool,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A stored credential (the secret itself is never stored, only its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The key's public id (the part before the secret).
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// The user it acts as; `None` for keys made before users had roles (they act as an admin).
    pub user_id: Option<String>,
    /// A name to recognize it by.
    pub name: String,
    /// API key or worker credential.
    pub kind: KeyKind,
    /// Its role ceiling (`None`: its user's role).
    pub role: Option<Role>,
    /// The worker ids a worker credential may connect as.
    pub worker_ids: Vec<String>,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// May create teams (`POST /admin/teams`).
    pub server_admin: bool,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working by itself.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

impl ApiKeyRecord {
    /// A fresh key with no user, role, workers or expiry (fill in what applies).
    pub fn new(id: impl Into<String>, team_id: impl Into<String>, secret_hash: Vec<u8>) -> Self {
        Self {
            id: id.into(),
            team_id: team_id.into(),
            user_id: None,
            name: String::new(),
            kind: KeyKind::Api,
            role: None,
            worker_ids: Vec::new(),
            secret_hash,
            server_admin: false,
            created_at: Timestamp::now(),
            expires_at: None,
            revoked_at: None,
        }
    }
}

/// A key as authentication sees it: the key and, if it acts as a user, that user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyWithUser {
    /// The key.
    pub key: ApiKeyRecord,
    /// Its user, if any.
    pub user: Option<UserRecord>,
}

/// A dashboard sign-in: what a browser's cookie names. It acts as its API key, which is checked on
/// every request; the cookie's secret exists only in the browser (this keeps its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignInRecord {
    /// Its public id.
    pub id: String,
    /// The API key it acts as.
    pub key_id: String,
    /// SHA-256 of the cookie's secret.
    pub secret_hash: Vec<u8>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working by itself.
    pub expires_at: Timestamp,
}

/// A stored environment.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentRecord {
    /// Its id.
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its configuration.
    pub config: EnvironmentConfig,
    /// Who made it.
    pub creator_id: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// A stored run. Runs are also the queue: a QUEUED run is waiting for a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// Its id (also its task id).
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Who asked for it.
    pub creator_id: Option<String>,
    /// Its title.
    pub title: String,
    /// Its prompt.
    pub prompt: String,
    /// Its state.
    pub state: RunState,
    /// Where it came from (`API`, `SCHEDULED_AGENT`, ...).
    pub source: String,
    /// The worker id it must run on; `None` = hosted (not served here).
    pub worker_host: Option<String>,
    /// Its agent config.
    pub config: Option<AgentConfig>,
    /// Why it is where it is.
    pub status_message: Option<StatusMessage>,
    /// What it produced.
    pub artifacts: Vec<Artifact>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// The schedule that made it.
    pub schedule_id: Option<String>,
    /// The run that started it.
    pub parent_run_id: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// When the agent started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The current attempt's id.
    pub execution_id: Option<String>,
    /// The worker id that holds it (PENDING, CLAIMED, INPROGRESS).
    pub claimed_by: Option<String>,
    /// Until when the worker's hold is good without news from it.
    pub lease_expires_at: Option<Timestamp>,
    /// Whether someone asked to cancel it.
    pub cancel_requested: bool,
    /// Its session's id: what its session link names (random, not the run id).
    pub session_id: String,
    /// Who besides its team's admins may watch or steer it.
    pub sharing: oz_core::sharing::RunSharing,
    /// Which execution it is in: 1, then one more each time a follow-up continued it after its end.
    pub execution_count: u32,
    /// The follow-up that continued it after its end, while that execution is the current one.
    pub continuation: Option<RunContinuation>,
    /// What started it, as a link (the Slack message, the Linear issue, the GitHub comment).
    pub trigger_url: Option<String>,
}

/// The follow-up that continued a run after its end: its message is what the agent is asked in the
/// new execution, and its author (`by`) is whom that execution runs for (its executor, whose git
/// credentials act under the `EXECUTOR` strategy).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunContinuation {
    /// The follow-up, as the run's history records it.
    #[serde(flatten)]
    pub followup: oz_core::wire::api::FollowupEvent,
    /// The run's event that recorded the follow-up; the new execution's steering comes after it.
    pub after_seq: i64,
}

/// Filters of `GET /agent/runs`.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Any of these states.
    pub states: Vec<RunState>,
    /// By agent name.
    pub name: Option<String>,
    /// By model.
    pub model_id: Option<String>,
    /// By creator.
    pub creator: Option<String>,
    /// By source.
    pub source: Option<String>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
    /// Updated at or after.
    pub updated_after: Option<Timestamp>,
    /// By environment.
    pub environment_id: Option<String>,
    /// By schedule.
    pub schedule_id: Option<String>,
    /// Children of this run.
    pub ancestor_run_id: Option<String>,
    /// Free text in title or prompt.
    pub q: Option<String>,
    /// Only the runs this user may see by their sharing (`None`: every run of the team, as an admin
    /// sees them).
    pub visible_to: Option<RunViewer>,
}

/// A non-admin listing runs: it sees its team's runs that are shared with the team, public, its
/// own, or shared with it by name.
#[derive(Clone, Debug, Default)]
pub struct RunViewer {
    /// Its user (`None`: a key with no user sees only what is shared with the team or public).
    pub user_id: Option<String>,
}

/// How to order a run list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunSort {
    /// By last change.
    UpdatedAt,
    /// By creation (the default).
    #[default]
    CreatedAt,
    /// By title.
    Title,
    /// By agent name.
    Agent,
}

/// A page request: after the row with `(sort value, id)` in the cursor.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// Sort key.
    pub sort: RunSort,
    /// Descending?
    pub descending: bool,
    /// At most this many.
    pub limit: u32,
    /// Continue after this row: its sort value and id.
    pub after: Option<(SortValue, String)>,
}

/// A sort value in a cursor.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    /// A time, in microseconds.
    Micros(i64),
    /// A text.
    Text(String),
}

/// One event of a run (the transcript and the live stream).
#[derive(Clone, Debug, PartialEq)]
pub struct RunEventRecord {
    /// The run.
    pub run_id: String,
    /// Its position in the run's stream, from 1.
    pub seq: i64,
    /// When it happened.
    pub at: Timestamp,
    /// The event as JSON.
    pub body: serde_json::Value,
}

impl RunEventRecord {
    /// The event's kind (`state`, `output`, `followup`, ...); empty if it has none.
    pub fn kind(&self) -> &str {
        self.body.get("event").and_then(|k| k.as_str()).unwrap_or("")
    }

    /// The run's end, if this is its terminal state change.
    pub fn terminal_state(&self) -> Option<oz_core::run::RunState> {
        if self.kind() != "state" {
            return None;
        }
        let state = self.body.get("state")?.as_str()?.parse::<oz_core::run::RunState>().ok()?;
        state.is_terminal().then_some(state)
    }
}

/// A stored workload token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadTokenRecord {
    /// The token's public id.
    pub id: String,
    /// The one run it is for.
    pub run_id: String,
    /// The run's team.
    pub team_id: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// When it stops being valid.
    pub expires_at: Timestamp,
    /// Whether it was revoked (its run ended).
    pub revoked: bool,
}

/// A state change, applied only if the run is still in `from` (compare-and-set). The caller has
/// checked the move with [`RunState::transition`].
#[derive(Clone, Debug)]
pub struct StateChange {
    /// The state the caller saw.
    pub from: RunState,
    /// The state to move to.
    pub to: RunState,
    /// A new status message (`None` keeps the old one).
    pub status_message: Option<StatusMessage>,
    /// Who holds the run now (`Some(None)` clears it).
    pub claimed_by: Option<Option<String>>,
    /// The new execution id, if it changes.
    pub execution_id: Option<String>,
    /// The lease deadline (`Some(None)` clears it).
    pub lease_expires_at: Option<Option<Timestamp>>,
}

impl StateChange {
    /// A bare change from `from` to `to`.
    pub fn new(from: RunState, to: RunState) -> Self {
        Self { from, to, status_message: None, claimed_by: None, execution_id: None, lease_expires_at: None }
    }
    /// With a status message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.status_message = Some(StatusMessage {
            message: message.into(),
            error_code: None,
            retryable: None,
            session_debug_until: None,
        });
        self
    }
}

/// Teams, their users and service accounts, and credentials.
#[async_trait]
pub trait PrincipalStore: Send + Sync + 'static {
    /// Creates a team.
    async fn create_team(&self, team: &TeamRecord) -> Result<(), StoreError>;
    /// Every team, oldest first.
    async fn teams(&self) -> Result<Vec<TeamRecord>, StoreError>;
    /// A team by id.
    async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreError>;
    /// Creates a user (or service account).
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// A user of a team.
    async fn user(&self, team_id: &str, id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The team's users, oldest first.
    async fn users(&self, team_id: &str) -> Result<Vec<UserRecord>, StoreError>;
    /// Changes a user's role or disabled flag.
    async fn update_user(&self, team_id: &str, id: &str, role: Role, disabled: bool) -> Result<(), StoreError>;
    /// Stores a credential.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// A credential by its public id, with its user (for authentication).
    async fn api_key(&self, id: &str) -> Result<Option<KeyWithUser>, StoreError>;
    /// The team's credentials, oldest first.
    async fn api_keys(&self, team_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes a credential of the team (`NotFound` if it has none such; revoking twice keeps the
    /// first time).
    async fn revoke_api_key(&self, team_id: &str, id: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Stores `new` and revokes `old` in one transaction (a rotation).
    async fn replace_api_key(&self, old: &str, new: &ApiKeyRecord, at: Timestamp) -> Result<(), StoreError>;
    /// Stores a dashboard sign-in, and forgets those that expired before it was made.
    async fn create_sign_in(&self, sign_in: &SignInRecord) -> Result<(), StoreError>;
    /// A sign-in by its public id (expired or not: the caller checks).
    async fn sign_in(&self, id: &str) -> Result<Option<SignInRecord>, StoreError>;
    /// Forgets a sign-in (signing out); forgetting one that is gone is not an error.
    async fn end_sign_in(&self, id: &str) -> Result<(), StoreError>;
}

/// A team secret as stored: sealed (`crate::vault`), never in the clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// The sealed value.
    pub sealed: String,
    /// Who set it last.
    pub updated_by: Option<String>,
    /// When it was first set.
    pub created_at: Timestamp,
    /// When its value last changed.
    pub updated_at: Timestamp,
}

/// Team secrets, sealed.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Sets a secret (insert, or a new value keeping its creation time).
    async fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError>;
    /// A secret of the team.
    async fn secret(&self, team_id: &str, name: &str) -> Result<Option<SecretRecord>, StoreError>;
    /// The team's secrets, by name.
    async fn secrets(&self, team_id: &str) -> Result<Vec<SecretRecord>, StoreError>;
    /// Every secret of every team (resealing after a key rotation).
    async fn all_secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;
    /// Replaces a secret's sealed value with the same value sealed again (times unchanged).
    async fn reseal_secret(&self, team_id: &str, name: &str, sealed: &str) -> Result<(), StoreError>;
    /// Deletes a secret (`NotFound` if there is none).
    async fn delete_secret(&self, team_id: &str, name: &str) -> Result<(), StoreError>;
    /// Sets the team's git provider for a host.
    async fn put_git_provider(&self, team_id: &str, host: &str, provider: &GitProvider) -> Result<(), StoreError>;
    /// The team's git providers, by host.
    async fn git_providers(&self, team_id: &str) -> Result<Vec<(String, GitProvider)>, StoreError>;
    /// Removes the team's git provider for a host (`NotFound` if there is none).
    async fn delete_git_provider(&self, team_id: &str, host: &str) -> Result<(), StoreError>;
}

/// The persistence the server needs.
#[async_trait]
pub trait Store: PrincipalStore + SecretStore + ScheduleStore + IntegrationStore {
    /// Stores an environment.
    async fn insert_environment(&self, env: &EnvironmentRecord) -> Result<(), StoreError>;
    /// Replaces an environment's config (team-scoped).
    async fn update_environment(
        &self,
        team_id: &str,
        id: &str,
        config: &EnvironmentConfig,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Deletes an environment (team-scoped).
    async fn delete_environment(&self, team_id: &str, id: &str) -> Result<(), StoreError>;
    /// One environment (team-scoped).
    async fn environment(&self, team_id: &str, id: &str) -> Result<Option<EnvironmentRecord>, StoreError>;
    /// All of a team's environments.
    async fn environments(&self, team_id: &str) -> Result<Vec<EnvironmentRecord>, StoreError>;

    /// Stores a new run.
    async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// One run of a team.
    async fn run(&self, team_id: &str, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// One run, whatever its team (dispatch, callbacks; and reads whose caller's access is then
    /// decided by the run's sharing, `crate::sharing`).
    async fn run_by_id(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// The run whose session is `session_id`, of any team (the caller checks who may see it).
    async fn run_by_session(&self, session_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// A page of a team's runs; returns one more than `limit` if there is a next page.
    async fn list_runs(
        &self,
        team_id: &str,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// Applies a state change if the run is still in `change.from`; returns the updated run.
    async fn change_state(&self, id: &str, change: &StateChange, at: Timestamp) -> Result<RunRecord, StoreError>;
    /// Continues an ended run in a new execution, if it is still in `from` (a terminal state), in
    /// one transaction: its state event (QUEUED, `message`) and then the follow-up's event are
    /// appended, and the run is QUEUED again with `message`, its holder, lease, start, end and
    /// cancel request cleared, its execution count one more, and the follow-up (after its event)
    /// as what the new execution is asked. Returns the run and the two events.
    async fn continue_run(
        &self,
        id: &str,
        from: RunState,
        followup: &oz_core::wire::api::FollowupEvent,
        message: &StatusMessage,
        at: Timestamp,
    ) -> Result<(RunRecord, [RunEventRecord; 2]), StoreError>;
    /// Stores a run's conversation (sealed; `bytes` long in the clear), replacing the one before.
    async fn put_conversation(&self, run_id: &str, sealed: &str, bytes: usize, at: Timestamp)
    -> Result<(), StoreError>;
    /// A run's stored conversation, sealed.
    async fn conversation(&self, run_id: &str) -> Result<Option<String>, StoreError>;
    /// Whether a run has a stored conversation (without reading it).
    async fn has_conversation(&self, run_id: &str) -> Result<bool, StoreError>;
    /// The runs whose conversation is sealed with another key than `key_id` (resealed after a
    /// rotation).
    async fn conversations_sealed_with_other_keys(&self, key_id: &str) -> Result<Vec<String>, StoreError>;
    /// Marks a run as asked to cancel.
    async fn request_cancel(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Extends the lease of a claimed or running run; never an offer's (PENDING), which is claimed
    /// in time or goes back to the queue.
    async fn renew_lease(&self, id: &str, until: Timestamp) -> Result<(), StoreError>;
    /// Records that the agent started.
    async fn mark_started(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Adds an artifact.
    async fn add_artifact(&self, id: &str, artifact: &Artifact, at: Timestamp) -> Result<(), StoreError>;
    /// How many of a team's runs have not ended (queued, offered, held, running).
    async fn unfinished_runs(&self, team_id: &str) -> Result<u64, StoreError>;
    /// A team's QUEUED runs for one worker host, oldest first.
    async fn queued_runs(&self, team_id: &str, worker_host: &str, limit: u32) -> Result<Vec<RunRecord>, StoreError>;
    /// Runs held by a worker id (PENDING, CLAIMED, INPROGRESS, BLOCKED).
    async fn held_runs(&self, worker_id: &str) -> Result<Vec<RunRecord>, StoreError>;
    /// Held runs whose lease ran out before `now`.
    async fn expired_leases(&self, now: Timestamp) -> Result<Vec<RunRecord>, StoreError>;

    /// Appends an event to a run's stream; returns its sequence number.
    async fn append_event(&self, run_id: &str, at: Timestamp, body: &serde_json::Value) -> Result<i64, StoreError>;
    /// Appends the runner's report number `runner_seq` of attempt `attempt`, unless it is stored
    /// already; returns its sequence number in the run's stream, or `None` for a duplicate.
    async fn append_report(
        &self,
        run_id: &str,
        attempt: &str,
        runner_seq: u64,
        at: Timestamp,
        body: &serde_json::Value,
    ) -> Result<Option<i64>, StoreError>;
    /// A run's events after `after_seq`, at most `limit`.
    async fn events(&self, run_id: &str, after_seq: i64, limit: u32) -> Result<Vec<RunEventRecord>, StoreError>;

    /// Stores a workload token.
    async fn insert_token(&self, token: &WorkloadTokenRecord) -> Result<(), StoreError>;
    /// Finds a workload token by its public id.
    async fn token(&self, id: &str) -> Result<Option<WorkloadTokenRecord>, StoreError>;
    /// Revokes every token of a run.
    async fn revoke_tokens(&self, run_id: &str) -> Result<(), StoreError>;
    /// Whether a token may still fetch its run's resolved configuration at `now`: not once its run's
    /// harness started, nor later than `window` after its first answer. Records `now` as the first
    /// answer when there was none.
    async fn open_resolution(
        &self,
        token_id: &str,
        now: Timestamp,
        window: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Ends the fetching of a run's resolved configuration, for every token of the run (its harness
    /// is starting).
    async fn close_resolution(&self, run_id: &str, at: Timestamp) -> Result<(), StoreError>;

    /// Makes overwritten and deleted content leave the database's files (SQLite: a checkpoint that
    /// empties the write-ahead log, whose old frames would still hold it); after a secret changes.
    async fn forget_overwritten(&self) -> Result<(), StoreError>;
    /// Periodic upkeep, called off the request path (SQLite: a WAL checkpoint).
    async fn maintenance(&self) -> Result<(), StoreError>;
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    /// Its id.
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// The 5-field cron expression.
    pub cron: String,
    /// The IANA time zone of the expression; `None` = UTC.
    pub timezone: Option<String>,
    /// Whether it fires.
    pub enabled: bool,
    /// The prompt of its runs.
    pub prompt: Option<String>,
    /// The agent config of its runs.
    pub agent_config: Option<AgentConfig>,
    /// Who made it.
    pub created_by: Option<String>,
    /// Who changed it last.
    pub updated_by: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// When it last made a run.
    pub last_ran_at: Option<Timestamp>,
    /// When it fires next (`None` while paused).
    pub next_run_at: Option<Timestamp>,
    /// Why the last run could not be made.
    pub last_spawn_error: Option<String>,
}

/// Schedules' persistence.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a new schedule.
    async fn insert_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError>;
    /// Replaces a schedule's fields (team-scoped).
    async fn update_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError>;
    /// Deletes a schedule (team-scoped).
    async fn delete_schedule(&self, team_id: &str, id: &str) -> Result<(), StoreError>;
    /// One schedule (team-scoped).
    async fn schedule(&self, team_id: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError>;
    /// A team's schedules.
    async fn schedules(&self, team_id: &str) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Enabled schedules due at `now`.
    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Atomically: if the schedule's next run is still `expected_next`, moves it to `new_next`, records
    /// the firing, and stores `run` (if any) or the spawn error. Returns false if another process fired
    /// it first: each tick makes exactly one run.
    async fn fire_schedule(
        &self,
        id: &str,
        expected_next: Timestamp,
        new_next: Option<Timestamp>,
        run: Result<&RunRecord, &str>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// A stored integration: a named trigger that turns a signed webhook into a run.
#[derive(Clone, Debug, PartialEq)]
pub struct IntegrationRecord {
    /// Its id.
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// `webhook`, `slack`, `linear` or `github`.
    pub kind: String,
    /// A generic webhook's HMAC key (kept to verify signatures; never shown after creation), sealed;
    /// a provider's integration seals an empty one (its credentials are team secrets).
    pub secret: String,
    /// A provider's settings (`None` for a generic webhook).
    pub provider: Option<oz_core::wire::api::ProviderSettings>,
    /// Whether deliveries make runs.
    pub enabled: bool,
    /// The prompt of its runs; `{{payload}}` is replaced by the delivery's body (else it is appended).
    pub prompt: String,
    /// The agent config of its runs.
    pub agent_config: Option<AgentConfig>,
    /// Who made it.
    pub created_by: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// Integrations' persistence.
#[async_trait]
pub trait IntegrationStore: Send + Sync + 'static {
    /// Stores a new integration.
    async fn insert_integration(&self, i: &IntegrationRecord) -> Result<(), StoreError>;
    /// Replaces an integration's fields (team-scoped; the secret is kept).
    async fn update_integration(&self, i: &IntegrationRecord) -> Result<(), StoreError>;
    /// Deletes an integration (team-scoped).
    async fn delete_integration(&self, team_id: &str, id: &str) -> Result<(), StoreError>;
    /// One integration of a team.
    async fn integration(&self, team_id: &str, id: &str) -> Result<Option<IntegrationRecord>, StoreError>;
    /// One integration, whatever its team (webhook deliveries carry no API key).
    async fn integration_by_id(&self, id: &str) -> Result<Option<IntegrationRecord>, StoreError>;
    /// A team's integrations.
    async fn integrations(&self, team_id: &str) -> Result<Vec<IntegrationRecord>, StoreError>;
    /// Replaces an integration's stored signing secret (sealing an older clear one, or resealing).
    async fn reseal_integration_secret(&self, id: &str, sealed: &str) -> Result<(), StoreError>;
    /// Records a delivery's signature; false if that exact delivery was seen before (a replay).
    /// Also forgets deliveries older than `forget_before`.
    async fn record_delivery(
        &self,
        integration_id: &str,
        signature: &str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Forgets one delivery (its run could not be made: the provider's retry must be able to).
    async fn forget_delivery(&self, integration_id: &str, signature: &str) -> Result<(), StoreError>;
    /// In one transaction: records the delivery `delivery` of `trigger.integration_id` (as
    /// [`IntegrationStore::record_delivery`]), and unless it was seen before, stores `run` and
    /// `trigger`. False (and nothing stored) for a delivery seen before.
    async fn insert_triggered_run(
        &self,
        run: &RunRecord,
        trigger: &RunTriggerRecord,
        delivery: &str,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The latest run an integration's event started in `thread_key`.
    async fn run_trigger_in_thread(
        &self,
        integration_id: &str,
        thread_key: &str,
    ) -> Result<Option<RunTriggerRecord>, StoreError>;
    /// The trigger of run `run_id`, if a provider's event started it.
    async fn run_trigger(&self, run_id: &str) -> Result<Option<RunTriggerRecord>, StoreError>;
    /// Triggers whose run is in a state not fully posted back (`posted` differs from the run's
    /// `<execution>:<state>`) and whose next attempt is due at `now`: at most `limit`, oldest first.
    async fn pending_postbacks(&self, now: Timestamp, limit: u32) -> Result<Vec<RunTriggerRecord>, StoreError>;
    /// When the next attempt of a pending post-back is due (`None`: none waits).
    async fn next_postback_at(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Saves a trigger's post-back progress (`posted`, `target`, `steps_done`, `message_ref`,
    /// `message_execution`, `thread_key`, `reply`, `attempts`, `next_attempt_at`).
    async fn save_postback(&self, trigger: &RunTriggerRecord) -> Result<(), StoreError>;
}

/// A run that a provider's event started, and what was posted back about it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunTriggerRecord {
    /// The run.
    pub run_id: String,
    /// The integration whose event started it.
    pub integration_id: String,
    /// `slack`, `linear` or `github`.
    pub provider: String,
    /// Where later messages to it come from (a Slack thread, a Linear issue, a GitHub issue).
    pub thread_key: String,
    /// Where to post back, as the provider's module writes it.
    pub reply: serde_json::Value,
    /// The last `<execution>:<state>` fully posted.
    pub posted: Option<String>,
    /// The `<execution>:<state>` being posted.
    pub target: Option<String>,
    /// How many of the target's steps are done.
    pub steps_done: u32,
    /// The provider's id of the status message (updated as the run moves).
    pub message_ref: Option<String>,
    /// The execution the status message is about.
    pub message_execution: u32,
    /// Failed attempts at the current target.
    pub attempts: u32,
    /// When to try again after a failure.
    pub next_attempt_at: Option<Timestamp>,
    /// When the run was started.
    pub created_at: Timestamp,
}
