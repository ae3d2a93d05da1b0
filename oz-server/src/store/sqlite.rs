//! The embedded SQLite store: one file (WAL, `synchronous=NORMAL`), or `:memory:` for tests.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use oz_core::environment::EnvironmentConfig;
use oz_core::wire::callbacks::Artifact;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use self::rows::Stored;
use super::*;

mod principals;
mod rows;
mod secrets;

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Keeps a temporary database's folder alive as long as the store.
    _temp: Option<std::sync::Arc<tempfile::TempDir>>,
    /// Reads.
    pool: SqlitePool,
    /// Writes, through one connection: they queue in-process instead of sleeping in SQLite's busy
    /// handler when two connections want the write lock at once.
    writer: SqlitePool,
    /// The most output text a run's history keeps ([`SqliteStore::with_max_run_output`]).
    max_run_output: u64,
}

/// The default bound on a run's stored output text: 128 MiB.
pub const DEFAULT_MAX_RUN_OUTPUT: u64 = 128 * 1024 * 1024;
/// Event bodies at least this long are stored deflated.
const COMPRESS_FROM: usize = 512;

/// Microseconds since the epoch: how times are stored (sortable, exact).
pub fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Makes the database's folder (0700) and file (0600) if they are missing, before SQLite opens it:
/// SQLite gives its WAL and shared-memory files the database file's mode, so none of the three is
/// readable by other users. Existing ones are left as their owner set them.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Create { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed(dir))?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(path)(e)),
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed, not left in free pages (a value replaced by
            // its sealed form, a revoked key's row).
            .pragma("secure_delete", "on");
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options.clone()).await?;
        // The writer never checkpoints on commit (a commit would pay the checkpoint's fsync);
        // `maintenance` checkpoints from a reader connection instead.
        let writer =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.pragma("wal_autocheckpoint", "0")).await?;
        let store = Self { _temp: None, pool, writer, max_run_output: DEFAULT_MAX_RUN_OUTPUT };
        store.migrate().await?;
        Ok(store)
    }

    /// Bounds what a run's history keeps of its output to `bytes` of text (default
    /// [`DEFAULT_MAX_RUN_OUTPUT`]): past it, its oldest output events are dropped, down to 90% of
    /// the bound (its other events, states and artifacts, stay). The live session and event stream
    /// of a running run see every byte either way.
    pub fn with_max_run_output(mut self, bytes: u64) -> Self {
        self.max_run_output = bytes.max(1);
        self
    }

    /// Stores an event ([`insert_event`]) and counts the output it carries against the run's bound.
    async fn append(
        &self,
        run_id: &str,
        at: Timestamp,
        body: &serde_json::Value,
        report: Option<(&str, u64)>,
    ) -> Result<Option<i64>, StoreError> {
        let seq = insert_event(&self.writer, run_id, at, body, report).await?;
        let output_bytes = rows::StoredBody::output_bytes(body);
        if seq.is_some() && output_bytes > 0 {
            self.count_output(run_id, output_bytes).await?;
        }
        Ok(seq)
    }

    /// Adds `bytes` of output to run `run_id`'s count and, past the bound, drops its oldest output.
    async fn count_output(&self, run_id: &str, bytes: i64) -> Result<(), StoreError> {
        let total: i64 =
            sqlx::query_scalar("UPDATE runs SET output_bytes = output_bytes + ? WHERE id = ? RETURNING output_bytes")
                .bind(bytes)
                .bind(run_id)
                .fetch_optional(&self.writer)
                .await?
                .unwrap_or(0);
        let bound = i64::try_from(self.max_run_output).unwrap_or(i64::MAX);
        if total <= bound {
            return Ok(());
        }
        let mut left = total;
        while left > bound / 10 * 9 {
            let dropped: Vec<i64> = sqlx::query_scalar(
                "DELETE FROM run_events WHERE rowid IN (SELECT rowid FROM run_events WHERE run_id = ? AND output_bytes > 0 \
                 ORDER BY seq LIMIT 256) RETURNING output_bytes",
            )
            .bind(run_id)
            .fetch_all(&self.writer)
            .await?;
            if dropped.is_empty() {
                break;
            }
            left -= dropped.iter().sum::<i64>();
        }
        sqlx::query("UPDATE runs SET output_bytes = ? WHERE id = ?")
            .bind(left.max(0))
            .bind(run_id)
            .execute(&self.writer)
            .await?;
        tracing::info!(run_id, kept = left, bound, "a run's oldest output was dropped to keep its history bounded");
        Ok(())
    }

    /// A private database in a temporary folder, removed when the last clone of the store is dropped
    /// (tests, examples). Not `:memory:`: a pooled connection that sqlx closes (it does when a query
    /// is abandoned midway) would come back to a new, empty in-memory database.
    pub async fn temporary() -> Result<Self, StoreError> {
        let dir = tempfile::tempdir()
            .map_err(|e| StoreError::Corrupt { what: "temporary folder", message: e.to_string() })?;
        let mut store = Self::open(&dir.path().join("oz.db")).await?;
        store._temp = Some(std::sync::Arc::new(dir));
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.adopt_old_bookkeeping().await?;
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    /// Before sqlx's migrator, the store recorded the versions it had applied in its own table,
    /// `schema_migrations (version, applied_us)`, and `_sqlx_migrations` did not exist. On the first
    /// open of such a database, `_sqlx_migrations` is seeded with those versions and the checksums of
    /// today's files (their SQL is what was applied), in one transaction, so the migrator applies only
    /// the versions that are new. `schema_migrations` is left as it was, unread from then on.
    async fn adopt_old_bookkeeping(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('schema_migrations', ?)",
        )
        .bind(MIGRATOR.table_name.as_ref())
        .fetch_all(&mut *tx)
        .await?;
        if tables != ["schema_migrations"] {
            return Ok(());
        }
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await?;
        tx.ensure_migrations_table(&MIGRATOR.table_name).await?;
        for migration in MIGRATOR.iter().filter(|m| applied.contains(&m.version)) {
            tx.skip(&MIGRATOR.table_name, migration).await?;
        }
        tx.commit().await?;
        tracing::info!(?applied, "adopted the migrations an older version recorded in schema_migrations");
        Ok(())
    }
}

/// The schema: `oz-server/migrations/`, applied in order at start-up, each in its own transaction.
/// Never edit a published file (the migrator refuses a database whose applied checksum differs);
/// add the next.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

const RUN_COLUMNS: &str = "id, team_id, creator_id, title, prompt, state, source, worker_host, config, status_message, artifacts, \
     metadata, schedule_id, parent_run_id, created_us, updated_us, started_us, finished_us, execution_id, claimed_by, lease_us, \
     cancel_requested, session_id, team_access, public_access, shared_users, execution_count, continuation, trigger_url";

/// Appends an event to a run's history (deflated when large); its sequence number. A runner's
/// report carries its `(attempt, runner_seq)` and is stored once: `None` when it was already.
async fn insert_event<'e, E: sqlx::Executor<'e, Database = Sqlite>>(
    executor: E,
    run_id: &str,
    at: Timestamp,
    body: &serde_json::Value,
    report: Option<(&str, u64)>,
) -> Result<Option<i64>, StoreError> {
    let stored = rows::StoredBody::of(body, COMPRESS_FROM);
    let seq = sqlx::query_scalar(
        "INSERT INTO run_events (run_id, seq, at_us, body, body_z, output_bytes, attempt, runner_seq) \
         VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_events WHERE run_id = ?), ?, ?, ?, ?, ?, ?) \
         ON CONFLICT DO NOTHING RETURNING seq",
    )
    .bind(run_id)
    .bind(run_id)
    .bind(micros(at))
    .bind(&stored.text)
    .bind(&stored.deflated)
    .bind(stored.output_bytes)
    .bind(report.map(|(attempt, _)| attempt))
    .bind(report.map(|(_, seq)| i64::try_from(seq).unwrap_or(i64::MAX)))
    .fetch_optional(executor)
    .await?;
    Ok(seq)
}

/// An event that is not a report is always stored: no answer is a broken store.
fn stored_seq(seq: Option<i64>) -> Result<i64, StoreError> {
    seq.ok_or(StoreError::Corrupt { what: "run_events", message: "an event was not stored".into() })
}

async fn insert_run_with<'e, E: sqlx::Executor<'e, Database = Sqlite>>(
    executor: E,
    run: &RunRecord,
) -> Result<(), StoreError> {
    let environment_id = run.config.as_ref().and_then(|c| c.environment_id.clone());
    let model_id = run.config.as_ref().and_then(|c| c.model_id.clone());
    let agent_name = run.config.as_ref().and_then(|c| c.name.clone());
    sqlx::query(
        "INSERT INTO runs (id, team_id, creator_id, title, prompt, state, source, worker_host, config, status_message, artifacts, \
         metadata, schedule_id, parent_run_id, environment_id, model_id, agent_name, created_us, updated_us, execution_id, \
         session_id, team_access, public_access, shared_users, trigger_url) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&run.id)
    .bind(&run.team_id)
    .bind(&run.creator_id)
    .bind(&run.title)
    .bind(&run.prompt)
    .bind(run.state.as_str())
    .bind(&run.source)
    .bind(&run.worker_host)
    .bind(run.config.as_ref().map(json))
    .bind(run.status_message.as_ref().map(json))
    .bind(json(&run.artifacts))
    .bind(run.metadata.as_ref().map(json))
    .bind(&run.schedule_id)
    .bind(&run.parent_run_id)
    .bind(environment_id)
    .bind(model_id)
    .bind(agent_name)
    .bind(micros(run.created_at))
    .bind(micros(run.updated_at))
    .bind(&run.execution_id)
    .bind(&run.session_id)
    .bind(run.sharing.team.map(|a| a.as_str()))
    .bind(run.sharing.public.map(|a| a.as_str()))
    .bind(rows::shared_users_json(&run.sharing.users))
    .bind(&run.trigger_url)
    .execute(executor)
    .await?;
    Ok(())
}

/// The tables whose rows belong to a team and are read, listed and deleted the same way.
#[derive(Clone, Copy)]
enum TeamTable {
    Environments,
    Schedules,
    Integrations,
    Users,
    ApiKeys,
}

impl TeamTable {
    fn name(self) -> &'static str {
        match self {
            TeamTable::Environments => "environments",
            TeamTable::Schedules => "schedules",
            TeamTable::Integrations => "integrations",
            TeamTable::Users => "users",
            TeamTable::ApiKeys => "api_keys",
        }
    }
}

impl SqliteStore {
    /// One row of a team, decoded.
    async fn team_row<T: Stored>(&self, table: TeamTable, team_id: &str, id: &str) -> Result<Option<T>, StoreError> {
        let sql = format!("SELECT * FROM {} WHERE team_id = ? AND id = ?", table.name());
        T::one(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(team_id).bind(id).fetch_optional(&self.pool).await?)
    }

    /// All rows of a team, oldest first, decoded.
    async fn team_rows<T: Stored>(&self, table: TeamTable, team_id: &str) -> Result<Vec<T>, StoreError> {
        let sql = format!("SELECT * FROM {} WHERE team_id = ? ORDER BY created_us, id", table.name());
        T::all(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(team_id).fetch_all(&self.pool).await?)
    }

    /// Deletes one row of a team; `NotFound` if there was none.
    async fn delete_team_row(&self, table: TeamTable, team_id: &str, id: &str) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE team_id = ? AND id = ?", table.name());
        let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(team_id).bind(id).execute(&self.writer).await?;
        found(done.rows_affected())
    }
}

/// `NotFound` when a write touched no row.
fn found(rows: u64) -> Result<(), StoreError> {
    if rows == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_environment(&self, env: &EnvironmentRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO environments (id, team_id, config, creator_id, created_us, updated_us) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&env.id)
            .bind(&env.team_id)
            .bind(json(&env.config))
            .bind(&env.creator_id)
            .bind(micros(env.created_at))
            .bind(micros(env.updated_at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn update_environment(
        &self,
        team_id: &str,
        id: &str,
        config: &EnvironmentConfig,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE environments SET config = ?, updated_us = ? WHERE team_id = ? AND id = ?")
            .bind(json(config))
            .bind(micros(at))
            .bind(team_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn delete_environment(&self, team_id: &str, id: &str) -> Result<(), StoreError> {
        self.delete_team_row(TeamTable::Environments, team_id, id).await
    }

    async fn environment(&self, team_id: &str, id: &str) -> Result<Option<EnvironmentRecord>, StoreError> {
        self.team_row(TeamTable::Environments, team_id, id).await
    }

    async fn environments(&self, team_id: &str) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.team_rows(TeamTable::Environments, team_id).await
    }

    async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        insert_run_with(&self.writer, run).await
    }

    async fn run(&self, team_id: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE team_id = ? AND id = ?");
        RunRecord::one(
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(team_id).bind(id).fetch_optional(&self.pool).await?,
        )
    }

    async fn run_by_id(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?");
        RunRecord::one(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?)
    }

    async fn run_by_session(&self, session_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE session_id = ?");
        RunRecord::one(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(session_id).fetch_optional(&self.pool).await?)
    }

    async fn list_runs(
        &self,
        team_id: &str,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE team_id = "));
        q.push_bind(team_id.to_owned());
        if !filter.states.is_empty() {
            q.push(" AND state IN (");
            let mut sep = q.separated(", ");
            for s in &filter.states {
                sep.push_bind(s.as_str());
            }
            q.push(")");
        }
        let text_filters = [
            ("agent_name", &filter.name),
            ("model_id", &filter.model_id),
            ("creator_id", &filter.creator),
            ("source", &filter.source),
            ("environment_id", &filter.environment_id),
            ("schedule_id", &filter.schedule_id),
            ("parent_run_id", &filter.ancestor_run_id),
        ];
        for (column, value) in text_filters {
            if let Some(v) = value {
                q.push(format!(" AND {column} = ")).push_bind(v.clone());
            }
        }
        if let Some(t) = filter.created_after {
            q.push(" AND created_us >= ").push_bind(micros(t));
        }
        if let Some(t) = filter.created_before {
            q.push(" AND created_us < ").push_bind(micros(t));
        }
        if let Some(t) = filter.updated_after {
            q.push(" AND updated_us >= ").push_bind(micros(t));
        }
        if let Some(viewer) = &filter.visible_to {
            // What `crate::sharing` lets a non-admin see of its own team's runs.
            q.push(" AND (team_access IS NOT NULL OR public_access IS NOT NULL");
            if let Some(user) = &viewer.user_id {
                q.push(" OR creator_id = ").push_bind(user.clone());
                q.push(" OR EXISTS (SELECT 1 FROM json_each(shared_users) WHERE json_extract(value, '$.user_id') = ")
                    .push_bind(user.clone())
                    .push(")");
            }
            q.push(")");
        }
        if let Some(text) = &filter.q {
            let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            q.push(" AND (title LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR prompt LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        let column = match page.sort {
            RunSort::UpdatedAt => "updated_us",
            RunSort::CreatedAt => "created_us",
            RunSort::Title => "title",
            RunSort::Agent => "COALESCE(agent_name, '')",
        };
        let (cmp, order) = if page.descending { ("<", "DESC") } else { (">", "ASC") };
        if let Some((value, id)) = &page.after {
            q.push(format!(" AND ({column}, id) {cmp} ("));
            match value {
                SortValue::Micros(v) => q.push_bind(*v),
                SortValue::Text(v) => q.push_bind(v.clone()),
            };
            q.push(", ").push_bind(id.clone()).push(")");
        }
        q.push(format!(" ORDER BY {column} {order}, id {order} LIMIT ")).push_bind(i64::from(page.limit) + 1);
        RunRecord::all(q.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn change_state(&self, id: &str, change: &StateChange, at: Timestamp) -> Result<RunRecord, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE runs SET state = ");
        q.push_bind(change.to.as_str()).push(", updated_us = ").push_bind(micros(at));
        if let Some(message) = &change.status_message {
            q.push(", status_message = ").push_bind(json(message));
        }
        if let Some(claimed_by) = &change.claimed_by {
            q.push(", claimed_by = ").push_bind(claimed_by.clone());
        }
        if let Some(execution_id) = &change.execution_id {
            q.push(", execution_id = ").push_bind(execution_id.clone());
        }
        if let Some(lease) = &change.lease_expires_at {
            q.push(", lease_us = ").push_bind(lease.map(micros));
        }
        if change.to.is_terminal() {
            q.push(", finished_us = ").push_bind(micros(at)).push(", lease_us = NULL");
        }
        q.push(" WHERE id = ").push_bind(id.to_owned()).push(" AND state = ").push_bind(change.from.as_str());
        let done = q.build().execute(&self.writer).await?;
        let run = self.run_by_id(id).await?.ok_or(StoreError::NotFound)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StateChanged { expected: change.from, actual: run.state });
        }
        Ok(run)
    }

    async fn continue_run(
        &self,
        id: &str,
        from: RunState,
        followup: &oz_core::wire::api::FollowupEvent,
        message: &StatusMessage,
        at: Timestamp,
    ) -> Result<(RunRecord, [RunEventRecord; 2]), StoreError> {
        let mut tx = self.writer.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM runs WHERE id = ?").bind(id).fetch_optional(&mut *tx).await?;
        match state.as_deref().map(str::parse::<RunState>) {
            None => return Err(StoreError::NotFound),
            Some(Ok(actual)) if actual != from => return Err(StoreError::StateChanged { expected: from, actual }),
            Some(Err(_)) => return Err(StoreError::Corrupt { what: "runs.state", message: state.unwrap_or_default() }),
            Some(Ok(_)) => {}
        }
        let state_body = serde_json::json!({"event": "state", "state": RunState::Queued, "status_message": message});
        let followup_body = followup.to_event();
        let state_seq = stored_seq(insert_event(&mut *tx, id, at, &state_body, None).await?)?;
        let after_seq = stored_seq(insert_event(&mut *tx, id, at, &followup_body, None).await?)?;
        let continuation = RunContinuation { followup: followup.clone(), after_seq };
        sqlx::query(
            "UPDATE runs SET state = 'QUEUED', status_message = ?, continuation = ?, \
             execution_count = execution_count + 1, claimed_by = NULL, lease_us = NULL, started_us = NULL, \
             finished_us = NULL, cancel_requested = 0, updated_us = ? WHERE id = ?",
        )
        .bind(json(message))
        .bind(json(&continuation))
        .bind(micros(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let run = self.run_by_id(id).await?.ok_or(StoreError::NotFound)?;
        let event = |seq, body| RunEventRecord { run_id: id.to_owned(), seq, at, body };
        Ok((run, [event(state_seq, state_body), event(after_seq, followup_body)]))
    }

    async fn put_conversation(
        &self,
        run_id: &str,
        sealed: &str,
        bytes: usize,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_conversations (run_id, sealed, bytes, updated_us) VALUES (?, ?, ?, ?) \
             ON CONFLICT (run_id) DO UPDATE SET sealed = excluded.sealed, bytes = excluded.bytes, \
             updated_us = excluded.updated_us",
        )
        .bind(run_id)
        .bind(sealed)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(micros(at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn conversation(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT sealed FROM run_conversations WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(sealed,)| sealed))
    }

    async fn has_conversation(&self, run_id: &str) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM run_conversations WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn conversations_sealed_with_other_keys(&self, key_id: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT run_id FROM run_conversations WHERE substr(sealed, 1, length(?1)) <> ?1")
                .bind(crate::vault::sealed_prefix(key_id))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn request_cancel(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET cancel_requested = 1, updated_us = ? WHERE id = ?")
            .bind(micros(at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn renew_lease(&self, id: &str, until: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET lease_us = ? WHERE id = ? AND lease_us IS NOT NULL AND state <> 'PENDING'")
            .bind(micros(until))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn mark_started(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET started_us = COALESCE(started_us, ?), updated_us = ? WHERE id = ?")
            .bind(micros(at))
            .bind(micros(at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn add_artifact(&self, id: &str, artifact: &Artifact, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET artifacts = json_insert(artifacts, '$[#]', json(?)), updated_us = ? WHERE id = ?")
            .bind(json(artifact))
            .bind(micros(at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn unfinished_runs(&self, team_id: &str) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM runs WHERE team_id = ? \
             AND state IN ('QUEUED', 'PENDING', 'CLAIMED', 'INPROGRESS', 'BLOCKED')",
        )
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn queued_runs(&self, team_id: &str, worker_host: &str, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'QUEUED' AND team_id = ? AND worker_host = ? ORDER BY created_us, id LIMIT ?"
        );
        RunRecord::all(
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(team_id)
                .bind(worker_host)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn held_runs(&self, worker_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE claimed_by = ? AND state IN ('PENDING', 'CLAIMED', 'INPROGRESS', 'BLOCKED')"
        );
        RunRecord::all(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(worker_id).fetch_all(&self.pool).await?)
    }

    async fn expired_leases(&self, now: Timestamp) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE lease_us IS NOT NULL AND lease_us < ? \
             AND state IN ('PENDING', 'CLAIMED', 'INPROGRESS', 'BLOCKED')"
        );
        RunRecord::all(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(micros(now)).fetch_all(&self.pool).await?)
    }

    async fn append_event(&self, run_id: &str, at: Timestamp, body: &serde_json::Value) -> Result<i64, StoreError> {
        stored_seq(self.append(run_id, at, body, None).await?)
    }

    async fn append_report(
        &self,
        run_id: &str,
        attempt: &str,
        runner_seq: u64,
        at: Timestamp,
        body: &serde_json::Value,
    ) -> Result<Option<i64>, StoreError> {
        self.append(run_id, at, body, Some((attempt, runner_seq))).await
    }

    async fn events(&self, run_id: &str, after_seq: i64, limit: u32) -> Result<Vec<RunEventRecord>, StoreError> {
        RunEventRecord::all(
            sqlx::query_as(
                "SELECT run_id, seq, at_us, body, body_z FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(run_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn insert_token(&self, token: &WorkloadTokenRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO workload_tokens (id, run_id, team_id, secret_hash, expires_us, revoked) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&token.id)
            .bind(&token.run_id)
            .bind(&token.team_id)
            .bind(&token.secret_hash)
            .bind(micros(token.expires_at))
            .bind(token.revoked as i64)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<Option<WorkloadTokenRecord>, StoreError> {
        WorkloadTokenRecord::one(
            sqlx::query_as(
                "SELECT id, run_id, team_id, secret_hash, expires_us, revoked FROM workload_tokens WHERE id = ?",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn maintenance(&self) -> Result<(), StoreError> {
        // A passive checkpoint copies what it can from the WAL without blocking writers.
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await?;
        Ok(())
    }

    async fn open_resolution(&self, token_id: &str, now: Timestamp, window: Duration) -> Result<bool, StoreError> {
        let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        // One statement on the writer: the first answer's time is set once, and the check reads it.
        let open: Option<(i64,)> = sqlx::query_as(
            "UPDATE workload_tokens SET first_resolved_us = COALESCE(first_resolved_us, ?1) WHERE id = ?2 \
             RETURNING resolved_us IS NULL AND ?1 - first_resolved_us <= ?3",
        )
        .bind(micros(now))
        .bind(token_id)
        .bind(window_us)
        .fetch_optional(&self.writer)
        .await?;
        Ok(matches!(open, Some((1,))))
    }

    async fn close_resolution(&self, run_id: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE workload_tokens SET resolved_us = COALESCE(resolved_us, ?) WHERE run_id = ?")
            .bind(micros(at))
            .bind(run_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn forget_overwritten(&self) -> Result<(), StoreError> {
        // On the writer, so no write of ours is between the checkpoint and the truncation.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await?;
        Ok(())
    }

    async fn revoke_tokens(&self, run_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workload_tokens SET revoked = 1 WHERE run_id = ?")
            .bind(run_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn insert_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedules (id, team_id, name, cron, timezone, enabled, prompt, agent_config, created_by, updated_by, \
             created_us, updated_us, last_ran_us, next_run_us, last_spawn_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.team_id)
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(s.enabled as i64)
        .bind(&s.prompt)
        .bind(s.agent_config.as_ref().map(json))
        .bind(&s.created_by)
        .bind(&s.updated_by)
        .bind(micros(s.created_at))
        .bind(micros(s.updated_at))
        .bind(s.last_ran_at.map(micros))
        .bind(s.next_run_at.map(micros))
        .bind(&s.last_spawn_error)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn update_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE schedules SET name = ?, cron = ?, timezone = ?, enabled = ?, prompt = ?, agent_config = ?, updated_by = ?, \
             updated_us = ?, next_run_us = ? WHERE team_id = ? AND id = ?",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(s.enabled as i64)
        .bind(&s.prompt)
        .bind(s.agent_config.as_ref().map(json))
        .bind(&s.updated_by)
        .bind(micros(s.updated_at))
        .bind(s.next_run_at.map(micros))
        .bind(&s.team_id)
        .bind(&s.id)
        .execute(&self.writer)
        .await?;
        found(done.rows_affected())
    }

    async fn delete_schedule(&self, team_id: &str, id: &str) -> Result<(), StoreError> {
        self.delete_team_row(TeamTable::Schedules, team_id, id).await
    }

    async fn schedule(&self, team_id: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.team_row(TeamTable::Schedules, team_id, id).await
    }

    async fn schedules(&self, team_id: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.team_rows(TeamTable::Schedules, team_id).await
    }

    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<ScheduleRecord>, StoreError> {
        ScheduleRecord::all(sqlx::query_as("SELECT * FROM schedules WHERE enabled = 1 AND next_run_us IS NOT NULL AND next_run_us <= ? ORDER BY next_run_us LIMIT 100")
            .bind(micros(now))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn fire_schedule(
        &self,
        id: &str,
        expected_next: Timestamp,
        new_next: Option<Timestamp>,
        run: Result<&RunRecord, &str>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let error = run.err().map(str::to_owned);
        let done = sqlx::query(
            "UPDATE schedules SET next_run_us = ?, last_ran_us = ?, last_spawn_error = ? WHERE id = ? AND next_run_us = ? AND enabled = 1",
        )
        .bind(new_next.map(micros))
        .bind(micros(at))
        .bind(&error)
        .bind(id)
        .bind(micros(expected_next))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Ok(run) = run {
            insert_run_with(&mut *tx, run).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl IntegrationStore for SqliteStore {
    async fn insert_integration(&self, i: &IntegrationRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO integrations (id, team_id, name, kind, secret, enabled, prompt, agent_config, created_by, created_us, updated_us, settings) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&i.id)
        .bind(&i.team_id)
        .bind(&i.name)
        .bind(&i.kind)
        .bind(&i.secret)
        .bind(i.enabled as i64)
        .bind(&i.prompt)
        .bind(i.agent_config.as_ref().map(json))
        .bind(&i.created_by)
        .bind(micros(i.created_at))
        .bind(micros(i.updated_at))
        .bind(i.provider.as_ref().map(json))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn update_integration(&self, i: &IntegrationRecord) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE integrations SET name = ?, enabled = ?, prompt = ?, agent_config = ?, updated_us = ?, settings = ? WHERE team_id = ? AND id = ?")
            .bind(&i.name)
            .bind(i.enabled as i64)
            .bind(&i.prompt)
            .bind(i.agent_config.as_ref().map(json))
            .bind(micros(i.updated_at))
            .bind(i.provider.as_ref().map(json))
            .bind(&i.team_id)
            .bind(&i.id)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn delete_integration(&self, team_id: &str, id: &str) -> Result<(), StoreError> {
        self.delete_team_row(TeamTable::Integrations, team_id, id).await
    }

    async fn reseal_integration_secret(&self, id: &str, sealed: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE integrations SET secret = ? WHERE id = ?")
            .bind(sealed)
            .bind(id)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn integration(&self, team_id: &str, id: &str) -> Result<Option<IntegrationRecord>, StoreError> {
        self.team_row(TeamTable::Integrations, team_id, id).await
    }

    async fn integration_by_id(&self, id: &str) -> Result<Option<IntegrationRecord>, StoreError> {
        IntegrationRecord::one(
            sqlx::query_as("SELECT * FROM integrations WHERE id = ?").bind(id).fetch_optional(&self.pool).await?,
        )
    }

    async fn integrations(&self, team_id: &str) -> Result<Vec<IntegrationRecord>, StoreError> {
        self.team_rows(TeamTable::Integrations, team_id).await
    }

    async fn record_delivery(
        &self,
        integration_id: &str,
        signature: &str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE at_us < ?")
            .bind(micros(forget_before))
            .execute(&self.writer)
            .await?;
        let done =
            sqlx::query("INSERT OR IGNORE INTO webhook_deliveries (integration_id, signature, at_us) VALUES (?, ?, ?)")
                .bind(integration_id)
                .bind(signature)
                .bind(micros(at))
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_delivery(&self, integration_id: &str, signature: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE integration_id = ? AND signature = ?")
            .bind(integration_id)
            .bind(signature)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn insert_triggered_run(
        &self,
        run: &RunRecord,
        trigger: &RunTriggerRecord,
        delivery: &str,
        forget_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE at_us < ?")
            .bind(micros(forget_before))
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO webhook_deliveries (integration_id, signature, at_us, run_id) VALUES (?, ?, ?, ?)",
        )
        .bind(&trigger.integration_id)
        .bind(delivery)
        .bind(micros(run.created_at))
        .bind(&run.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_run_with(&mut *tx, run).await?;
        sqlx::query(
            "INSERT INTO run_triggers (run_id, integration_id, provider, thread_key, reply, created_us) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&trigger.run_id)
        .bind(&trigger.integration_id)
        .bind(&trigger.provider)
        .bind(&trigger.thread_key)
        .bind(json(&trigger.reply))
        .bind(micros(trigger.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn run_trigger_in_thread(
        &self,
        integration_id: &str,
        thread_key: &str,
    ) -> Result<Option<RunTriggerRecord>, StoreError> {
        RunTriggerRecord::one(
            sqlx::query_as(
                "SELECT * FROM run_triggers WHERE integration_id = ? AND thread_key = ? ORDER BY created_us DESC LIMIT 1",
            )
            .bind(integration_id)
            .bind(thread_key)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn run_trigger(&self, run_id: &str) -> Result<Option<RunTriggerRecord>, StoreError> {
        RunTriggerRecord::one(
            sqlx::query_as("SELECT * FROM run_triggers WHERE run_id = ?")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn pending_postbacks(&self, now: Timestamp, limit: u32) -> Result<Vec<RunTriggerRecord>, StoreError> {
        RunTriggerRecord::all(
            sqlx::query_as(
                "SELECT t.* FROM run_triggers t JOIN runs r ON r.id = t.run_id \
                 WHERE t.posted IS NOT (r.execution_count || ':' || r.state) \
                 AND (t.next_attempt_us IS NULL OR t.next_attempt_us <= ?) ORDER BY t.created_us LIMIT ?",
            )
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn next_postback_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t.next_attempt_us) FROM run_triggers t JOIN runs r ON r.id = t.run_id \
             WHERE t.posted IS NOT (r.execution_count || ':' || r.state) AND t.next_attempt_us IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(rows::from_micros))
    }

    async fn save_postback(&self, t: &RunTriggerRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE run_triggers SET posted = ?, target = ?, steps_done = ?, message_ref = ?, message_execution = ?, \
             thread_key = ?, reply = ?, attempts = ?, next_attempt_us = ? WHERE run_id = ?",
        )
        .bind(&t.posted)
        .bind(&t.target)
        .bind(i64::from(t.steps_done))
        .bind(&t.message_ref)
        .bind(i64::from(t.message_execution))
        .bind(&t.thread_key)
        .bind(json(&t.reply))
        .bind(i64::from(t.attempts))
        .bind(t.next_attempt_at.map(micros))
        .bind(&t.run_id)
        .execute(&self.writer)
        .await?;
        found(done.rows_affected())
    }
}
