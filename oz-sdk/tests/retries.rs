//! Error and retry paths against a mock server, and event-stream resumption after a dropped
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use oz_sdk::Client;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(base: &str) -> Client {
    Client::builder().base_url(base).api_key("oz_test").retry_base_delay(Duration::from_millis(5)).build().unwrap()
}

fn run_json(id: &str) -> serde_json::Value {
    json!({"run_id": id, "task_id": id, "title": "t", "state": "QUEUED", "prompt": "p", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn idempotent_calls_retry_on_5xx_and_429_then_succeed() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/r1"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/r1"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/r1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(run_json("r1")))
        .mount(&mock)
        .await;
    let run = client(&mock.uri()).runs().get("r1").await.unwrap();
    assert_eq!(run.run_id, "r1");
    assert_eq!(mock.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn creating_is_not_retried_and_errors_carry_the_problem() {
    let mock = MockServer::start().await;
    let problem = json!({"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "db down", "error": "resource_unavailable", "retryable": true});
    Mock::given(method("POST"))
        .and(path("/api/v1/agent/runs"))
        .respond_with(ResponseTemplate::new(503).set_body_json(problem))
        .mount(&mock)
        .await;
    let err = client(&mock.uri()).runs().create("x").worker_host("w").send().await.unwrap_err();
    assert_eq!(mock.received_requests().await.unwrap().len(), 1, "a POST is never retried");
    assert_eq!(err.status(), Some(503));
    assert!(err.is_retryable());
    assert_eq!(err.problem().unwrap().detail, "db down");
    assert!(err.to_string().contains("db down"));
}

#[tokio::test]
async fn client_errors_are_not_retried_and_non_problem_bodies_still_map() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/bad"))
        .respond_with(ResponseTemplate::new(400).set_body_string("plain text oops"))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/boom"))
        .respond_with(ResponseTemplate::new(500).set_body_string("<html>"))
        .mount(&mock)
        .await;
    let c = client(&mock.uri());
    let err = c.runs().get("bad").await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.problem().unwrap().error, oz_core::failure::ErrorCode::InvalidRequest);
    let err = c.runs().get("boom").await.unwrap_err();
    assert_eq!(err.problem().unwrap().error, oz_core::failure::ErrorCode::InternalError);
    let hits = mock.received_requests().await.unwrap();
    assert_eq!(hits.iter().filter(|r| r.url.path().ends_with("/bad")).count(), 1);
    assert_eq!(hits.iter().filter(|r| r.url.path().ends_with("/boom")).count(), 4, "1 try + 3 retries");
    assert_eq!(hits[0].headers["authorization"], "Bearer oz_test");
}

#[tokio::test]
async fn configuration_errors_are_clear() {
    let err = Client::builder().base_url("ftp://x").api_key("k").build().unwrap_err();
    assert!(err.to_string().contains("http"), "{err}");
    let c = Client::builder().base_url("http://127.0.0.1:9/").api_key("k").build().unwrap();
    assert_eq!(c.base_url(), "http://127.0.0.1:9/api/v1");
    let err = c.runs().get("x").await.unwrap_err();
    assert!(matches!(err, oz_sdk::Error::Transport(_)), "{err:?}");
    assert!(!format!("{c:?}").contains("\"k\""));
}

/// The event stream resumes from the last event after the server drops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_after_a_dropped_connection() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    type Seen = Arc<Mutex<Vec<String>>>;
    let seen: Seen = Arc::default();
    let event = |seq: i64, body: serde_json::Value| {
        format!(
            "id: {seq}\nevent: x\ndata: {}\n\n",
            json!({"seq": seq, "at": "2026-01-01T00:00:00Z", "run_id": "r1", "event": body})
        )
    };
    let first = format!(
        "{}{}",
        event(1, json!({"event": "state", "state": "PENDING"})),
        event(2, json!({"event": "output", "stream": "stdout", "text": "a", "at": "2026-01-01T00:00:00Z"}))
    );
    let second = event(3, json!({"event": "state", "state": "SUCCEEDED"}));
    let app = axum::Router::new()
        .route(
            "/api/v1/agent/runs/r1/events",
            axum::routing::get(move |State(seen): State<Seen>, headers: HeaderMap| {
                let (first, second) = (first.clone(), second.clone());
                async move {
                    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(last.clone());
                    // The first connection ends after two events without the terminal one.
                    if last == "0" { first } else { second }
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = client(&format!("http://{addr}"));
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        c.runs().events("r1").map(|e| e.unwrap().seq).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(events, [1, 2, 3]);
    assert_eq!(*seen.lock().unwrap(), ["0", "2"]);
}
