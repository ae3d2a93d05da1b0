//! The schema, as numbered migrations applied in order at start-up, each in its own transaction.

/// `(version, SQL)`, in order. Never edit a published one; add the next.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_us INTEGER NOT NULL);
CREATE TABLE users (id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), name TEXT NOT NULL, created_us INTEGER NOT NULL);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), user_id TEXT,
    secret_hash BLOB NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, created_us INTEGER NOT NULL
);
CREATE TABLE environments (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), config TEXT NOT NULL,
    creator_id TEXT, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL
);
CREATE INDEX environments_team ON environments(team_id);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), creator_id TEXT,
    title TEXT NOT NULL, prompt TEXT NOT NULL, state TEXT NOT NULL, source TEXT NOT NULL,
    worker_host TEXT, config TEXT, status_message TEXT, artifacts TEXT NOT NULL DEFAULT '[]', metadata TEXT,
    schedule_id TEXT, parent_run_id TEXT, environment_id TEXT, model_id TEXT, agent_name TEXT,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, started_us INTEGER, finished_us INTEGER,
    execution_id TEXT, claimed_by TEXT, lease_us INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_team_created ON runs(team_id, created_us, id);
CREATE INDEX runs_team_updated ON runs(team_id, updated_us, id);
CREATE INDEX runs_queue ON runs(state, worker_host, created_us);
CREATE INDEX runs_claimed ON runs(claimed_by, state);
CREATE TABLE run_events (
    run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, at_us INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE workload_tokens (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), team_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL, expires_us INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workload_tokens_run ON workload_tokens(run_id);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE schedules (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), name TEXT NOT NULL, cron TEXT NOT NULL,
    timezone TEXT, enabled INTEGER NOT NULL, prompt TEXT, agent_config TEXT, created_by TEXT, updated_by TEXT,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, last_ran_us INTEGER, next_run_us INTEGER,
    last_spawn_error TEXT
);
CREATE INDEX schedules_team ON schedules(team_id, created_us);
CREATE INDEX schedules_due ON schedules(enabled, next_run_us);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE integrations (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), name TEXT NOT NULL, kind TEXT NOT NULL,
    secret TEXT NOT NULL, enabled INTEGER NOT NULL, prompt TEXT NOT NULL, agent_config TEXT, created_by TEXT,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL
);
CREATE INDEX integrations_team ON integrations(team_id, created_us);
CREATE TABLE webhook_deliveries (
    integration_id TEXT NOT NULL, signature TEXT NOT NULL, at_us INTEGER NOT NULL, run_id TEXT,
    PRIMARY KEY (integration_id, signature)
);
"#,
    ),
];
