-- Session sharing (issue 14): every run has a session id (its link names it), and who besides its
-- team's admins may watch or steer it. A run made before sharing existed is its team's, as it was:
-- team_access 'edit' (each member within their role), no public access, no named users.
ALTER TABLE runs ADD COLUMN session_id TEXT;
UPDATE runs SET session_id = lower(hex(randomblob(16))) WHERE session_id IS NULL;
CREATE UNIQUE INDEX runs_session ON runs(session_id);
ALTER TABLE runs ADD COLUMN team_access TEXT DEFAULT 'edit';
ALTER TABLE runs ADD COLUMN public_access TEXT;
-- [{"user_id": "...", "access": "view" | "edit"}]
ALTER TABLE runs ADD COLUMN shared_users TEXT NOT NULL DEFAULT '[]';
-- session_sharing was stored as given before it was typed: a value that does not read as
-- {public_access: VIEWER|EDITOR} is dropped (it granted nothing), so every run and schedule still reads.
UPDATE runs SET config = json_remove(config, '$.session_sharing')
WHERE json_valid(config) AND json_type(config, '$.session_sharing') IS NOT NULL
  AND NOT (json_type(config, '$.session_sharing') = 'object'
           AND COALESCE(json_extract(config, '$.session_sharing.public_access'), 'VIEWER') IN ('VIEWER', 'EDITOR')
           AND json_type(config, '$.session_sharing.share') IS NULL);
UPDATE schedules SET agent_config = json_remove(agent_config, '$.session_sharing')
WHERE json_valid(agent_config) AND json_type(agent_config, '$.session_sharing') IS NOT NULL
  AND NOT (json_type(agent_config, '$.session_sharing') = 'object'
           AND COALESCE(json_extract(agent_config, '$.session_sharing.public_access'), 'VIEWER') IN ('VIEWER', 'EDITOR')
           AND json_type(agent_config, '$.session_sharing.share') IS NULL);
-- Runs made before are not opened by their public_access now: it granted nothing when they were made.
