//! `/agent/schedules` and the scheduler: validation, pause/resume, exactly one run per tick, and
//! missed ticks across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use jiff::Timestamp;
use oz_server::store::sqlite::SqliteStore;
use reqwest::Method;
use serde_json::json;
use support::TestServer;

fn body(name: &str) -> serde_json::Value {
    json!({"name": name, "cron_schedule": "0 9 * * 1-5", "prompt": "triage new issues", "agent_config": {"worker_host": "w1"}})
}

#[tokio::test]
async fn schedules_crud_pause_and_resume() {
    let t = TestServer::start().await;
    let (status, s) = t.post("/agent/schedules", &t.key_a, body("daily triage")).await;
    assert_eq!(status, 200, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["enabled"], true);
    let next: Timestamp = s["history"]["next_run"].as_str().unwrap().parse().unwrap();
    assert!(next > Timestamp::now());
    assert_eq!(next.to_string().split('T').nth(1).unwrap(), "09:00:00Z");
    let (_, list) = t.get("/agent/schedules", &t.key_a).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    let (status, paused) = t.post(&format!("/agent/schedules/{id}/pause"), &t.key_a, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(paused["enabled"], false);
    assert!(paused["history"].get("next_run").is_none(), "{paused}");
    let (_, resumed) = t.post(&format!("/agent/schedules/{id}/resume"), &t.key_a, json!({})).await;
    assert_eq!(resumed["enabled"], true);
    assert!(resumed["history"]["next_run"].is_string());
    let (status, updated) = t
        .call(
            Method::PUT,
            &format!("/agent/schedules/{id}"),
            &t.key_a,
            Some(json!({"name": "hourly", "cron_schedule": "15 * * * *", "enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["cron_schedule"], "15 * * * *");
    assert_eq!(updated["prompt"], "triage new issues", "fields left out of an update are kept");
    let (status, problem) =
        t.call(Method::PUT, &format!("/agent/schedules/{id}"), &t.key_a, Some(json!({"name": "x"}))).await;
    assert_eq!(status, 400, "{problem}");
    // Another team sees none of it.
    for (method, path) in [
        (Method::GET, format!("/agent/schedules/{id}")),
        (Method::POST, format!("/agent/schedules/{id}/pause")),
        (Method::DELETE, format!("/agent/schedules/{id}")),
    ] {
        let (status, _) = t.call(method, &path, &t.key_b, None).await;
        assert_eq!(status, 404);
    }
    let (_, other) = t.get("/agent/schedules", &t.key_b).await;
    assert_eq!(other["schedules"].as_array().unwrap().len(), 0);
    let (status, done) = t.call(Method::DELETE, &format!("/agent/schedules/{id}"), &t.key_a, None).await;
    assert_eq!((status, done), (200, json!({"success": true})));
}

#[tokio::test]
async fn invalid_schedules_are_refused_naming_the_problem() {
    let t = TestServer::start().await;
    let cases = [
        (
            json!({"name": "x", "cron_schedule": "61 * * * *", "prompt": "p", "agent_config": {"worker_host": "w"}}),
            "minute",
        ),
        (
            json!({"name": "x", "cron_schedule": "0 0 * 13 *", "prompt": "p", "agent_config": {"worker_host": "w"}}),
            "month",
        ),
        (json!({"name": "x", "cron_schedule": "* * * *", "prompt": "p", "agent_config": {"worker_host": "w"}}), "5"),
        (json!({"name": "x", "cron_schedule": "* * * * *", "agent_config": {"worker_host": "w"}}), "prompt"),
        (
            json!({"name": "", "cron_schedule": "* * * * *", "prompt": "p", "agent_config": {"worker_host": "w"}}),
            "name",
        ),
        (json!({"name": "x", "cron_schedule": "* * * * *", "prompt": "p"}), "worker_host"),
        (
            json!({"name": "x", "cron_schedule": "* * * * *", "prompt": "p", "timezone": "Mars/Base", "agent_config": {"worker_host": "w"}}),
            "timezone",
        ),
        (json!({"name": "x"}), "cron_schedule"),
    ];
    for (req, expected) in cases {
        let (status, problem) = t.post("/agent/schedules", &t.key_a, req.clone()).await;
        assert_eq!(status, 400, "{req} -> {problem}");
        assert_eq!(problem["error"], "invalid_request");
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{req} -> {problem}");
    }
}

async fn make_due(t: &TestServer, id: &str, ago_secs: i64) {
    let mut s = t.store.schedule(&t.team_a, id).await.unwrap().unwrap();
    s.next_run_at = Some(Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(ago_secs)).unwrap());
    t.store.update_schedule(&s).await.unwrap();
}

async fn runs_of(t: &TestServer, key: &str, schedule_id: &str) -> Vec<serde_json::Value> {
    let (_, list) = t.get(&format!("/agent/runs?schedule_id={schedule_id}&limit=500"), key).await;
    list["runs"].as_array().unwrap().clone()
}

/// A due tick makes exactly one run, however many scheduler passes race for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_tick_makes_exactly_one_run() {
    let t = TestServer::start().await;
    let (_, s) = t.post("/agent/schedules", &t.key_a, body("every weekday")).await;
    let id = s["id"].as_str().unwrap().to_owned();
    make_due(&t, &id, 5).await;
    let state = t.server.state().clone();
    let passes: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { oz_server::scheduler::tick(&state).await.unwrap() })
        })
        .collect();
    let mut fired = 0;
    for p in passes {
        fired += p.await.unwrap();
    }
    // The server's own scheduler loop may have taken it too; either way there is exactly one run.
    assert!(fired <= 1);
    for _ in 0..100 {
        if !runs_of(&t, &t.key_a, &id).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let runs = runs_of(&t, &t.key_a, &id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["source"], "SCHEDULED_AGENT");
    assert_eq!(runs[0]["prompt"], "triage new issues");
    assert_eq!(runs[0]["title"], "every weekday");
    let (_, after) = t.get(&format!("/agent/schedules/{id}"), &t.key_a).await;
    let next: Timestamp = after["history"]["next_run"].as_str().unwrap().parse().unwrap();
    assert!(next > Timestamp::now());
    assert!(after["history"]["last_ran"].is_string());
}

/// Ticks missed while the server was down become one run at start-up, then the schedule goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_across_a_restart_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let t = TestServer::start_with(support::config(), store.clone()).await;
    let (_, s) = t
        .post(
            "/agent/schedules",
            &t.key_a,
            json!({"name": "m", "cron_schedule": "0 * * * *", "prompt": "p", "agent_config": {"worker_host": "w1"}}),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let (key, team) = (t.key_a.clone(), t.team_a.clone());
    t.server.shutdown().await;
    // While the server is down, three hourly ticks pass.
    use oz_server::store::ScheduleStore;
    let mut record = store.schedule(&team, &id).await.unwrap().unwrap();
    record.next_run_at = Some(Timestamp::now().checked_sub(jiff::SignedDuration::from_hours(3)).unwrap());
    store.update_schedule(&record).await.unwrap();

    let server = oz_server::start(support::config(), Arc::new(SqliteStore::open(&path).await.unwrap())).await.unwrap();
    let http = reqwest::Client::new();
    let list = |http: reqwest::Client, url: String, key: String| async move {
        let v: serde_json::Value = http.get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap();
        v["runs"].as_array().unwrap().len()
    };
    let url = format!("{}/api/v1/agent/runs?schedule_id={id}", server.url());
    let mut count = 0;
    for _ in 0..200 {
        count = list(http.clone(), url.clone(), key.clone()).await;
        if count > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(count, 1);
    // A few more scheduler passes make no more runs: the schedule moved on to the next hour.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(list(http.clone(), url, key.clone()).await, 1);
    let s: serde_json::Value = http
        .get(format!("{}/api/v1/agent/schedules/{id}", server.url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next: Timestamp = s["history"]["next_run"].as_str().unwrap().parse().unwrap();
    assert!(next > Timestamp::now(), "{s}");
}
