-- How a team's runs get git credentials, per git host (no secret here: providers name team secrets).
CREATE TABLE git_providers (
    team_id TEXT NOT NULL REFERENCES teams(id), host TEXT NOT NULL, provider TEXT NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL,
    PRIMARY KEY (team_id, host)
);
-- A run's resolved configuration is handed out from its first answer for a short window, and never
-- once its harness started (resolved_us: when that closed it).
ALTER TABLE workload_tokens ADD COLUMN resolved_us INTEGER;
ALTER TABLE workload_tokens ADD COLUMN first_resolved_us INTEGER;
