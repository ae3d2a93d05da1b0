-- Integrations with a provider (Slack, Linear, GitHub): its settings, as JSON (credentials are
-- never here: the settings name team secrets).
ALTER TABLE integrations ADD COLUMN settings TEXT;

-- What started a run, as a link (the Slack message, the Linear issue, the GitHub comment).
ALTER TABLE runs ADD COLUMN trigger_url TEXT;

-- A run a provider's event started, and what has been posted back to that provider about it:
-- `reply` says where (a Slack thread, a Linear issue, a GitHub issue); `thread_key` routes later
-- messages in that place to the run as follow-ups; `posted` is the last `<execution>:<state>` fully
-- posted, `target` the one being posted and `steps_done` how far that got (a retry resumes there).
CREATE TABLE run_triggers (
    run_id TEXT PRIMARY KEY NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    integration_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    thread_key TEXT NOT NULL,
    reply TEXT NOT NULL,
    posted TEXT,
    target TEXT,
    steps_done INTEGER NOT NULL DEFAULT 0,
    message_ref TEXT,
    message_execution INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER,
    created_us INTEGER NOT NULL
);
CREATE INDEX run_triggers_thread ON run_triggers(integration_id, thread_key, created_us);
