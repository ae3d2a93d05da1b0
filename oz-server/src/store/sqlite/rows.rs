//! The tables' rows as they are stored (times in microseconds since the epoch, JSON as text, states
//! as their names), read by `sqlx::FromRow`, and their conversion into the store's records.

use jiff::Timestamp;
use oz_core::sharing::{Access, RunSharing};
use sqlx::FromRow;
use sqlx::sqlite::SqliteRow;

use crate::store::{
    ApiKeyRecord, EnvironmentRecord, IntegrationRecord, RunEventRecord, RunRecord, RunTriggerRecord, ScheduleRecord,
    SecretRecord, SignInRecord, StoreError, TeamRecord, UserRecord, WorkloadTokenRecord,
};

/// A record read through a row of its table.
pub(super) trait Stored: Sized {
    /// The row, a field per column read.
    type Row: for<'r> FromRow<'r, SqliteRow> + Send + Unpin;
    /// The record of a row; a value that does not decode is `Corrupt`, naming its column.
    fn from_row(row: Self::Row) -> Result<Self, StoreError>;

    fn one(row: Option<Self::Row>) -> Result<Option<Self>, StoreError> {
        row.map(Self::from_row).transpose()
    }

    fn all(rows: Vec<Self::Row>) -> Result<Vec<Self>, StoreError> {
        rows.into_iter().map(Self::from_row).collect()
    }
}

pub(super) fn from_micros(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what, message: e.to_string() })
}

fn parse_json_opt<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: Option<String>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| parse_json(what, &t)).transpose()
}

#[derive(FromRow)]
pub(super) struct RunRow {
    id: String,
    team_id: String,
    creator_id: Option<String>,
    title: String,
    prompt: String,
    state: String,
    source: String,
    worker_host: Option<String>,
    config: Option<String>,
    status_message: Option<String>,
    artifacts: String,
    metadata: Option<String>,
    schedule_id: Option<String>,
    parent_run_id: Option<String>,
    created_us: i64,
    updated_us: i64,
    started_us: Option<i64>,
    finished_us: Option<i64>,
    execution_id: Option<String>,
    claimed_by: Option<String>,
    lease_us: Option<i64>,
    cancel_requested: bool,
    session_id: Option<String>,
    team_access: Option<String>,
    public_access: Option<String>,
    shared_users: String,
    execution_count: i64,
    continuation: Option<String>,
    trigger_url: Option<String>,
}

/// A user a run is shared with, as `runs.shared_users` holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedUser {
    user_id: String,
    access: String,
}

/// `runs.shared_users` of a run's named users.
pub(super) fn shared_users_json(users: &[(String, Access)]) -> String {
    let rows: Vec<SharedUser> =
        users.iter().map(|(id, a)| SharedUser { user_id: id.clone(), access: a.as_str().to_owned() }).collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
}

fn access(what: &'static str, text: Option<String>) -> Result<Option<Access>, StoreError> {
    text.map(|t| Access::parse(&t).ok_or(StoreError::Corrupt { what, message: t })).transpose()
}

fn run_sharing(r: &mut RunRow) -> Result<RunSharing, StoreError> {
    let users: Vec<SharedUser> = parse_json("runs.shared_users", &r.shared_users)?;
    Ok(RunSharing {
        team: access("runs.team_access", r.team_access.take())?,
        public: access("runs.public_access", r.public_access.take())?,
        users: users
            .into_iter()
            .map(|u| Ok((u.user_id, access("runs.shared_users", Some(u.access))?.unwrap_or(Access::View))))
            .collect::<Result<_, StoreError>>()?,
    })
}

impl Stored for RunRecord {
    type Row = RunRow;
    fn from_row(mut r: RunRow) -> Result<Self, StoreError> {
        let sharing = run_sharing(&mut r)?;
        Ok(RunRecord {
            sharing,
            session_id: r.session_id.unwrap_or_default(),
            state: r.state.parse().map_err(|_| StoreError::Corrupt { what: "runs.state", message: r.state.clone() })?,
            config: parse_json_opt("runs.config", r.config)?,
            status_message: parse_json_opt("runs.status_message", r.status_message)?,
            artifacts: parse_json("runs.artifacts", &r.artifacts)?,
            metadata: parse_json_opt("runs.metadata", r.metadata)?,
            id: r.id,
            team_id: r.team_id,
            creator_id: r.creator_id,
            title: r.title,
            prompt: r.prompt,
            source: r.source,
            worker_host: r.worker_host,
            schedule_id: r.schedule_id,
            parent_run_id: r.parent_run_id,
            created_at: from_micros(r.created_us),
            updated_at: from_micros(r.updated_us),
            started_at: r.started_us.map(from_micros),
            finished_at: r.finished_us.map(from_micros),
            execution_id: r.execution_id,
            claimed_by: r.claimed_by,
            lease_expires_at: r.lease_us.map(from_micros),
            cancel_requested: r.cancel_requested,
            execution_count: u32::try_from(r.execution_count).unwrap_or(1),
            continuation: parse_json_opt("runs.continuation", r.continuation)?,
            trigger_url: r.trigger_url,
        })
    }
}

#[derive(FromRow)]
pub(super) struct EnvironmentRow {
    id: String,
    team_id: String,
    config: String,
    creator_id: Option<String>,
    created_us: i64,
    updated_us: i64,
}

impl Stored for EnvironmentRecord {
    type Row = EnvironmentRow;
    fn from_row(r: EnvironmentRow) -> Result<Self, StoreError> {
        Ok(EnvironmentRecord {
            config: parse_json("environments.config", &r.config)?,
            id: r.id,
            team_id: r.team_id,
            creator_id: r.creator_id,
            created_at: from_micros(r.created_us),
            updated_at: from_micros(r.updated_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct RunEventRow {
    run_id: String,
    seq: i64,
    at_us: i64,
    body: String,
    body_z: Option<Vec<u8>>,
}

/// An event's body as `run_events` keeps it: its JSON text, or (at `compress_from` bytes and more)
/// that text deflated, and the length of the output text it carries (0 for other events).
pub(super) struct StoredBody {
    pub(super) text: String,
    pub(super) deflated: Option<Vec<u8>>,
    pub(super) output_bytes: i64,
}

impl StoredBody {
    /// The length of the output text `body` carries (0 for an event that is not output).
    pub(super) fn output_bytes(body: &serde_json::Value) -> i64 {
        let bytes = match body.get("event").and_then(|e| e.as_str()) {
            Some("output") => body.get("text").and_then(|t| t.as_str()).map_or(0, |t| t.len()),
            _ => 0,
        };
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }

    pub(super) fn of(body: &serde_json::Value, compress_from: usize) -> Self {
        let text = serde_json::to_string(body).unwrap_or_default();
        let output_bytes = Self::output_bytes(body);
        if text.len() < compress_from {
            return Self { text, deflated: None, output_bytes };
        }
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(text.len() / 4), flate2::Compression::fast());
        match z.write_all(text.as_bytes()).and_then(|()| z.finish()) {
            Ok(deflated) => Self { text: String::new(), deflated: Some(deflated), output_bytes },
            Err(_) => Self { text, deflated: None, output_bytes },
        }
    }
}

fn inflated(what: &'static str, deflated: &[u8]) -> Result<String, StoreError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(deflated)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::Corrupt { what, message: e.to_string() })?;
    Ok(text)
}

impl Stored for RunEventRecord {
    type Row = RunEventRow;
    fn from_row(r: RunEventRow) -> Result<Self, StoreError> {
        let text = match &r.body_z {
            Some(deflated) => inflated("run_events.body_z", deflated)?,
            None => r.body,
        };
        Ok(RunEventRecord {
            body: parse_json("run_events.body", &text)?,
            run_id: r.run_id,
            seq: r.seq,
            at: from_micros(r.at_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct WorkloadTokenRow {
    id: String,
    run_id: String,
    team_id: String,
    secret_hash: Vec<u8>,
    expires_us: i64,
    revoked: bool,
}

impl Stored for WorkloadTokenRecord {
    type Row = WorkloadTokenRow;
    fn from_row(r: WorkloadTokenRow) -> Result<Self, StoreError> {
        Ok(WorkloadTokenRecord {
            id: r.id,
            run_id: r.run_id,
            team_id: r.team_id,
            secret_hash: r.secret_hash,
            expires_at: from_micros(r.expires_us),
            revoked: r.revoked,
        })
    }
}

#[derive(FromRow)]
pub(super) struct ScheduleRow {
    id: String,
    team_id: String,
    name: String,
    cron: String,
    timezone: Option<String>,
    enabled: bool,
    prompt: Option<String>,
    agent_config: Option<String>,
    created_by: Option<String>,
    updated_by: Option<String>,
    created_us: i64,
    updated_us: i64,
    last_ran_us: Option<i64>,
    next_run_us: Option<i64>,
    last_spawn_error: Option<String>,
}

impl Stored for ScheduleRecord {
    type Row = ScheduleRow;
    fn from_row(r: ScheduleRow) -> Result<Self, StoreError> {
        Ok(ScheduleRecord {
            agent_config: parse_json_opt("schedules.agent_config", r.agent_config)?,
            id: r.id,
            team_id: r.team_id,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            enabled: r.enabled,
            prompt: r.prompt,
            created_by: r.created_by,
            updated_by: r.updated_by,
            created_at: from_micros(r.created_us),
            updated_at: from_micros(r.updated_us),
            last_ran_at: r.last_ran_us.map(from_micros),
            next_run_at: r.next_run_us.map(from_micros),
            last_spawn_error: r.last_spawn_error,
        })
    }
}

#[derive(FromRow)]
pub(super) struct IntegrationRow {
    id: String,
    team_id: String,
    name: String,
    kind: String,
    secret: String,
    enabled: bool,
    prompt: String,
    agent_config: Option<String>,
    created_by: Option<String>,
    created_us: i64,
    updated_us: i64,
    settings: Option<String>,
}

impl Stored for IntegrationRecord {
    type Row = IntegrationRow;
    fn from_row(r: IntegrationRow) -> Result<Self, StoreError> {
        Ok(IntegrationRecord {
            agent_config: parse_json_opt("integrations.agent_config", r.agent_config)?,
            provider: parse_json_opt("integrations.settings", r.settings)?,
            id: r.id,
            team_id: r.team_id,
            name: r.name,
            kind: r.kind,
            secret: r.secret,
            enabled: r.enabled,
            prompt: r.prompt,
            created_by: r.created_by,
            created_at: from_micros(r.created_us),
            updated_at: from_micros(r.updated_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct TeamRow {
    id: String,
    name: String,
}

impl Stored for TeamRecord {
    type Row = TeamRow;
    fn from_row(r: TeamRow) -> Result<Self, StoreError> {
        Ok(TeamRecord { id: r.id, name: r.name })
    }
}

fn parse_name<T: std::str::FromStr>(what: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| StoreError::Corrupt { what, message: e.to_string() })
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| StoreError::Corrupt { what, message: e.to_string() })
}

#[derive(FromRow)]
pub(super) struct UserRow {
    id: String,
    team_id: String,
    name: String,
    kind: String,
    role: String,
    disabled: bool,
    created_us: i64,
}

impl Stored for UserRecord {
    type Row = UserRow;
    fn from_row(r: UserRow) -> Result<Self, StoreError> {
        Ok(UserRecord {
            kind: parse_enum("users.kind", &r.kind)?,
            role: parse_name("users.role", &r.role)?,
            id: r.id,
            team_id: r.team_id,
            name: r.name,
            disabled: r.disabled,
            created_at: from_micros(r.created_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct ApiKeyRow {
    id: String,
    team_id: String,
    user_id: Option<String>,
    name: String,
    kind: String,
    role: Option<String>,
    worker_ids: String,
    secret_hash: Vec<u8>,
    server_admin: bool,
    created_us: i64,
    expires_us: Option<i64>,
    revoked_us: Option<i64>,
    revoked: bool,
}

impl Stored for ApiKeyRecord {
    type Row = ApiKeyRow;
    fn from_row(r: ApiKeyRow) -> Result<Self, StoreError> {
        // Keys revoked before revocation had a time count as revoked at the epoch.
        let revoked_at = r.revoked_us.map(from_micros).or(r.revoked.then_some(Timestamp::UNIX_EPOCH));
        Ok(ApiKeyRecord {
            kind: parse_enum("api_keys.kind", &r.kind)?,
            role: r.role.as_deref().map(|role| parse_name("api_keys.role", role)).transpose()?,
            worker_ids: parse_json("api_keys.worker_ids", &r.worker_ids)?,
            id: r.id,
            team_id: r.team_id,
            user_id: r.user_id,
            name: r.name,
            secret_hash: r.secret_hash,
            server_admin: r.server_admin,
            created_at: from_micros(r.created_us),
            expires_at: r.expires_us.map(from_micros),
            revoked_at,
        })
    }
}

#[derive(FromRow)]
pub(super) struct SecretRow {
    team_id: String,
    name: String,
    sealed: String,
    updated_by: Option<String>,
    created_us: i64,
    updated_us: i64,
}

impl Stored for SecretRecord {
    type Row = SecretRow;
    fn from_row(r: SecretRow) -> Result<Self, StoreError> {
        Ok(SecretRecord {
            team_id: r.team_id,
            name: r.name,
            sealed: r.sealed,
            updated_by: r.updated_by,
            created_at: from_micros(r.created_us),
            updated_at: from_micros(r.updated_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct SignInRow {
    id: String,
    key_id: String,
    secret_hash: Vec<u8>,
    created_us: i64,
    expires_us: i64,
}

impl Stored for SignInRecord {
    type Row = SignInRow;
    fn from_row(r: SignInRow) -> Result<Self, StoreError> {
        Ok(SignInRecord {
            id: r.id,
            key_id: r.key_id,
            secret_hash: r.secret_hash,
            created_at: from_micros(r.created_us),
            expires_at: from_micros(r.expires_us),
        })
    }
}

#[derive(FromRow)]
pub(super) struct RunTriggerRow {
    run_id: String,
    integration_id: String,
    provider: String,
    thread_key: String,
    reply: String,
    posted: Option<String>,
    target: Option<String>,
    steps_done: i64,
    message_ref: Option<String>,
    message_execution: i64,
    attempts: i64,
    next_attempt_us: Option<i64>,
    created_us: i64,
}

impl Stored for RunTriggerRecord {
    type Row = RunTriggerRow;
    fn from_row(r: RunTriggerRow) -> Result<Self, StoreError> {
        Ok(RunTriggerRecord {
            reply: parse_json("run_triggers.reply", &r.reply)?,
            run_id: r.run_id,
            integration_id: r.integration_id,
            provider: r.provider,
            thread_key: r.thread_key,
            posted: r.posted,
            target: r.target,
            steps_done: u32::try_from(r.steps_done).unwrap_or(0),
            message_ref: r.message_ref,
            message_execution: u32::try_from(r.message_execution).unwrap_or(0),
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            next_attempt_at: r.next_attempt_us.map(from_micros),
            created_at: from_micros(r.created_us),
        })
    }
}
