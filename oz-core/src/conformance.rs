//! The backend conformance suite (feature `conformance`): the behaviour every backend must show.
//!
//! A backend crate implements [`ConformanceFixture`] and expands [`conformance_suite!`](crate::conformance_suite)
//! in a test file, which makes one test per case so the runner can parallelise them:
//!
//! ```text
//! async fn fixture() -> Option<MyFixture> { Some(MyFixture::new()) } // None = skip (say why, loudly)
//! oz_core::conformance_suite!(fixture);
//! ```

// This module is a test harness: its cases assert and panic by design, like any test.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;

use crate::backend::{Backend, CancelReason, TaskEvent, TaskOutcome, TaskPhase};
use crate::failure::FailureReason;
use crate::run::RunState;
use crate::task::TaskSpec;

/// How long any case may take before it is reported as hung.
pub const CASE_LIMIT: Duration = Duration::from_secs(120);

/// What the suite needs to know about a backend under test.
#[async_trait]
pub trait ConformanceFixture: Send + Sync + 'static {
    /// The backend, configured with a short stop grace period (about a second) so cases stay quick.
    fn backend(&self) -> Arc<dyn Backend>;
    /// A spec that runs `argv` in the backend's sandbox (image, sidecars as the backend needs).
    fn command_task(&self, task_id: &str, argv: &[&str]) -> TaskSpec;
    /// A spec that runs `script` with `/bin/sh -c`.
    fn shell_task(&self, task_id: &str, script: &str) -> TaskSpec {
        self.command_task(task_id, &["/bin/sh", "-c", script])
    }
    /// The variables the backend adds to every task besides the spec's (for example `HOME`).
    fn added_env(&self) -> Vec<&'static str>;
    /// What remains of the task outside the test process (folders, containers, volumes, processes).
    async fn leftovers(&self, spec: &TaskSpec) -> Vec<String>;
    /// Removes whatever `cleanup: false` kept.
    async fn purge(&self, spec: &TaskSpec);
    /// Whether a process the task started (`pid` as the task saw it) is still running.
    async fn process_alive(&self, spec: &TaskSpec, pid: u32) -> bool;
    /// The failure reason when the task's command does not exist.
    fn missing_command_reason(&self) -> FailureReason;
    /// The failure reason of a non-zero exit (`container_exit`; a Kubernetes Job: `job_failed`).
    fn exit_reason(&self) -> FailureReason {
        FailureReason::ContainerExit
    }
    /// Whether stderr arrives merged into stdout (a Kubernetes Pod's log has one stream).
    fn merges_stderr(&self) -> bool {
        false
    }
    /// Whether a task can be given stdin (a Kubernetes Job cannot).
    fn supports_stdin(&self) -> bool {
        true
    }
}

/// A unique task id for a case.
pub fn task_id(case: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("conf-{case}-{}", &id[..12])
}

/// The collected result of one run.
#[derive(Debug)]
pub struct Collected {
    /// Everything on stdout.
    pub stdout: BytesMut,
    /// Everything on stderr.
    pub stderr: BytesMut,
    /// Phases, in order.
    pub phases: Vec<TaskPhase>,
    /// Whether an `Exited` event came.
    pub saw_exit: bool,
    /// The outcome.
    pub outcome: TaskOutcome,
}

/// Launches `spec` and collects all events and the outcome.
pub async fn run_to_end(backend: &dyn Backend, spec: TaskSpec) -> Collected {
    let mut handle = backend.launch(spec).await.expect("launch");
    let mut events = handle.take_events().expect("events");
    let mut c = Collected {
        stdout: BytesMut::new(),
        stderr: BytesMut::new(),
        phases: vec![],
        saw_exit: false,
        outcome: dummy_outcome(),
    };
    while let Some(e) = events.recv().await {
        match e {
            TaskEvent::Stdout(b) => c.stdout.extend_from_slice(&b),
            TaskEvent::Stderr(b) => c.stderr.extend_from_slice(&b),
            TaskEvent::Phase(p) => c.phases.push(p),
            TaskEvent::Exited(_) => c.saw_exit = true,
            TaskEvent::Progress(_) => {}
        }
    }
    c.outcome = handle.wait().await;
    c
}

fn dummy_outcome() -> TaskOutcome {
    let now = std::time::SystemTime::now();
    TaskOutcome {
        task_id: String::new(),
        exit: None,
        failure: None,
        accepted_at: now,
        started_at: None,
        finished_at: now,
    }
}

async fn guarded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(CASE_LIMIT, f).await.expect("the case hung past its limit")
}

async fn assert_no_leftovers(f: &dyn ConformanceFixture, spec: &TaskSpec) {
    let left = f.leftovers(spec).await;
    assert!(left.is_empty(), "left behind after cleanup: {left:?}");
}

/// A task that prints and exits 0 succeeds, with its output and phases reported.
pub async fn succeeds(f: &dyn ConformanceFixture) {
    let spec = f.shell_task(&task_id("ok"), "echo hello-out; echo hello-err >&2");
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    assert_eq!(c.outcome.run_state(), RunState::Succeeded);
    assert_eq!(c.outcome.exit.map(|e| e.oz_exit_code()), Some(0));
    if f.merges_stderr() {
        assert_eq!(&c.stdout[..], b"hello-out\nhello-err\n");
    } else {
        assert_eq!(&c.stdout[..], b"hello-out\n");
        assert_eq!(&c.stderr[..], b"hello-err\n");
    }
    assert!(c.phases.contains(&TaskPhase::Running), "{:?}", c.phases);
    assert!(c.saw_exit);
    assert!(c.outcome.started_at.is_some());
    assert_no_leftovers(f, &spec).await;
}

/// A non-zero exit fails with `container_exit` and the exit code.
pub async fn nonzero_exit(f: &dyn ConformanceFixture) {
    let spec = f.shell_task(&task_id("exit"), "echo about-to-fail; exit 3");
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert_eq!(c.outcome.reason(), Some(f.exit_reason()), "{:?}", c.outcome);
    assert_eq!(c.outcome.run_state(), RunState::Failed);
    assert_eq!(c.outcome.exit.map(|e| e.oz_exit_code()), Some(3));
    assert_eq!(&c.stdout[..], b"about-to-fail\n");
    assert_no_leftovers(f, &spec).await;
}

/// Death by a signal is reported as 128 + the signal.
pub async fn killed_by_signal(f: &dyn ConformanceFixture) {
    let spec = f.shell_task(&task_id("sig"), "kill -9 $$");
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert_eq!(c.outcome.reason(), Some(f.exit_reason()), "{:?}", c.outcome);
    assert_eq!(c.outcome.exit.map(|e| e.oz_exit_code()), Some(137));
    assert_no_leftovers(f, &spec).await;
}

/// A command that does not exist fails with the backend's reason, not a hang or a panic.
pub async fn missing_command(f: &dyn ConformanceFixture) {
    let spec = f.command_task(&task_id("missing"), &["/nonexistent/oz-no-such-command"]);
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert_eq!(c.outcome.reason(), Some(f.missing_command_reason()), "{:?}", c.outcome);
    assert_no_leftovers(f, &spec).await;
}

/// A task past its timeout is stopped and fails with `task_timeout`.
pub async fn times_out(f: &dyn ConformanceFixture) {
    let spec = f.shell_task(&task_id("timeout"), "echo started; sleep 60").timeout(Duration::from_secs(1));
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert_eq!(c.outcome.reason(), Some(FailureReason::TaskTimeout), "{:?}", c.outcome);
    assert_eq!(c.outcome.run_state(), RunState::Failed);
    assert_eq!(&c.stdout[..], b"started\n");
    assert_no_leftovers(f, &spec).await;
}

/// Cancelling mid-run kills the whole tree, including a child that ignores SIGTERM, and reports
/// `task_cancelled`.
pub async fn cancel_kills_the_tree(f: &dyn ConformanceFixture) {
    let script = "(trap '' TERM; exec sleep 300) & echo \"child $!\"; sleep 300 & echo \"child $!\"; wait";
    let spec = f.shell_task(&task_id("cancel"), script);
    let backend = f.backend();
    let mut handle = guarded(backend.launch(spec.clone())).await.expect("launch");
    let mut events = handle.take_events().expect("events");
    let canceller = handle.canceller();
    let mut out = String::new();
    let mut pids = Vec::new();
    let collect = async {
        while let Some(e) = events.recv().await {
            if let TaskEvent::Stdout(b) = e {
                out.push_str(&String::from_utf8_lossy(&b));
                pids = out
                    .lines()
                    .filter_map(|l| l.strip_prefix("child "))
                    .filter_map(|p| p.trim().parse::<u32>().ok())
                    .collect();
                if pids.len() == 2 {
                    canceller.cancel(CancelReason::Requested);
                }
            }
        }
    };
    guarded(collect).await;
    let outcome = guarded(handle.wait()).await;
    assert_eq!(pids.len(), 2, "the task did not report its children: {out:?}");
    assert_eq!(outcome.reason(), Some(FailureReason::TaskCancelled), "{outcome:?}");
    assert_eq!(outcome.run_state(), RunState::Cancelled);
    for pid in pids {
        assert!(!f.process_alive(&spec, pid).await, "child {pid} survived the cancellation");
    }
    assert_no_leftovers(f, &spec).await;
}

/// Stdin carries the given bytes and is then closed.
pub async fn stdin_is_delivered(f: &dyn ConformanceFixture) {
    if !f.supports_stdin() {
        eprintln!("stdin_is_delivered: this backend takes no stdin (documented); nothing to check");
        return;
    }
    let spec = f.command_task(&task_id("stdin"), &["cat"]).stdin(&b"the prompt\nline two\n"[..]);
    let c = guarded(run_to_end(&*f.backend(), spec)).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    assert_eq!(&c.stdout[..], b"the prompt\nline two\n");
}

/// The task's environment is exactly the spec's plus what the backend documents: nothing of the
/// worker's own environment leaks in.
pub async fn env_is_exactly_the_specs(f: &dyn ConformanceFixture) {
    let spec = f
        .command_task(&task_id("env"), &["env"])
        .env("OZ_CONF_A", "1")
        .env("OZ_CONF_B", "two words = fine")
        .env("OZ_CONF_A", "overridden");
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    let text = String::from_utf8_lossy(&c.stdout);
    let seen: std::collections::BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(seen.get("OZ_CONF_A"), Some(&"overridden"));
    assert_eq!(seen.get("OZ_CONF_B"), Some(&"two words = fine"));
    let mut allowed: Vec<&str> = spec.env.iter().map(|(k, _)| k.as_str()).collect();
    allowed.extend(f.added_env());
    let unexpected: Vec<&&str> = seen.keys().filter(|k| !allowed.contains(k)).collect();
    assert!(unexpected.is_empty(), "variables the spec did not ask for: {unexpected:?}\nfull env:\n{text}");
}

/// Peak resident memory of this process, in bytes (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// 50 MB of output arrive complete while the reader is slow, and the backend does not buffer them:
/// the process's peak memory grows by far less than the output.
pub async fn large_output_with_bounded_memory(f: &dyn ConformanceFixture) {
    const TOTAL: usize = 50 * 1024 * 1024;
    let script = format!("head -c {TOTAL} /dev/zero | tr '\\000' 'x'");
    let spec = f.shell_task(&task_id("big"), &script);
    let backend = f.backend();
    let before = peak_rss_bytes();
    let mut handle = guarded(backend.launch(spec.clone())).await.expect("launch");
    let mut events = handle.take_events().expect("events");
    // Read nothing for a while: a backend that buffers without bound would now hold everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut total = 0usize;
    let mut all_x = true;
    let read = async {
        while let Some(e) = events.recv().await {
            if let TaskEvent::Stdout(b) = e {
                total += b.len();
                all_x &= b.iter().all(|&c| c == b'x');
            }
        }
    };
    guarded(read).await;
    let outcome = guarded(handle.wait()).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(total, TOTAL);
    assert!(all_x, "the output was corrupted");
    if let (Some(before), Some(after)) = (before, peak_rss_bytes()) {
        let grown = after.saturating_sub(before);
        assert!(grown < 24 * 1024 * 1024, "peak memory grew by {} MiB while streaming 50 MiB", grown / (1024 * 1024));
    }
    assert_no_leftovers(f, &spec).await;
}

/// With `cleanup: false` what was made for the task is kept (for debugging).
pub async fn no_cleanup_keeps_it(f: &dyn ConformanceFixture) {
    let spec = f.shell_task(&task_id("keep"), "echo kept").cleanup(false);
    let c = guarded(run_to_end(&*f.backend(), spec.clone())).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    let left = f.leftovers(&spec).await;
    assert!(!left.is_empty(), "cleanup: false removed everything");
    f.purge(&spec).await;
    assert_no_leftovers(f, &spec).await;
}

/// Expands to one `#[tokio::test]` per conformance case, given an `async fn() -> Option<impl
/// ConformanceFixture>` (return `None` to skip, after printing why).
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::conformance_suite!(@cases $fixture; [];
            succeeds, nonzero_exit, killed_by_signal, missing_command, times_out, cancel_kills_the_tree,
            stdin_is_delivered, env_is_exactly_the_specs, large_output_with_bounded_memory, no_cleanup_keeps_it);
    };
    // Every case `#[ignore]`d with a reason (for a real cluster, say): run them with `-- --ignored`.
    ($fixture:path, ignore = $why:literal) => {
        $crate::conformance_suite!(@cases $fixture; [ignore = $why];
            succeeds, nonzero_exit, killed_by_signal, missing_command, times_out, cancel_kills_the_tree,
            stdin_is_delivered, env_is_exactly_the_specs, large_output_with_bounded_memory, no_cleanup_keeps_it);
    };
    (@cases $fixture:path; $attrs:tt; $($case:ident),*) => {
        $( $crate::conformance_suite!(@case $fixture; $attrs; $case); )*
    };
    (@case $fixture:path; [$($attr:meta)*]; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() {
            let Some(fixture) = $fixture().await else { return };
            $crate::conformance::$case(&fixture).await;
        }
    };
}
