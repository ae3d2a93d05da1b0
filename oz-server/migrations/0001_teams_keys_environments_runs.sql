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
