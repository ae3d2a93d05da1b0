//! A worker that dies mid-run leaves its tasks running; a restarted one (a new backend on the same
//! workspace root and worker id) reattaches to them. Real processes throughout: the "crash" is the
//! first backend's runtime being dropped, which abandons its supervision without stopping anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oz_backend_direct::workspace::{Marker, Workspace};
use oz_backend_direct::{DirectBackend, DirectConfig, process};
use oz_core::backend::{Backend, CancelReason, RecoveryAction, TaskEvent, TaskHandle, TaskPhase};
use oz_core::conformance::task_id;
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

fn backend(root: &Path) -> DirectBackend {
    let mut config = DirectConfig::new("w1", root.join("ws"));
    config.stop_grace = Duration::from_millis(500);
    DirectBackend::new(config).unwrap()
}

fn sh(id: &str, script: &str) -> TaskSpec {
    TaskSpec::new(id, vec!["/bin/sh".into(), "-c".into(), script.into()])
}

/// Waits (blocking, bounded) until `path` exists.
fn wait_for_file(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < LIMIT, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Launches `spec` on a backend living in its own runtime, waits for `ready` to appear, then drops
/// that runtime: the worker "crashes" and the task is left running, unsupervised.
fn launch_then_crash(root: &Path, spec: TaskSpec, ready: &Path) {
    let root = root.to_owned();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let handle = backend(&root).launch(spec).await.unwrap();
            tokio::task::spawn_blocking(move || wait_for_file(&ready)).await.unwrap();
            std::mem::forget(handle);
        });
        drop(rt);
    })
    .join()
    .unwrap();
}

fn the_marker(root: &Path, id: &str) -> Marker {
    Workspace::at(&root.join("ws"), id).read_marker().expect("the task's marker")
}

async fn recover_one(b: &DirectBackend, id: &str) -> TaskHandle {
    let mut recovered = tokio::time::timeout(LIMIT, b.recover()).await.unwrap().unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let task = recovered.remove(0);
    assert_eq!(task.task_id, id);
    match task.action {
        RecoveryAction::Reattached(handle) => handle,
        RecoveryAction::Removed(f) => panic!("the task was not reattached: {}", f.message),
        RecoveryAction::NotStarted(why) => panic!("the task was not reattached: {why}"),
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

async fn eventually_dead(pid: u32) -> bool {
    for _ in 0..250 {
        if !process::process_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn files() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}

/// The task outlives the worker; the new backend reattaches while it still runs (it reports
/// `Running`), and when the task ends its real exit code arrives on the handle; the workspace and
/// the task's processes are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outliving_its_worker_is_reattached_and_its_exit_code_forwarded() {
    let root = tempfile::tempdir().unwrap();
    let (_files, dir) = files();
    let id = task_id("reattach");
    let script = format!(
        "echo $$ > {d}/ready; while [ ! -e {d}/go ]; do sleep 0.05; done; echo finished > {d}/done; exit 3",
        d = dir.display()
    );
    launch_then_crash(root.path(), sh(&id, &script), &dir.join("ready"));
    let marker = the_marker(root.path(), &id);
    let (pid, start_time) = (marker.pid.unwrap(), marker.start_time.unwrap());
    assert!(process::is_running(pid, start_time), "the task should have outlived its worker");

    let restarted = backend(root.path());
    let mut handle = recover_one(&restarted, &id).await;
    let mut events = handle.take_events().unwrap();
    let first = tokio::time::timeout(LIMIT, events.recv()).await.unwrap();
    assert_eq!(first, Some(TaskEvent::Phase(TaskPhase::Running)));
    assert!(!dir.join("done").exists(), "the task must still be running when reattached");

    std::fs::write(dir.join("go"), b"").unwrap();
    drop(events);
    let outcome = tokio::time::timeout(LIMIT, handle.wait()).await.expect("the outcome of a reattached task");
    assert!(dir.join("done").exists());
    assert_eq!(outcome.exit.map(|e| e.oz_exit_code()), Some(3), "{outcome:?}");
    let failure = outcome.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::ContainerExit);
    assert!(failure.message.contains("exited with code 3"), "{}", failure.message);
    assert!(!restarted.workspace_path(&id).exists(), "the workspace should be removed after the task");
    assert!(process::processes_of_task(&id).is_empty());
}

/// A task that ended while no worker ran is reported with its recorded exit code (here success),
/// and what it left running in the background is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ended_while_the_worker_was_down_is_reported_and_its_leftovers_stopped() {
    let root = tempfile::tempdir().unwrap();
    let (_files, dir) = files();
    let id = task_id("ended");
    let script = format!(
        "sleep 300 & echo $! > {d}/straggler; echo $$ > {d}/ready; while [ ! -e {d}/go ]; do sleep 0.05; done; exit 0",
        d = dir.display()
    );
    launch_then_crash(root.path(), sh(&id, &script), &dir.join("ready"));
    let marker = the_marker(root.path(), &id);
    std::fs::write(dir.join("go"), b"").unwrap();
    let (pid, start_time) = (marker.pid.unwrap(), marker.start_time.unwrap());
    for _ in 0..500 {
        if !process::is_running(pid, start_time) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process::is_running(pid, start_time), "the task should have ended");
    let straggler = read_pid(&dir.join("straggler"));
    assert!(process::process_alive(straggler), "the task's background process should outlive it");

    let restarted = backend(root.path());
    let handle = recover_one(&restarted, &id).await;
    let outcome = tokio::time::timeout(LIMIT, handle.wait()).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.exit.map(|e| e.oz_exit_code()), Some(0));
    assert!(eventually_dead(straggler).await, "the ended task's leftover process was not stopped");
    assert!(!restarted.workspace_path(&id).exists());
}

/// Cancelling a reattached task kills its whole process group, even a member that dropped its
/// `OZ_RUN_ID` label (only the group reaches it), and the outcome says it was cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_reattached_task_kills_its_whole_process_group() {
    let root = tempfile::tempdir().unwrap();
    let (_files, dir) = files();
    let id = task_id("cancel");
    let script = format!(
        "env -u OZ_RUN_ID sleep 300 & echo $! > {d}/unlabelled; sleep 300 & echo $! > {d}/labelled; echo $$ > {d}/ready; wait",
        d = dir.display()
    );
    launch_then_crash(root.path(), sh(&id, &script), &dir.join("ready"));
    let leader = read_pid(&dir.join("ready"));
    let unlabelled = read_pid(&dir.join("unlabelled"));
    let labelled = read_pid(&dir.join("labelled"));
    assert!(process::process_alive(unlabelled) && process::process_alive(labelled));

    let restarted = backend(root.path());
    let handle = recover_one(&restarted, &id).await;
    handle.canceller().cancel(CancelReason::Requested);
    let outcome = tokio::time::timeout(LIMIT, handle.wait()).await.unwrap();
    let failure = outcome.failure.clone().unwrap();
    assert_eq!(failure.reason, FailureReason::TaskCancelled, "{outcome:?}");
    assert!(failure.message.contains("cancelled"), "{}", failure.message);
    assert!(!failure.message.contains("exit code 0"), "{}", failure.message);
    for pid in [leader, unlabelled, labelled] {
        assert!(eventually_dead(pid).await, "process {pid} of the cancelled task survived");
    }
    assert!(!restarted.workspace_path(&id).exists());
}

/// A marker whose pid now belongs to another process (same pid, other start time) is not adopted:
/// that process is left alone, and the task is reported as ended in an unknown way.
#[tokio::test]
async fn a_recycled_pid_is_not_adopted() {
    let root = tempfile::tempdir().unwrap();
    let id = task_id("recycled");
    let mut innocent = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let pid = innocent.id();
    let real_start = process::start_time(pid).unwrap();
    let ws = Workspace::at(&root.path().join("ws"), &id);
    let mut marker = Marker::new("w1", Some(id.clone()), None, true);
    std::fs::create_dir_all(root.path().join("ws")).unwrap();
    ws.create(&root.path().join("ws"), &marker).unwrap();
    marker.pid = Some(pid);
    marker.start_time = Some(real_start.wrapping_sub(1));
    ws.write_marker(&marker).unwrap();

    let restarted = backend(root.path());
    let handle = recover_one(&restarted, &id).await;
    let outcome = tokio::time::timeout(LIMIT, handle.wait()).await.unwrap();
    let failure = outcome.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::Unknown);
    assert!(failure.message.contains("not known"), "{}", failure.message);
    assert_eq!(outcome.exit, None);
    assert!(process::is_running(pid, real_start), "a process that merely reuses the pid was touched");
    assert!(!restarted.workspace_path(&id).exists());
    innocent.kill().unwrap();
    innocent.wait().unwrap();
}
