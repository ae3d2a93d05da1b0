-- Principals and roles: every user (or service account) has a role in its team; credentials are API
-- keys (acting as a user, at most a role) or worker credentials (bound to worker ids), may expire, and
-- are revoked with a time. A key without a user (made before roles) acts as its team's admin.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'user';
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
CREATE INDEX users_team ON users(team_id, created_us);
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';
ALTER TABLE api_keys ADD COLUMN role TEXT;
ALTER TABLE api_keys ADD COLUMN worker_ids TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN expires_us INTEGER;
ALTER TABLE api_keys ADD COLUMN revoked_us INTEGER;
ALTER TABLE api_keys ADD COLUMN server_admin INTEGER NOT NULL DEFAULT 0;
CREATE INDEX api_keys_team ON api_keys(team_id, created_us);
