//! `/metrics`: what the control plane counts, read over HTTP as Prometheus would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::TestServer;

async fn metrics(t: &TestServer) -> String {
    let resp = t.http.get(format!("{}/metrics", t.server.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    resp.text().await.unwrap()
}

#[tokio::test]
async fn runs_workers_and_requests_are_counted() {
    let t = TestServer::start().await;
    let before = metrics(&t).await;
    assert!(before.contains("oz_server_workers_connected 0"), "{before}");
    assert!(!before.contains("oz_server_runs_created_total{"), "nothing created yet: {before}");

    // A run for a worker that is not connected stays QUEUED and can be cancelled at once.
    let run_id = t.create_run(&t.key_a, "metrics-worker", "count me").await;
    let (status, _) = t.get("/agent/runs/nope", &t.key_a).await;
    assert_eq!(status, 404);
    t.post(&format!("/agent/runs/{run_id}/cancel"), &t.key_a, serde_json::json!({})).await;
    t.wait_state(&t.key_a, &run_id, "CANCELLED").await;
    let worker = t.worker(&t.key_a, "another-worker").await;

    let mut text = String::new();
    for _ in 0..100 {
        text = metrics(&t).await;
        if text.contains("oz_server_workers_connected 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.contains("oz_server_workers_connected 1"), "{text}");
    assert!(text.contains("oz_server_runs_created_total{source=\"API\"} 1"), "{text}");
    assert!(text.contains("oz_server_run_state_changes_total{to=\"CANCELLED\"} 1"), "{text}");
    assert!(text.contains("oz_server_run_duration_seconds_count{state=\"CANCELLED\"} 1"), "{text}");
    // Routes are the matched patterns, never raw ids.
    assert!(
        text.contains(
            "oz_server_http_requests_total{method=\"GET\",route=\"/api/v1/agent/runs/{id}\",status=\"404\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains(&run_id), "no run id in any label: {text}");
    drop(worker);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let mut config = support::config();
    config.metrics = false;
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    let t = TestServer::start_with(config, store).await;
    let resp = t.http.get(format!("{}/metrics", t.server.url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
