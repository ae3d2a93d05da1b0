-- Schedules and integrations are templates of runs. Before version 9, the session_sharing in their
-- agent config was kept as given and granted nothing; since version 9 it opens each run they make.
-- A template last written before version 9 was applied did not ask for that, so its session_sharing
-- is dropped (updating the template sets it again). This also drops the values version 9 left in
-- integrations that do not read as sharing. Templates written since version 9 were checked when
-- they were written and are kept.
UPDATE schedules SET agent_config = json_remove(agent_config, '$.session_sharing')
WHERE json_valid(agent_config) AND json_type(agent_config, '$.session_sharing') IS NOT NULL
  AND updated_us < (SELECT CAST(strftime('%s', installed_on) AS INTEGER) * 1000000
                    FROM _sqlx_migrations WHERE version = 9);
UPDATE integrations SET agent_config = json_remove(agent_config, '$.session_sharing')
WHERE json_valid(agent_config) AND json_type(agent_config, '$.session_sharing') IS NOT NULL
  AND updated_us < (SELECT CAST(strftime('%s', installed_on) AS INTEGER) * 1000000
                    FROM _sqlx_migrations WHERE version = 9);
