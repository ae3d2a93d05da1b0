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
    spawn_with(data_dir, &[])
}

#[allow(clippy::zombie_processes)] // the callers kill and wait for it
fn spawn_with(data_dir: &std::path::Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    spawn_logging(data_dir, extra, "warn", Stdio::null())
}

/// Its log (`OZ_LOG=level`) to `log`.
#[allow(clippy::zombie_processes)] // the callers kill and wait for it
fn spawn_logging(data_dir: &std::path::Path, extra: &[&str], level: &str, log: Stdio) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .args(["--listen", "127.0.0.1:0", "--offer-timeout-secs", "1"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("OZ_LOG", level)
        .stdout(Stdio::piped())
        .stderr(log)
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

/// A worker credential for `worker_id`, minted with `oz-server admin` on the database.
fn worker_credential(data_dir: &std::path::Path, worker_id: &str) -> String {
    let minted = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["admin", "key", "create", "--team", "default", "--worker-id", worker_id, "--name", worker_id])
        .env("OZ_LOG", "warn")
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    key_in(&String::from_utf8_lossy(&minted.stdout).lines().map(str::to_owned).collect::<Vec<_>>())
}

async fn create_run(http: &reqwest::Client, url: &str, key: &str, worker: &str) -> String {
    let created: Value = http
        .post(format!("{url}/api/v1/agent/runs"))
        .bearer_auth(key)
        .json(&json!({"prompt": "p", "config": {"worker_host": worker}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["run_id"].as_str().unwrap().to_owned()
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
    let credential = worker_credential(dir.path(), "w1");
    let http = reqwest::Client::new();

    // The worker takes the offer and never claims it (frozen); then the server dies.
    let mut worker = Worker::connect(&url, &credential, "w1").await;
    let run = create_run(&http, &url, &key, "w1").await;
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

/// A server that comes back after its workers' leases ran out while it was down does not give their
/// runs up at once: a worker has a lease's time to find the restarted server, and one that does
/// keeps its runs. One that never comes back loses them after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gives_workers_a_lease_to_come_back_before_giving_their_runs_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let lease = ["--lease-timeout-secs", "3"];
    let (mut server, url, output) = spawn_with(dir.path(), &lease);
    let key = key_in(&output);
    let credential = worker_credential(dir.path(), "w1");
    let http = reqwest::Client::new();
    let mut worker = Worker::connect(&url, &credential, "w1").await;
    let kept = create_run(&http, &url, &key, "w1").await;
    assert_eq!(offered(&mut worker).await, kept);
    let claim = |id: &str| {
        oz_core::wire::worker::WorkerMessage::TaskClaimed(oz_core::wire::worker::TaskClaimed {
            task_id: id.into(),
            worker_id: "w1".into(),
            execution_id: None,
        })
    };
    worker.send(claim(&kept)).await;
    wait_state(&http, &url, &key, &kept, "CLAIMED").await;
    // Down for longer than the lease: the lease in the database has run out by the restart.
    server.kill().unwrap();
    server.wait().unwrap();
    drop(worker);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut server, url, _) = spawn_with(dir.path(), &lease);
    // The upkeep has looked at the expired lease (it runs every half second) and waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state(&http, &url, &key, &kept).await, "CLAIMED", "given up before its worker could come back");
    // The worker comes back within the lease and keeps its run for as long as it stays.
    let worker = Worker::connect(&url, &credential, "w1").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(state(&http, &url, &key, &kept).await, "CLAIMED");
    // It goes for good: the run is given up after a lease.
    drop(worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(&http, &url, &key, &kept).await != "ERROR" {
        assert!(tokio::time::Instant::now() < deadline, "never given up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Slack is down when a mention starts a run, and the server is killed while it retries its
/// post-back: after the restart, the thread still gets the status message, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_back_pending_when_the_server_was_killed_is_made_after_the_restart() {
    use oz_provider_fakes::slack::{self, FakeSlack};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let fake = FakeSlack::start("xoxb-crash-token").await;
    let allow = ["--allow-provider-api-url", "http://127.0.0.1:"];
    let log_path = dir.path().join("server.log");
    let log = || Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap());
    let (mut server, url, output) = spawn_logging(dir.path(), &allow, "debug", log());
    let key = key_in(&output);
    for (name, value) in [("SLACK_SIGNING_SECRET", "crash-signing"), ("SLACK_BOT_TOKEN", "xoxb-crash-token")] {
        let put = http
            .put(format!("{url}/api/v1/secrets/{name}"))
            .bearer_auth(&key)
            .json(&json!({"value": value}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let created: Value = http
        .post(format!("{url}/api/v1/integrations"))
        .bearer_auth(&key)
        .json(&json!({"name": "slack", "agent_config": {"worker_host": "w1"}, "provider": {"kind": "slack", "signing_secret": "SLACK_SIGNING_SECRET", "bot_token_secret": "SLACK_BOT_TOKEN", "allowed_users": ["*"], "api_base_url": fake.base_url()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    fake.seed_message("C1", "1765000000.000100", "U1", "<@U0FAKEBOT> go", None);
    fake.fail_next(1000, oz_provider_fakes::Failure::ServerError);
    let body = json!({"type": "event_callback", "event_id": "EvCrash", "event": {"type": "app_mention", "user": "U1", "text": "<@U0FAKEBOT> go", "ts": "1765000000.000100", "channel": "C1"}}).to_string();
    let at = jiff::Timestamp::now().as_second();
    let answer: Value = http
        .post(format!("{url}/api/v1/integrations/{id}/slack/events"))
        .header("X-Slack-Request-Timestamp", at.to_string())
        .header("X-Slack-Signature", slack::sign("crash-signing", at, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    fake.wait_for("a failed post-back", Duration::from_secs(10), |f| {
        f.requests().into_iter().find(|r| r.path.ends_with("chat.postMessage"))
    })
    .await;
    server.kill().unwrap();
    server.wait().unwrap();

    fake.clear_failures();
    let (mut server, url, _) = spawn_logging(dir.path(), &allow, "debug", log());
    let posted = fake
        .wait_for("the status message after the restart", Duration::from_secs(30), |f| {
            f.messages().into_iter().find(|m| m.by_bot)
        })
        .await;
    assert_eq!(posted.thread_ts.as_deref(), Some("1765000000.000100"));
    assert!(posted.text.contains("/sessions/"), "{}", posted.text);
    assert_eq!(state(&http, &url, &key, &run_id).await, "QUEUED", "the run itself was never affected");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.messages().into_iter().filter(|m| m.by_bot).count(), 1, "posted once");
    server.kill().unwrap();
    server.wait().unwrap();
    // The server's debug log of all that (failed calls, retries, the restart) holds neither secret.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("a post-back will be tried again"), "the log was captured: {log}");
    assert!(!log.contains("xoxb-crash-token") && !log.contains("crash-signing"), "a secret reached the log");
    for file in ["oz.db", "oz.db-wal"] {
        let Ok(bytes) = std::fs::read(dir.path().join(file)) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("xoxb-crash-token") && !text.contains("crash-signing"),
            "{file}: secrets are sealed at rest"
        );
    }
}
