-- A run continued after its end by a follow-up runs again as a new execution of the same run:
-- which execution it is in, and the follow-up that continued it (what its agent is asked now, and
-- the event its steering follows from).
ALTER TABLE runs ADD COLUMN execution_count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN continuation TEXT;

-- What a run's agent kept of its conversation at the end of an execution (an archive made by its
-- runner, never read here), sealed by the server's keyring; the next execution goes on from it.
CREATE TABLE run_conversations (
    run_id TEXT PRIMARY KEY NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    sealed TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    updated_us INTEGER NOT NULL
);
