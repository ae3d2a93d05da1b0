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
