//! The [`Backend`] trait, the handle of a running task, and its events and outcome.
//!
//! One trait serves four uses:
//! - the worker daemon: [`Backend::launch`] per assignment, [`TaskHandle::canceller`] on cancellation;
//! - an orchestrator embedding a backend: the same calls, with no server involved;
//! - warm pools: [`Backend::prepare`] a sandbox before the task is known, then
//!   [`Backend::launch_prepared`] hands it the task;
//! - reattach after a restart: [`Backend::recover`] finds what this worker left behind, reattaching to
//!   what still runs and removing what is dead.

use std::any::Any;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::failure::FailureReason;
use crate::run::RunState;
use crate::task::{SandboxSpec, TaskSpec};

/// How many events may wait in a task's channel before the backend stops reading the task's output.
/// With 64 KiB chunks this bounds buffered output to a few MiB, however much the task prints.
pub const EVENT_CHANNEL_CAPACITY: usize = 64;

/// An error from a backend, carrying the Oz failure reason it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct BackendError {
    /// The failure reason reported to the control plane.
    pub reason: FailureReason,
    /// What happened, for a person; never contains a secret.
    pub message: String,
}

impl BackendError {
    /// Builds an error.
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// What a task is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskPhase {
    /// Making the workspace, container or Job.
    Preparing,
    /// Pulling the image.
    PullingImage,
    /// Materializing the sidecar.
    PreparingSidecar,
    /// Running the backend's setup command.
    SetupCommand,
    /// Starting the task's process.
    Starting,
    /// The task's process is running.
    Running,
    /// Stopping the task (timeout, cancel).
    Stopping,
    /// Running the backend's teardown command.
    TeardownCommand,
    /// Removing what was made.
    CleaningUp,
}

/// Something that happened in a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// The task entered a phase.
    Phase(TaskPhase),
    /// A progress note for the person waiting (image pull progress, ...).
    Progress(String),
    /// A chunk of the task's stdout.
    Stdout(Bytes),
    /// A chunk of the task's stderr.
    Stderr(Bytes),
    /// The task's process exited.
    Exited(ExitStatus),
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// An exit with a code.
    pub fn code(code: i32) -> Self {
        Self { code: Some(code), signal: None }
    }
    /// Death by a signal.
    pub fn signal(signal: i32) -> Self {
        Self { code: None, signal: Some(signal) }
    }
    /// Whether it exited 0.
    pub fn success(self) -> bool {
        self.code == Some(0)
    }
    /// The code as Oz reports it: the exit code, or 128 + the signal number.
    pub fn oz_exit_code(self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }
}

/// Why a task failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The Oz failure reason.
    pub reason: FailureReason,
    /// What happened, for a person.
    pub message: String,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The task.
    pub task_id: String,
    /// The process's exit, if it started.
    pub exit: Option<ExitStatus>,
    /// `None` on success.
    pub failure: Option<Failure>,
    /// When the backend accepted the task.
    pub accepted_at: SystemTime,
    /// When the task's process started, if it did.
    pub started_at: Option<SystemTime>,
    /// When the task ended.
    pub finished_at: SystemTime,
}

impl TaskOutcome {
    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }
    /// The run state it leads to.
    pub fn run_state(&self) -> RunState {
        match &self.failure {
            None => RunState::Succeeded,
            Some(f) => f.reason.terminal_state(),
        }
    }
    /// The failure reason, if it failed.
    pub fn reason(&self) -> Option<FailureReason> {
        self.failure.as_ref().map(|f| f.reason)
    }
    /// Time from acceptance to the process starting.
    pub fn startup_latency(&self) -> Option<Duration> {
        self.started_at.and_then(|s| s.duration_since(self.accepted_at).ok())
    }
}

/// Why a task is being cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// Someone asked (`task_cancellation`): reported as `task_cancelled`.
    Requested,
    /// The worker is shutting down: reported as `graceful_shutdown`.
    Shutdown,
}

impl CancelReason {
    /// The failure reason to report.
    pub fn failure_reason(self) -> FailureReason {
        match self {
            CancelReason::Requested => FailureReason::TaskCancelled,
            CancelReason::Shutdown => FailureReason::GracefulShutdown,
        }
    }
}

/// Cancels a running task. Cheap to clone; cancelling twice is harmless.
#[derive(Clone, Debug)]
pub struct Canceller(watch::Sender<Option<CancelReason>>);

impl Canceller {
    /// Asks the backend to stop the task (SIGTERM, grace period, SIGKILL or the equivalent).
    pub fn cancel(&self, reason: CancelReason) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// The events of a task, as a [`Stream`]. Ends when the task has ended and every event was read.
#[derive(Debug)]
pub struct TaskEvents(mpsc::Receiver<TaskEvent>);

impl TaskEvents {
    /// The next event, or `None` at the end.
    pub async fn recv(&mut self) -> Option<TaskEvent> {
        self.0.recv().await
    }
}

impl Stream for TaskEvents {
    type Item = TaskEvent;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TaskEvent>> {
        self.0.poll_recv(cx)
    }
}

/// A running task, as its caller sees it.
#[derive(Debug)]
pub struct TaskHandle {
    task_id: String,
    events: Option<TaskEvents>,
    outcome: oneshot::Receiver<TaskOutcome>,
    cancel: Canceller,
    accepted_at: SystemTime,
}

/// The backend's side of a [`TaskHandle`]: where it sends events and the outcome.
#[derive(Debug)]
pub struct TaskDriver {
    task_id: String,
    events: mpsc::Sender<TaskEvent>,
    outcome: oneshot::Sender<TaskOutcome>,
    cancel: watch::Receiver<Option<CancelReason>>,
    /// When the task was accepted.
    pub accepted_at: SystemTime,
}

impl TaskHandle {
    /// A connected handle and driver for `task_id`. Backends call this; callers get the handle.
    pub fn channel(task_id: impl Into<String>) -> (TaskHandle, TaskDriver) {
        let task_id = task_id.into();
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = watch::channel(None);
        let accepted_at = SystemTime::now();
        (
            TaskHandle {
                task_id: task_id.clone(),
                events: Some(TaskEvents(events_rx)),
                outcome: outcome_rx,
                cancel: Canceller(cancel_tx),
                accepted_at,
            },
            TaskDriver { task_id, events: events_tx, outcome: outcome_tx, cancel: cancel_rx, accepted_at },
        )
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Takes the event stream (once). The backend waits for the reader when the channel is full, so a
    /// taker must keep reading, or drop the stream to discard the rest.
    pub fn take_events(&mut self) -> Option<TaskEvents> {
        self.events.take()
    }

    /// A canceller for this task.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    /// Waits for the task to end. If the events were not taken they are read and discarded.
    pub async fn wait(mut self) -> TaskOutcome {
        if let Some(mut events) = self.events.take() {
            while events.recv().await.is_some() {}
        }
        match self.outcome.await {
            Ok(outcome) => outcome,
            Err(_) => TaskOutcome {
                task_id: self.task_id.clone(),
                exit: None,
                failure: Some(Failure {
                    reason: FailureReason::Unknown,
                    message: "the backend dropped the task without reporting an outcome".into(),
                }),
                accepted_at: self.accepted_at,
                started_at: None,
                finished_at: SystemTime::now(),
            },
        }
    }
}

impl TaskDriver {
    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Sends an event, waiting while the channel is full. Returns false if nobody listens any more
    /// (the caller dropped the stream); the backend carries on regardless.
    pub async fn emit(&self, event: TaskEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// A cloneable sender of events, for the backend's output readers.
    pub fn event_sender(&self) -> EventSender {
        EventSender(self.events.clone())
    }

    /// The cancellation requested so far, if any.
    pub fn cancel_requested(&self) -> Option<CancelReason> {
        *self.cancel.borrow()
    }

    /// Resolves when cancellation is requested. Never resolves if the handle is dropped without
    /// cancelling (a dropped handle does not stop a task; the worker owns its lifetime).
    pub async fn cancelled(&self) -> CancelReason {
        let mut rx = self.cancel.clone();
        loop {
            if let Some(reason) = *rx.borrow_and_update() {
                return reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reports the outcome, ending the task.
    pub fn finish(self, exit: Option<ExitStatus>, failure: Option<Failure>, started_at: Option<SystemTime>) {
        let outcome = TaskOutcome {
            task_id: self.task_id,
            exit,
            failure,
            accepted_at: self.accepted_at,
            started_at,
            finished_at: SystemTime::now(),
        };
        let _ = self.outcome.send(outcome);
    }
}

/// Sends a task's events from any number of backend tasks (stdout and stderr readers, ...).
#[derive(Clone, Debug)]
pub struct EventSender(mpsc::Sender<TaskEvent>);

impl EventSender {
    /// Sends an event, waiting while the channel is full (this is what bounds a backend's memory).
    /// Returns false if nobody listens any more.
    pub async fn emit(&self, event: TaskEvent) -> bool {
        self.0.send(event).await.is_ok()
    }
}

/// A sandbox prepared before its task was known (a warm pool's member).
pub struct PreparedSandbox {
    /// A backend-chosen id (a container id, a folder name).
    pub id: String,
    /// The spec it was prepared from; a task must ask for the same sandbox to use it.
    pub spec: SandboxSpec,
    /// Backend-private state.
    pub state: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for PreparedSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedSandbox").field("id", &self.id).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// What [`Backend::recover`] found of one task left by an earlier process of this worker.
#[derive(Debug)]
pub struct RecoveredTask {
    /// The task id, from the labels or names.
    pub task_id: String,
    /// The execution id, if it was recorded.
    pub execution_id: Option<String>,
    /// What the backend did about it.
    pub action: RecoveryAction,
}

/// What the backend did with a task it found after a restart.
#[derive(Debug)]
pub enum RecoveryAction {
    /// It still runs and the backend reattached: events and outcome flow through this handle.
    Reattached(TaskHandle),
    /// It could not be kept (dead, or unreattachable); what was left was stopped and removed. The
    /// worker reports it to the control plane as failed with this failure.
    Removed(Failure),
    /// It had not started (the earlier process died while preparing it); what was left was
    /// stopped and removed. Nothing of the task ran, so the worker hands it back to the queue (with
    /// this reason) to run again, rather than failing a run that never had its chance.
    NotStarted(String),
}

/// A way to run tasks in sandboxes. Implemented by the Direct, Docker and Kubernetes backends.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name (`direct`, `docker`, `kubernetes`), used as `OZ_WORKER_BACKEND`.
    fn name(&self) -> &'static str;

    /// Starts a task. Returns once the task is accepted; preparation and execution continue in the
    /// background and are reported through the handle. Errors here mean nothing was started.
    async fn launch(&self, spec: TaskSpec) -> Result<TaskHandle, BackendError>;

    /// Whether [`Backend::prepare`] makes real warm sandboxes (a runner that has cloned and set up,
    /// waiting for its task). The default: no.
    fn warm_sandboxes(&self) -> bool {
        false
    }

    /// Prepares a warm sandbox ahead of its task: it starts `oz agent warm` (see `crate::warm`) and
    /// returns once that runner waits for its task. Backends without warm sandboxes refuse.
    async fn prepare(&self, warm: crate::warm::WarmSpec) -> Result<PreparedSandbox, BackendError> {
        let _ = warm;
        Err(BackendError::new(
            FailureReason::WorkspaceSetup,
            format!("the {} backend has no warm sandboxes", self.name()),
        ))
    }

    /// Hands a task to a prepared sandbox, which is then the task's and no other's. The task's
    /// `sandbox` must equal the prepared one's.
    async fn launch_prepared(&self, prepared: PreparedSandbox, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        let _ = (prepared, spec);
        Err(BackendError::new(
            FailureReason::WorkspaceSetup,
            format!("the {} backend has no warm sandboxes", self.name()),
        ))
    }

    /// Releases a prepared sandbox that will not be used.
    async fn discard(&self, _prepared: PreparedSandbox) -> Result<(), BackendError> {
        Ok(())
    }

    /// The memory a prepared sandbox uses now, in bytes (Docker: its container's, less the page
    /// cache it could drop; Direct: the resident memory of its runner's process group). `None`: the
    /// backend cannot tell.
    async fn sandbox_memory(&self, _prepared: &PreparedSandbox) -> Option<u64> {
        None
    }

    /// What a sandbox of `sandbox` prepared now would be made from beyond its spec (on Docker, the
    /// id of the image its tag names on the engine): a warm sandbox prepared from another revision
    /// is out of date. `None`: the backend cannot tell (or there is nothing beyond the spec).
    async fn sandbox_revision(&self, _sandbox: &SandboxSpec) -> Option<String> {
        None
    }

    /// Finds what an earlier process of this worker (same worker id) left: reattaches to tasks that
    /// still run where the backend can, and stops and removes the rest.
    async fn recover(&self) -> Result<Vec<RecoveredTask>, BackendError>;

    /// Whether running tasks outlive this process and are reattached by [`Backend::recover`] after a
    /// restart (containers, Jobs). A worker shutting down leaves such tasks running; it cancels the
    /// tasks of backends that return `false` (the default), reporting `graceful_shutdown`.
    fn preserves_tasks_on_shutdown(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_drains_untaken_events_and_returns_the_outcome() {
        let (handle, driver) = TaskHandle::channel("t1");
        let producer = tokio::spawn(async move {
            for _ in 0..(EVENT_CHANNEL_CAPACITY * 3) {
                driver.emit(TaskEvent::Stdout(Bytes::from_static(b"x"))).await;
            }
            driver.finish(Some(ExitStatus::code(0)), None, Some(SystemTime::now()));
        });
        let outcome = handle.wait().await;
        producer.await.unwrap();
        assert!(outcome.succeeded());
        assert_eq!(outcome.run_state(), RunState::Succeeded);
    }

    #[tokio::test]
    async fn a_dropped_driver_is_an_unknown_failure() {
        let (handle, driver) = TaskHandle::channel("t1");
        drop(driver);
        let outcome = handle.wait().await;
        assert_eq!(outcome.reason(), Some(FailureReason::Unknown));
        assert_eq!(outcome.run_state(), RunState::Error);
    }

    #[tokio::test]
    async fn cancel_reaches_the_driver_once() {
        let (handle, driver) = TaskHandle::channel("t1");
        let c = handle.canceller();
        assert_eq!(driver.cancel_requested(), None);
        c.cancel(CancelReason::Shutdown);
        c.cancel(CancelReason::Requested);
        assert_eq!(driver.cancelled().await, CancelReason::Shutdown);
        assert_eq!(CancelReason::Shutdown.failure_reason(), FailureReason::GracefulShutdown);
    }

    #[test]
    fn exit_codes_follow_oz() {
        assert_eq!(ExitStatus::code(3).oz_exit_code(), 3);
        assert_eq!(ExitStatus::signal(9).oz_exit_code(), 137);
        assert!(ExitStatus::code(0).success());
        assert!(!ExitStatus::signal(15).success());
    }
}
