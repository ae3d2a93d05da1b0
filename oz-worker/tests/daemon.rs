//! `oz-agent-worker`, the real program, against the real control plane: killed mid-run and restarted;
//! shut down gracefully. The agent is the real `oz` runner (built with the workspace).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;
use oz_server::store::sqlite::SqliteStore;

/// The `oz` binary next to this test's build (cargo builds every workspace binary for the tests).
fn oz_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("oz");
    assert!(bin.exists(), "{} is missing: build the workspace (cargo build --workspace) first", bin.display());
    bin
}

struct Env {
    dir: tempfile::TempDir,
    server: oz_server::RunningServer,
    worker_key: String,
    client: oz_sdk::Client,
}

async fn env(lease_secs: u64) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "t").await.unwrap();
    let worker_key =
        oz_server::mint_worker_credential(store.as_ref(), &team, "daemon-test", &["daemon-test"]).await.unwrap();
    let config = oz_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        lease_timeout: Duration::from_secs(lease_secs),
        ..Default::default()
    };
    let server = oz_server::start(config, store).await.unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    let yaml = format!(
        "worker_id: daemon-test\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
        dir.path().join("ws").display(),
        oz_binary().display()
    );
    std::fs::write(dir.path().join("worker.yaml"), yaml).unwrap();
    Env { dir, server, worker_key, client }
}

fn spawn_worker(e: &Env) -> Child {
    Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--config-file")
        .arg(e.dir.path().join("worker.yaml"))
        .args(["--server-root-url", &e.server.url(), "--log-level", "warn"])
        .env("WARP_API_KEY", &e.worker_key)
        .env("OZ_WORKER_OUTBOX_FILE", e.dir.path().join("worker.outbox"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn start_long_run(e: &Env) -> String {
    let config = AgentConfig {
        worker_host: Some("daemon-test".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "echo started; sleep 300".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = e.client.runs().create("run long").agent_config(config).send().await.unwrap();
    wait_for(e, &run.run_id, |s| s == "INPROGRESS").await;
    run.run_id
}

async fn wait_for(e: &Env, run_id: &str, ok: impl Fn(&str) -> bool) -> oz_core::wire::api::RunItem {
    for _ in 0..600 {
        let item = e.client.runs().get(run_id).await.unwrap();
        if ok(item.state.as_str()) {
            return item;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} never reached the expected state: {:?}", e.client.runs().get(run_id).await.unwrap());
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
}

fn run_processes(run_id: &str) -> usize {
    oz_backend_direct::process::processes_of_task(run_id).len()
}

async fn start_run(e: &Env, script: &str) -> String {
    let config = AgentConfig {
        worker_host: Some("daemon-test".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = e.client.runs().create("run gated").agent_config(config).send().await.unwrap();
    wait_for(e, &run.run_id, |s| s == "INPROGRESS").await;
    run.run_id
}

/// Kills the worker with SIGKILL and starts it again; the run's task must have outlived it.
async fn crash_and_restart(e: &Env, mut worker: Child, run_id: &str) -> Child {
    signal(&worker, "-KILL");
    worker.wait().unwrap();
    assert!(run_processes(run_id) > 0, "the task outlives its worker");
    assert!(e.dir.path().join("ws").join(run_id).exists());
    let restarted = spawn_worker(e);
    // The old backend ended the run ERROR at once here; a reattached run stays in progress.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let item = e.client.runs().get(run_id).await.unwrap();
    assert_eq!(item.state.as_str(), "INPROGRESS", "the restarted worker did not reattach: {item:?}");
    restarted
}

async fn nothing_left(e: &Env, run_id: &str) {
    for _ in 0..250 {
        if run_processes(run_id) == 0 && !e.dir.path().join("ws").join(run_id).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(run_processes(run_id), 0, "leftover processes");
    assert!(!e.dir.path().join("ws").join(run_id).exists(), "leftover workspace");
}

/// `kill -9` of the worker mid-run, then a restart: the restarted worker reattaches to the task that
/// is still running, and when the task ends the run ends with its outcome (here SUCCEEDED), leaving
/// no process and no workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_reattaches_after_restart_and_forwards_the_outcome() {
    let e = env(60).await;
    let gate = e.dir.path().join("go");
    let worker = spawn_worker(&e);
    let run_id = start_run(&e, &format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display())).await;
    let mut restarted = crash_and_restart(&e, worker, &run_id).await;
    std::fs::write(&gate, b"").unwrap();
    let item = wait_for(&e, &run_id, |s| s != "INPROGRESS").await;
    assert_eq!(item.state.as_str(), "SUCCEEDED", "{item:?}");
    nothing_left(&e, &run_id).await;
    signal(&restarted, "-TERM");
    assert!(restarted.wait().unwrap().success());
}

/// A run cancelled after its worker was killed and restarted: the reattached task's processes are
/// stopped and the run ends CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattached_run_can_be_cancelled() {
    let e = env(60).await;
    let worker = spawn_worker(&e);
    let run_id = start_long_run(&e).await;
    let mut restarted = crash_and_restart(&e, worker, &run_id).await;
    e.client.runs().cancel(&run_id).await.unwrap();
    let item = wait_for(&e, &run_id, |s| s != "INPROGRESS").await;
    assert_eq!(item.state.as_str(), "CANCELLED", "{item:?}");
    nothing_left(&e, &run_id).await;
    signal(&restarted, "-TERM");
    assert!(restarted.wait().unwrap().success());
}

/// SIGTERM: the worker cancels its task, reports `graceful_shutdown`, and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let e = env(60).await;
    let mut worker = spawn_worker(&e);
    let run_id = start_long_run(&e).await;
    signal(&worker, "-TERM");
    let status = tokio::task::spawn_blocking(move || worker.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let item = wait_for(&e, &run_id, |s| s == "ERROR" || s == "CANCELLED" || s == "FAILED").await;
    assert_eq!(item.state.as_str(), "ERROR", "{item:?}");
    assert!(item.status_message.unwrap().message.contains("graceful_shutdown"));
    assert_eq!(run_processes(&run_id), 0);
    assert!(!e.dir.path().join("ws").join(&run_id).exists());
}

/// The section's `environment` (a value, and one inherited from the worker) and `-e` reach the task,
/// and a flag wins over the file for the same name ("flags override the file").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_variables_reach_the_task_and_flags_win() {
    let e = env(60).await;
    let yaml = format!(
        "worker_id: daemon-test\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    environment:\n      - {{name: FROM_FILE, value: file}}\n      - {{name: BOTH, value: file}}\n      - {{name: INHERITED_BY_TASK}}\n",
        e.dir.path().join("ws").display(),
        oz_binary().display()
    );
    std::fs::write(e.dir.path().join("worker.yaml"), yaml).unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--config-file")
        .arg(e.dir.path().join("worker.yaml"))
        .args(["--server-root-url", &e.server.url(), "--log-level", "warn", "-e", "BOTH=flag", "-e", "ONLY_FLAG=1"])
        .env("WARP_API_KEY", &e.worker_key)
        .env("OZ_WORKER_OUTBOX_FILE", e.dir.path().join("worker.outbox"))
        .env("INHERITED_BY_TASK", "from-the-worker")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let script = "echo \"vars: $FROM_FILE $BOTH $ONLY_FLAG $INHERITED_BY_TASK\"";
    let config = AgentConfig {
        worker_host: Some("daemon-test".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = e.client.runs().create("print the variables").agent_config(config).send().await.unwrap();
    let item = wait_for(&e, &run.run_id, |s| s == "SUCCEEDED" || s == "FAILED" || s == "ERROR").await;
    assert_eq!(item.state.as_str(), "SUCCEEDED", "{item:?}");
    let transcript = serde_json::to_string(&e.client.runs().transcript(&run.run_id).await.unwrap()).unwrap();
    assert!(transcript.contains("vars: file flag 1 from-the-worker"), "{transcript}");
    signal(&worker, "-TERM");
    assert!(worker.wait().unwrap().success());
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("w.yaml");
    std::fs::write(&yaml, "worker_id: w\nbackend:\n  direct: {}\n  docker: {}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--config-file")
        .arg(&yaml)
        .args(["--api-key", "k", "--server-root-url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than one backend"));
    std::fs::write(&yaml, "worker_id: w\nmax_concurent_tasks: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--config-file")
        .arg(&yaml)
        .args(["--api-key", "k", "--server-root-url", "http://x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_concurent_tasks"));
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--worker-id", "w", "--server-root-url", "http://x"])
        .env_remove("WARP_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("API key"));
}
