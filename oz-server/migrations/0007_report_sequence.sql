-- A runner's reports carry their place in its attempt's sequence: each (run, attempt, seq) is
-- stored once, so a runner may resend until acknowledged. The attempt is its workload token's id.
ALTER TABLE run_events ADD COLUMN attempt TEXT;
ALTER TABLE run_events ADD COLUMN runner_seq INTEGER;
CREATE UNIQUE INDEX run_events_report ON run_events(run_id, attempt, runner_seq) WHERE runner_seq IS NOT NULL;
