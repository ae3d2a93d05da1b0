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

async fn server_with(connections: oz_server::http::ConnectionLimits) -> TestServer {
    let config = oz_server::ServerConfig { connections, ..support::config() };
    TestServer::start_with(config, Arc::new(SqliteStore::temporary().await.unwrap())).await
}

fn addr(t: &TestServer) -> String {
    t.server.url().trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection, or `wait` passes (`None`).
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: std::time::Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_let_go() {
    use tokio::io::AsyncWriteExt;
    let limits = oz_server::http::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let t = server_with(limits).await;
    let mut silent = tokio::net::TcpStream::connect(addr(&t)).await.unwrap();
    assert!(closed_within(&mut silent, std::time::Duration::from_secs(5)).await.is_some(), "a silent client stays");
    let mut trickle = tokio::net::TcpStream::connect(addr(&t)).await.unwrap();
    trickle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut trickle, std::time::Duration::from_secs(5)).await.is_some(), "half headers stay");
    // A client that sends its request in time is answered.
    let (status, _) = t.get("/agent/runs", &t.key_a).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    use tokio::io::AsyncWriteExt;
    let limits = oz_server::http::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_secs(30),
        max_connections: 2,
    };
    let t = server_with(limits).await;
    let first = tokio::net::TcpStream::connect(addr(&t)).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr(&t)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(addr(&t)).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(
        closed_within(&mut third, std::time::Duration::from_millis(500)).await.is_none(),
        "a third connection was served past the cap of two"
    );
    drop(first);
    let answer = closed_within(&mut third, std::time::Duration::from_secs(5)).await.expect("served once one closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}
