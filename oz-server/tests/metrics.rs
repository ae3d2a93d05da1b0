//! `/metrics`: what the control plane counts, read over HTTP as Prometheus would, on the metrics
//! listener (`ServerConfig::metrics_listen`), which is off by default and never the API port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::TestServer;

/// A server with a metrics listener on a free port.
async fn with_metrics() -> TestServer {
    let config = oz_server::ServerConfig { metrics_listen: Some("127.0.0.1:0".into()), ..support::config() };
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    TestServer::start_with(config, store).await
}

async fn metrics(t: &TestServer) -> String {
    let addr = t.server.metrics_addr().expect("a metrics listener");
    let resp = t.http.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    resp.text().await.unwrap()
}

#[tokio::test]
async fn runs_workers_and_requests_are_counted() {
    let t = with_metrics().await;
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
async fn by_default_there_is_no_metrics_listener_and_the_api_port_serves_none() {
    assert_eq!(oz_server::ServerConfig::default().metrics_listen, None);
    let t = TestServer::start().await;
    assert_eq!(t.server.metrics_addr(), None);
    let resp = t.http.get(format!("{}/metrics", t.server.url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn with_a_metrics_listener_the_api_port_still_serves_no_metrics() {
    let t = with_metrics().await;
    let addr = t.server.metrics_addr().unwrap();
    assert_ne!(addr, t.server.local_addr());
    let on_api = t.http.get(format!("{}/metrics", t.server.url())).send().await.unwrap();
    assert_eq!(on_api.status(), 404, "the API port never serves metrics");
    let text = metrics(&t).await;
    assert!(text.contains("oz_server_workers_connected 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    // The metrics listener serves the metrics and nothing else.
    for path in ["/healthz", "/api/v1/openapi.json"] {
        let resp = t.http.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path} on the metrics listener");
    }
}

#[tokio::test]
async fn a_bad_metrics_address_is_refused_at_start() {
    let config = oz_server::ServerConfig { metrics_listen: Some("not-an-address".into()), ..support::config() };
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    let err = oz_server::start(config, store).await.err().expect("refused");
    assert!(matches!(&err, oz_server::ServerError::Bind { addr, .. } if addr == "not-an-address"), "{err}");
}
