//! Limits on making runs: a key that makes runs too fast gets 429 with `Retry-After` (another key
//! does not), and a team at its cap of unfinished runs gets 429 until some end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use oz_server::limits::RunLimits;
use oz_server::store::sqlite::SqliteStore;
use serde_json::json;
use support::TestServer;

async fn server(limits: RunLimits) -> TestServer {
    let config = oz_server::ServerConfig { run_limits: limits, ..support::config() };
    TestServer::start_with(config, Arc::new(SqliteStore::temporary().await.unwrap())).await
}

async fn create(t: &TestServer, key: &str) -> reqwest::Response {
    t.http
        .post(t.url("/agent/runs"))
        .bearer_auth(key)
        .json(&json!({"prompt": "p", "config": {"worker_host": "w1"}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_makes_runs_too_fast_is_told_when_to_come_back() {
    let t = server(RunLimits { per_key_per_minute: 1, burst: 2, active_per_team: 0 }).await;
    assert_eq!(create(&t, &t.key_a).await.status(), 200);
    assert_eq!(create(&t, &t.key_a).await.status(), 200);
    let refused = create(&t, &t.key_a).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["retryable"], true, "{problem}");
    assert_eq!(create(&t, &t.key_b).await.status(), 200, "another key has its own allowance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_at_its_cap_of_unfinished_runs_waits_for_some_to_end() {
    let t = server(RunLimits { per_key_per_minute: 0, burst: 0, active_per_team: 2 }).await;
    let first: serde_json::Value = create(&t, &t.key_a).await.json().await.unwrap();
    assert_eq!(create(&t, &t.key_a).await.status(), 200);
    let refused = create(&t, &t.key_a).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["error"], "budget_exceeded", "{problem}");
    assert_eq!(create(&t, &t.key_b).await.status(), 200, "another team is not counted");
    let run = first["run_id"].as_str().unwrap();
    assert_eq!(t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await.0, 200);
    assert_eq!(create(&t, &t.key_a).await.status(), 200, "room again once one ended");
}
