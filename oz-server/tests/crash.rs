//! The `oz-server` program killed with SIGKILL: an offer that died with it is offered again after
//! the restart (the run never stays PENDING), and a run cancelled while offered is cancelled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unreachable_pub, dead_code)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oz_core::wire::worker::ServerMessage;
use serde_json::{Value, json};
use support::Worker;

#[allow(clippy::zombie_processes)] // the callers kill and wait for it
fn spawn(data_dir: &std::path::Path) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .args(["--listen", "127.0.0.1:0", "--offer-timeout-secs", "1", "--data-dir"])
        .arg(data_dir)
        .env("OZ_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("oz-server listening on ") {
            return (child, rest.split_whitespace().next().unwrap().to_owned(), seen);
        }
    }
}

fn key_in(output: &[String]) -> String {
    output.iter().find_map(|l| l.trim().strip_prefix("oz_").map(|rest| format!("oz_{rest}"))).expect("a key was shown")
}

async fn state(http: &reqwest::Client, url: &str, key: &str, run: &str) -> String {
    let body: Value =
        http.get(format!("{url}/api/v1/agent/runs/{run}")).bearer_auth(key).send().await.unwrap().json().await.unwrap();
    body["state"].as_str().unwrap().to_owned()
}

async fn wait_state(http: &reqwest::Client, url: &str, key: &str, run: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = state(http, url, key, run).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "run {run} stayed {now}, never {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn offered(worker: &mut Worker) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), worker.next()).await.expect("an offer");
    let ServerMessage::TaskAssignment(a) = message else { panic!("not an assignment: {message:?}") };
    a.task_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_that_died_with_the_server_is_offered_again_and_can_be_cancelled() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url, output) = spawn(dir.path());
    let key = key_in(&output);
    let minted = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["admin", "key", "create", "--team", "default", "--worker-id", "w1", "--name", "w1"])
        .env("OZ_LOG", "warn")
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let credential = key_in(&String::from_utf8_lossy(&minted.stdout).lines().map(str::to_owned).collect::<Vec<_>>());
    let http = reqwest::Client::new();

    // The worker takes the offer and never claims it (frozen); then the server dies.
    let mut worker = Worker::connect(&url, &credential, "w1").await;
    let created: Value = http
        .post(format!("{url}/api/v1/agent/runs"))
        .bearer_auth(&key)
        .json(&json!({"prompt": "p", "config": {"worker_host": "w1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["run_id"].as_str().unwrap().to_owned();
    assert_eq!(offered(&mut worker).await, run);
    assert_eq!(state(&http, &url, &key, &run).await, "PENDING");
    server.kill().unwrap();
    server.wait().unwrap();
    drop(worker);

    // After the restart the dead offer runs out and the run is queued, then offered again.
    let (mut server, url, _) = spawn(dir.path());
    wait_state(&http, &url, &key, &run, "QUEUED").await;
    let mut worker = Worker::connect(&url, &credential, "w1").await;
    assert_eq!(offered(&mut worker).await, run, "the run is offered again");
    // Cancelled while offered (PENDING): answered, done, and the worker told to drop the offer.
    assert_eq!(state(&http, &url, &key, &run).await, "PENDING");
    let cancel = http.post(format!("{url}/api/v1/agent/runs/{run}/cancel")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(cancel.status(), 200);
    assert_eq!(state(&http, &url, &key, &run).await, "CANCELLED");
    let told = tokio::time::timeout(Duration::from_secs(5), worker.next()).await.expect("a cancellation");
    assert!(matches!(told, ServerMessage::TaskCancellation(ref c) if c.task_id == run), "{told:?}");
    server.kill().unwrap();
    server.wait().unwrap();
}
