-- Team secrets, sealed (see src/vault.rs): the database never holds a value in the clear.
CREATE TABLE secrets (
    team_id TEXT NOT NULL REFERENCES teams(id), name TEXT NOT NULL, sealed TEXT NOT NULL,
    updated_by TEXT, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL,
    PRIMARY KEY (team_id, name)
);
