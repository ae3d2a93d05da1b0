CREATE TABLE schedules (
    id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), name TEXT NOT NULL, cron TEXT NOT NULL,
    timezone TEXT, enabled INTEGER NOT NULL, prompt TEXT, agent_config TEXT, created_by TEXT, updated_by TEXT,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, last_ran_us INTEGER, next_run_us INTEGER,
    last_spawn_error TEXT
);
CREATE INDEX schedules_team ON schedules(team_id, created_us);
CREATE INDEX schedules_due ON schedules(enabled, next_run_us);
