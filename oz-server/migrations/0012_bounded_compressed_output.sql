-- A run's history is kept compressed and bounded. A large event's body is stored deflated in
-- body_z (body is then ''); output_bytes is the text an output event carried, summed per run in
-- runs.output_bytes, so that past the server's bound a run's oldest output can be dropped (its
-- other events stay).
ALTER TABLE run_events ADD COLUMN body_z BLOB;
ALTER TABLE run_events ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE run_events SET output_bytes = length(CAST(json_extract(body, '$.text') AS BLOB))
    WHERE json_extract(body, '$.event') = 'output';
UPDATE runs SET output_bytes = COALESCE((SELECT SUM(output_bytes) FROM run_events WHERE run_events.run_id = runs.id), 0);
CREATE INDEX run_events_output ON run_events(run_id, seq) WHERE output_bytes > 0;
