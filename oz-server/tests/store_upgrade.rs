//! Databases made before the store used sqlx's migrator still open. The old store applied each
//! numbered SQL text in a transaction and recorded it in its own table, `schema_migrations (version,
//! applied_us)`; these tests write a database the same way, with raw SQL, and open it with today's
//! store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oz_server::store::sqlite::SqliteStore;
use oz_server::store::{IntegrationStore, Store};
use sqlx::{Connection, SqliteConnection};

/// The SQL the old store applied, by version (the migration files hold the same text).
const OLD_MIGRATIONS: [(i64, &str); 3] = [
    (1, include_str!("../migrations/0001_teams_keys_environments_runs.sql")),
    (2, include_str!("../migrations/0002_schedules.sql")),
    (3, include_str!("../migrations/0003_integrations.sql")),
];

/// Writes what the old store wrote after applying the migrations up to `through`, plus a team and
/// one of its runs.
async fn old_database(path: &Path, through: i64) {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_us INTEGER NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (version, sql) in OLD_MIGRATIONS.iter().filter(|(v, _)| *v <= through) {
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(*sql).execute(&mut *tx).await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, applied_us) VALUES (?, ?)")
            .bind(version)
            .bind(1_767_225_600_000_000_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    sqlx::raw_sql(
        "INSERT INTO teams (id, name, created_us) VALUES ('team_old', 'old', 1767225600000000); \
         INSERT INTO runs (id, team_id, title, prompt, state, source, worker_host, created_us, updated_us) \
         VALUES ('run_old', 'team_old', 'from before', 'hello', 'SUCCEEDED', 'API', 'w1', 1767225600000000, 1767225601000000);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// `(version, success)` of `_sqlx_migrations`, and whether `schema_migrations` is still there.
async fn bookkeeping(path: &Path) -> (Vec<(i64, bool)>, bool) {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let applied = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let old: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    (applied, old.is_some())
}

/// Every version in `migrations/`, applied and successful.
fn all_applied() -> Vec<(i64, bool)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let count = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    (1..=count as i64).map(|v| (v, true)).collect()
}

#[tokio::test]
async fn a_database_of_the_old_migrations_opens_with_its_data_and_nothing_is_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    old_database(&path, 3).await;

    // Applying version 1 again would fail: its tables exist.
    let store = SqliteStore::open(&path).await.unwrap();
    let run = store.run("team_old", "run_old").await.unwrap().expect("the old run is kept");
    assert_eq!(run.title, "from before");
    assert_eq!(run.state, oz_core::run::RunState::Succeeded);
    assert!(store.integrations("team_old").await.unwrap().is_empty());
    drop(store);
    assert_eq!(bookkeeping(&path).await, (all_applied(), true));

    // The second open finds sqlx's table and checks the checksums it recorded.
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(store.run_by_id("run_old").await.unwrap().is_some());
}

#[tokio::test]
async fn an_old_database_part_way_gets_the_versions_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    old_database(&path, 2).await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert!(store.integrations("team_old").await.unwrap().is_empty(), "version 3 made the integrations table");
    assert!(store.run_by_id("run_old").await.unwrap().is_some());
    drop(store);
    assert_eq!(bookkeeping(&path).await, (all_applied(), true));
}

#[tokio::test]
async fn a_new_database_has_only_sqlx_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    drop(SqliteStore::open(&path).await.unwrap());
    assert_eq!(bookkeeping(&path).await, (all_applied(), false));
}

#[tokio::test]
async fn runs_made_before_session_sharing_stay_their_teams_and_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    old_database(&path, 3).await;
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    // session_sharing was kept as given: a value that is not {public_access: VIEWER|EDITOR} too.
    sqlx::raw_sql(
        "INSERT INTO runs (id, team_id, title, prompt, state, source, worker_host, config, created_us, updated_us) VALUES \
         ('run_odd', 'team_old', 'odd', 'p', 'QUEUED', 'API', 'w1', '{\"worker_host\":\"w1\",\"session_sharing\":\"yes\"}', 1, 1), \
         ('run_pub', 'team_old', 'pub', 'p', 'QUEUED', 'API', 'w1', '{\"worker_host\":\"w1\",\"session_sharing\":{\"public_access\":\"VIEWER\"}}', 2, 2);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let odd = store.run("team_old", "run_odd").await.unwrap().expect("a run with an odd session_sharing still reads");
    assert_eq!(odd.config.as_ref().unwrap().session_sharing, None);
    let public = store.run("team_old", "run_pub").await.unwrap().unwrap();
    assert!(public.config.as_ref().unwrap().session_sharing.is_some(), "a well-formed value is kept");
    let old = store.run("team_old", "run_old").await.unwrap().unwrap();
    for run in [&odd, &public, &old] {
        assert_eq!(
            run.sharing,
            oz_core::sharing::RunSharing::default(),
            "{}: its team's, not opened to others",
            run.id
        );
        assert_eq!(run.session_id.len(), 32, "{}", run.id);
    }
    assert_ne!(odd.session_id, public.session_id);
}

/// Writes a database the migrator took through version `through`, with one team.
async fn database_through(path: &Path, through: i64) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let picked = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name[..4].parse::<i64>().unwrap() <= through {
            std::fs::copy(entry.path(), picked.path().join(&name)).unwrap();
        }
    }
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
    sqlx::migrate::Migrator::new(picked.path()).await.unwrap().run(&mut conn).await.unwrap();
    sqlx::raw_sql("INSERT INTO teams (id, name, created_us) VALUES ('team_old', 'old', 1767225600000000)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn insert_templates(path: &Path, rows: &[(&str, i64, &str)]) {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    for (id, updated_us, sharing) in rows {
        let config = format!("{{\"worker_host\":\"w1\",\"session_sharing\":{sharing}}}");
        for (sql, prefix) in [
            (
                "INSERT INTO schedules (id, team_id, name, cron, enabled, prompt, agent_config, created_us, updated_us) \
                 VALUES (?, 'team_old', ?, '0 * * * *', 1, 'p', ?, ?, ?)",
                "sched",
            ),
            (
                "INSERT INTO integrations (id, team_id, name, kind, secret, enabled, prompt, agent_config, created_us, updated_us) \
                 VALUES (?, 'team_old', ?, 'webhook', 'x', 1, 'p', ?, ?, ?)",
                "int",
            ),
        ] {
            sqlx::query(sql)
                .bind(format!("{prefix}_{id}"))
                .bind(*id)
                .bind(&config)
                .bind(updated_us)
                .bind(updated_us)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    conn.close().await.unwrap();
}

async fn template_sharing(store: &SqliteStore, id: &str) -> [Option<oz_core::sharing::SessionSharing>; 2] {
    use oz_server::store::ScheduleStore;
    let schedule = store.schedule("team_old", &format!("sched_{id}")).await.unwrap().expect("the schedule reads");
    let integration =
        store.integration("team_old", &format!("int_{id}")).await.unwrap().expect("the integration reads");
    [schedule.agent_config.unwrap().session_sharing, integration.agent_config.unwrap().session_sharing]
}

/// Before version 9, a schedule's or an integration's session_sharing granted nothing; the runs they
/// make must not be opened by it now. What a template was given since version 9 is kept.
#[tokio::test]
async fn templates_written_before_session_sharing_do_not_open_their_runs() {
    let dir = tempfile::tempdir().unwrap();

    // A database from before version 9: both kinds of template, public and odd.
    let before = dir.path().join("before.db");
    database_through(&before, 8).await;
    insert_templates(&before, &[("public", 1, "{\"public_access\":\"EDITOR\"}"), ("odd", 2, "\"yes\"")]).await;
    let store = SqliteStore::open(&before).await.unwrap();
    for id in ["public", "odd"] {
        assert_eq!(template_sharing(&store, id).await, [None, None], "{id}");
    }
    drop(store);

    // A database that had version 9 when its templates were written: they keep their sharing.
    let since = dir.path().join("since.db");
    database_through(&since, 9).await;
    let later = (std::time::SystemTime::now() + std::time::Duration::from_secs(2))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    insert_templates(
        &since,
        &[("kept", later, "{\"public_access\":\"VIEWER\"}"), ("stale", 1, "{\"public_access\":\"VIEWER\"}")],
    )
    .await;
    let store = SqliteStore::open(&since).await.unwrap();
    for sharing in template_sharing(&store, "kept").await {
        assert_eq!(sharing.and_then(|s| s.public_access), Some(oz_core::sharing::PublicAccess::Viewer));
    }
    assert_eq!(template_sharing(&store, "stale").await, [None, None], "written before version 9 was applied");
    drop(store);
    assert_eq!(bookkeeping(&since).await, (all_applied(), false));
}
