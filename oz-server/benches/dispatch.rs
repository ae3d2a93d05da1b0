//! Control-plane throughput and dispatch latency on loopback with SQLite (a file, WAL).
//!
//! ```text
//! cargo bench -p oz-server --bench dispatch [-- RUNS]
//! ```
//!
//! 1. Creates per second: 8 concurrent HTTP clients create RUNS runs (`POST /agent/runs`). Baseline in
//!    the same run: the same clients calling `GET /healthz` (the HTTP stack without the API work).
//! 2. Create-to-assignment latency: a worker connected over a real WebSocket; one run at a time, the
//!    time from sending `POST /agent/runs` to the worker receiving its `task_assignment`. Baseline: the
//!    `POST /agent/runs` round trip alone (no worker).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use oz_core::wire::worker::{ServerMessage, TaskClaimed, TaskCompleted, WorkerMessage};
use oz_server::store::sqlite::SqliteStore;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

async fn hammer(
    clients: usize,
    total: usize,
    make: impl Fn(reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + Clone + 'static,
) -> f64 {
    let start = Instant::now();
    let per = total / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let make = make.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for _ in 0..per {
                    let r = make(http.clone()).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * clients) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let total: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(4000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).await.unwrap());
        let (team, key) = oz_server::bootstrap_team(store.as_ref(), "bench").await.unwrap();
        let worker_key =
            oz_server::mint_worker_credential(store.as_ref(), &team, "bench", &["bench-worker"]).await.unwrap();
        let server = oz_server::start(
            oz_server::ServerConfig {
                listen: "127.0.0.1:0".into(),
                // The benchmark measures the server, not its limits.
                run_limits: oz_server::limits::RunLimits::unlimited(),
                ..Default::default()
            },
            store,
        )
        .await
        .unwrap();
        let base = server.url();

        // 1. Throughput.
        let health = format!("{base}/healthz");
        let baseline = hammer(8, total, move |c| c.get(health.clone())).await;
        let runs_url = format!("{base}/api/v1/agent/runs");
        let (k, u) = (key.clone(), runs_url.clone());
        let creates = hammer(8, total, move |c| {
            c.post(u.clone()).bearer_auth(&k).json(&json!({"prompt": "bench", "config": {"worker_host": "idle"}}))
        })
        .await;
        println!("runs: {total}, 8 concurrent clients, SQLite file (WAL)");
        println!("| measurement | per second |");
        println!("|---|---|");
        println!("| GET /healthz (baseline) | {baseline:.0} |");
        println!("| POST /agent/runs | {creates:.0} |");
        println!("ratio: creates run at {:.0}% of the bare HTTP stack's rate", creates / baseline * 100.0);

        // 2. Latency to the worker.
        let mut req = format!("{}/api/v1/selfhosted/worker/ws?worker_id=bench-worker", base.replace("http", "ws"))
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {worker_key}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let http = reqwest::Client::new();
        let iterations = 500;
        let mut to_assignment = Vec::with_capacity(iterations);
        let mut create_only = Vec::with_capacity(iterations);
        for i in 0..(iterations + 20) {
            let t = Instant::now();
            let r = http
                .post(&runs_url)
                .bearer_auth(&key)
                .json(&json!({"prompt": "p", "config": {"worker_host": "nobody"}}))
                .send()
                .await
                .unwrap();
            let _ = r.bytes().await;
            let created = t.elapsed();

            let t = Instant::now();
            let r = http
                .post(&runs_url)
                .bearer_auth(&key)
                .json(&json!({"prompt": "p", "config": {"worker_host": "bench-worker"}}))
                .send()
                .await
                .unwrap();
            let run: serde_json::Value = r.json().await.unwrap();
            let id = run["run_id"].as_str().unwrap().to_owned();
            let assignment = loop {
                match ws.next().await.unwrap().unwrap() {
                    Message::Text(text) => match ServerMessage::from_json(&text).unwrap() {
                        Some(ServerMessage::TaskAssignment(a)) => break a,
                        _ => continue,
                    },
                    _ => continue,
                }
            };
            let took = t.elapsed();
            assert_eq!(assignment.task_id, id);
            for m in [
                WorkerMessage::TaskClaimed(TaskClaimed {
                    task_id: id.clone(),
                    worker_id: "bench-worker".into(),
                    execution_id: None,
                }),
                WorkerMessage::TaskCompleted(TaskCompleted {
                    task_id: id.clone(),
                    message: String::new(),
                    task_state: None,
                    execution_id: None,
                }),
            ] {
                ws.send(Message::Text(m.to_json().unwrap().into())).await.unwrap();
            }
            if i >= 20 {
                to_assignment.push(took);
                create_only.push(created);
            }
        }
        to_assignment.sort();
        create_only.sort();
        println!();
        println!("{iterations} runs, one at a time, after 20 warm-up");
        println!("| measurement (ms) | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        println!(
            "| POST /agent/runs round trip (baseline) | {:.2} | {:.2} | {:.2} |",
            pct(&create_only, 0.5),
            pct(&create_only, 0.9),
            pct(&create_only, 0.99)
        );
        println!(
            "| create to task_assignment at the worker | {:.2} | {:.2} | {:.2} |",
            pct(&to_assignment, 0.5),
            pct(&to_assignment, 0.9),
            pct(&to_assignment, 0.99)
        );
        server.shutdown().await;
    });
}
