//! [`DirectBackend`]: the [`Backend`] implementation that runs tasks as host processes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use oz_core::backend::{
    Backend, BackendError, CancelReason, EventSender, ExitStatus, Failure, PreparedSandbox, RecoveredTask,
    RecoveryAction, TaskDriver, TaskEvent, TaskHandle, TaskPhase,
};
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;
use oz_core::warm::{Handoff, HandoffAnswer, WarmSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tracing::{Instrument, info, info_span, warn};

use crate::config::DirectConfig;
use crate::dotenv;
use crate::error::DirectError;
use crate::process::{self, Limits};
use crate::workspace::{Marker, Workspace};
use oz_core::runner::env::RUN_ID as RUN_ID_VAR;

/// The backend's name, also its `OZ_WORKER_BACKEND`.
pub const NAME: &str = "direct";

/// The variables the Direct backend adds to every task, besides the task's own.
pub const ADDED_ENV: [&str; 8] = [
    "HOME",
    "TMPDIR",
    "PATH",
    "GIT_CONFIG_GLOBAL",
    RUN_ID_VAR,
    "OZ_WORKSPACE_ROOT",
    "OZ_WORKER_BACKEND",
    "OZ_ENVIRONMENT_FILE",
];

/// How long a teardown command may run.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(300);
/// Output is read in chunks of at most this size.
const CHUNK: usize = 64 * 1024;

/// Runs each task as a process group on the host, in its own workspace, with a minimal environment.
#[derive(Clone, Debug)]
pub struct DirectBackend {
    config: Arc<DirectConfig>,
}

impl DirectBackend {
    /// Validates the configuration and creates the workspace root (mode 0700) if missing.
    pub fn new(mut config: DirectConfig) -> Result<Self, DirectError> {
        config.validate()?;
        config.environment = config.resolved_environment()?;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.workspace_root)
            .map_err(|source| DirectError::Workspace { path: config.workspace_root.display().to_string(), source })?;
        Ok(Self { config: Arc::new(config) })
    }

    /// The configuration.
    pub fn config(&self) -> &DirectConfig {
        &self.config
    }

    /// The folder a task's workspace lives in.
    pub fn workspace_path(&self, task_id: &str) -> PathBuf {
        self.config.workspace_root.join(task_id)
    }

    fn start(&self, ws: Workspace, spec: TaskSpec) -> TaskHandle {
        let (handle, driver) = TaskHandle::channel(&spec.task_id);
        let span = info_span!("task", backend = NAME, task_id = %spec.task_id);
        tokio::spawn(run_task(self.config.clone(), ws, spec, driver).instrument(span));
        handle
    }
}

fn marker_for(config: &DirectConfig, spec: &TaskSpec) -> Marker {
    Marker::new(
        config.worker_id.clone(),
        Some(spec.task_id.clone()),
        spec.execution_id.clone(),
        spec.cleanup && config.cleanup,
    )
}

#[async_trait]
impl Backend for DirectBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn launch(&self, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        spec.validate().map_err(DirectError::from)?;
        ensure_cache(&self.config, &spec.sandbox)?;
        let ws = Workspace::at(&self.config.workspace_root, &spec.task_id);
        if let Some(aside) = ws.set_aside_if_ended(&spec.task_id)? {
            info!(task_id = %spec.task_id, kept = %aside.display(), "an earlier execution's kept workspace was set aside");
        }
        ws.create(&self.config.workspace_root, &marker_for(&self.config, &spec))?;
        Ok(self.start(ws, spec))
    }

    fn warm_sandboxes(&self) -> bool {
        true
    }

    /// A warm workspace (`warm-<id>`): `oz agent warm` started in it with the sandbox's variables
    /// (no task's, no secret), recorded in its marker so that a restarted worker stops it; ready
    /// once its socket answers.
    async fn prepare(&self, warm: WarmSpec) -> Result<PreparedSandbox, BackendError> {
        let id = format!("warm-{}", uuid_like());
        ensure_cache(&self.config, &warm.sandbox)?;
        let ws = Workspace::at(&self.config.workspace_root, &id);
        let mut marker = Marker::new(self.config.worker_id.clone(), None, None, true);
        ws.create(&self.config.workspace_root, &marker)?;
        // Dropped half-way (a worker shutting down stops waiting), its runner and workspace go.
        let mut unfinished = UnfinishedWarm { ws: Some(ws.clone()) };
        let started = start_warm(&self.config, &ws, &warm, &mut marker).await;
        unfinished.ws = None;
        match started {
            Ok(state) => Ok(PreparedSandbox { id, spec: warm.sandbox, state: Box::new(state) }),
            Err(e) => {
                if let Some(pid) = marker.pid {
                    process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = ws.remove();
                Err(e)
            }
        }
    }

    async fn launch_prepared(&self, prepared: PreparedSandbox, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        spec.validate().map_err(DirectError::from)?;
        let Ok(warm) = prepared.state.downcast::<WarmWorkspace>() else {
            return Err(BackendError::new(
                FailureReason::WorkspaceSetup,
                "the prepared sandbox was not made by the Direct backend",
            ));
        };
        if spec.sandbox != prepared.spec {
            warm.stop();
            let _ = warm.ws.remove();
            return Err(BackendError::new(
                FailureReason::WorkspaceSetup,
                "the task asks for a different sandbox than the one prepared",
            ));
        }
        let child = warm.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(child) = child else {
            return Err(BackendError::new(FailureReason::WorkspaceSetup, "the warm sandbox was handed a task already"));
        };
        let env = task_env(&self.config, &warm.ws, &spec, &warm.cwd);
        let handoff = Handoff { argv: spec.argv.clone(), env, secret_input: spec.secret_input.clone(), receipt: None };
        if let Err(message) = hand_over(&warm.socket, &handoff).await {
            // Given up: its runner (taken out of `warm` above) and its workspace go now.
            if let Some(pid) = child.id() {
                process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = warm.ws.remove();
            return Err(BackendError::new(
                FailureReason::WorkspaceSetup,
                format!("the warm sandbox did not take the task: {message}"),
            ));
        }
        // The workspace is the task's now: a restarted worker reattaches to it like to any task.
        let mut marker = marker_for(&self.config, &spec);
        marker.pid = child.id();
        marker.start_time = child.id().and_then(process::start_time);
        if let Err(e) = warm.ws.write_marker(&marker) {
            warn!(error = %e, "could not record the task's process: a restarted worker will not reattach to it");
        }
        let (handle, driver) = TaskHandle::channel(&spec.task_id);
        let span = info_span!("task", backend = NAME, task_id = %spec.task_id, warm = %prepared.id);
        let config = self.config.clone();
        let ws = warm.ws.clone();
        tokio::spawn(
            async move {
                let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
                driver.emit(TaskEvent::Phase(TaskPhase::Running)).await;
                let finished = follow_started(&config, &spec, &driver, child, None, deadline, SystemTime::now()).await;
                let keep = !(spec.cleanup && config.cleanup);
                conclude(&config, &ws, &spec, keep, finished, driver).await;
            }
            .instrument(span),
        );
        Ok(handle)
    }

    async fn sandbox_memory(&self, prepared: &PreparedSandbox) -> Option<u64> {
        let warm = prepared.state.downcast_ref::<WarmWorkspace>()?;
        let pid = warm.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref()?.id()?;
        Some(process::group_resident_bytes(pid))
    }

    async fn discard(&self, prepared: PreparedSandbox) -> Result<(), BackendError> {
        if let Ok(warm) = prepared.state.downcast::<WarmWorkspace>() {
            warm.stop();
            warm.ws.remove()?;
        }
        Ok(())
    }

    /// Adopts what an earlier process of this worker left. A task whose marker names a process that
    /// is still the one recorded (same pid, same start time) is reattached: followed by polling
    /// `/proc` until it ends, then cleaned up after as usual. One whose recorded process is gone ended
    /// while the worker was away: its stragglers are stopped and its outcome (the recorded exit code)
    /// is reported through a handle that finishes at once. One with no recorded process never got
    /// past setup: its processes are stopped, its workspace removed, and it is reported `Removed`.
    async fn recover(&self) -> Result<Vec<RecoveredTask>, BackendError> {
        let root = &self.config.workspace_root;
        let entries = std::fs::read_dir(root)
            .map_err(|source| DirectError::Workspace { path: root.display().to_string(), source })?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(crate::workspace::REMOVING_PREFIX) {
                // A removal an earlier process was killed in the middle of: finished now.
                if let Err(e) = crate::workspace::remove_tree(&entry.path()) {
                    warn!(path = %entry.path().display(), "could not finish removing a workspace: {e}");
                }
                continue;
            }
            let ws = Workspace { root: entry.path() };
            let Some(marker) = ws.read_marker() else {
                continue;
            };
            if marker.worker_id != self.config.worker_id {
                continue;
            }
            let Some(task_id) = marker.task_id.clone() else {
                // A warm sandbox that never got a task: its waiting runner goes with it.
                if let (Some(pid), Some(start_time)) = (marker.pid, marker.start_time)
                    && process::is_running(pid, start_time)
                {
                    process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                if let Err(e) = ws.remove() {
                    warn!(error = %e, "could not remove a leftover prepared workspace");
                }
                continue;
            };
            let execution_id = marker.execution_id.clone();
            if let (Some(pid), Some(start_time)) = (marker.pid, marker.start_time) {
                let running = process::is_running(pid, start_time);
                info!(task_id, pid, running, "reattaching to a task left by an earlier run of this worker");
                let (handle, driver) = TaskHandle::channel(task_id.clone());
                let follow = Follow {
                    config: self.config.clone(),
                    ws,
                    task_id: task_id.clone(),
                    pid,
                    start_time,
                    deadline: marker.deadline.map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
                    cleanup: marker.cleanup,
                };
                let span = info_span!("task", backend = NAME, task_id = %task_id, reattached = true);
                tokio::spawn(follow_reattached(follow, driver).instrument(span));
                found.push(RecoveredTask { task_id, execution_id, action: RecoveryAction::Reattached(handle) });
                continue;
            }
            let killed = process::processes_of_task(&task_id).len();
            process::kill_task(None, &task_id);
            let kept = !marker.cleanup;
            if !kept && let Err(e) = ws.remove() {
                warn!(task_id, error = %e, "could not remove a leftover workspace");
            }
            info!(
                task_id,
                killed, kept, "removed a task that had not started when an earlier run of this worker ended"
            );
            found.push(RecoveredTask {
                task_id,
                execution_id,
                action: RecoveryAction::NotStarted(format!(
                    "the worker restarted before the task's process started or was recorded (while its workspace or setup_command was being prepared); it stopped {killed} leftover process(es){}",
                    if kept { " and kept the workspace (cleanup is off)" } else { " and removed the workspace" }
                )),
            });
        }
        Ok(found)
    }
}

/// How often a reattached task's process is looked for in `/proc`.
const POLL: Duration = Duration::from_millis(200);

/// A task found running (or ended) after a restart, as its marker recorded it.
struct Follow {
    config: Arc<DirectConfig>,
    ws: Workspace,
    task_id: String,
    /// The wrapping shell: the task's process group leader.
    pid: u32,
    start_time: u64,
    deadline: Option<SystemTime>,
    cleanup: bool,
}

/// Follows a task this process did not start. It is not the task's parent, so it cannot wait for it:
/// it polls `/proc` every [`POLL`] until the recorded process is gone, stops the group on cancel or
/// at the recorded deadline, then takes the exit code the wrapping shell wrote to the workspace. The
/// task's stdout and stderr went to pipes of the worker that died, so no output events come.
async fn follow_reattached(f: Follow, driver: TaskDriver) {
    let mut stop = None;
    if process::is_running(f.pid, f.start_time) {
        driver.emit(TaskEvent::Phase(TaskPhase::Running)).await;
        let deadline = f
            .deadline
            .map(|d| tokio::time::Instant::now() + d.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => if !process::is_running(f.pid, f.start_time) { break },
                () = &mut timeout => { stop = Some(StopCause::Timeout); break }
                reason = driver.cancelled() => { stop = Some(StopCause::Cancel(reason)); break }
            }
        }
        if let Some(cause) = stop {
            info!(?cause, "stopping the reattached task: SIGTERM, then SIGKILL after {:?}", f.config.stop_grace);
            driver.emit(TaskEvent::Phase(TaskPhase::Stopping)).await;
            process::stop_task(Some(f.pid), &f.task_id, f.config.stop_grace).await;
        }
    }
    // Whatever the task left running goes too. Not by its group id: once the leader is gone its pid
    // may belong to someone else; what is left of the task carries its OZ_RUN_ID.
    process::kill_task(None, &f.task_id);
    let exit = f.ws.read_exit_status().map(ExitStatus::code);
    if let (Some(exit), None) = (exit, stop) {
        driver.emit(TaskEvent::Exited(exit)).await;
    }
    let failure = match (stop, exit) {
        (Some(cause), _) => Some(stop_failure(cause, None, "the task")),
        (None, Some(exit)) if exit.success() => None,
        (None, Some(exit)) => {
            Some(Failure { reason: FailureReason::ContainerExit, message: format!("the task {}", describe_exit(exit)) })
        }
        (None, None) => Some(Failure {
            reason: FailureReason::Unknown,
            message: "the task's process ended while the worker was restarting, without recording its exit status (the shell wrapping it was killed), so how it ended is not known".into(),
        }),
    };
    let env_spec = TaskSpec::new(f.task_id.clone(), vec![String::new()]);
    conclude(&f.config, &f.ws, &env_spec, !f.cleanup, Finished { exit, failure, started_at: None }, driver).await;
}

fn uuid_like() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// Why a process was stopped before it exited by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopCause {
    Timeout,
    Cancel(CancelReason),
}

fn to_exit(status: std::process::ExitStatus) -> ExitStatus {
    ExitStatus { code: status.code(), signal: status.signal() }
}

fn describe_exit(exit: ExitStatus) -> String {
    match (exit.code, exit.signal) {
        // The wrapping shell reports a task killed by a signal as 128 + the signal.
        (Some(c), _) if (129..=128 + 64).contains(&c) => {
            format!("exited with code {c} (128 + {}: killed by signal {}, or exited so)", c - 128, c - 128)
        }
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "ended".to_owned(),
    }
}

/// Reads `reader` to its end in chunks of at most 64 KiB, emitting each chunk. When nobody listens the
/// output is still drained, so the task never blocks on a full pipe.
async fn pump(mut reader: impl AsyncRead + Unpin, events: EventSender, stdout: bool) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut listening = true;
    loop {
        buf.reserve(CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let chunk: Bytes = buf.split().freeze();
                if listening {
                    listening =
                        events.emit(if stdout { TaskEvent::Stdout(chunk) } else { TaskEvent::Stderr(chunk) }).await;
                }
            }
        }
    }
}

/// Supervises a spawned process: streams its output, feeds its stdin, stops it on timeout or
/// cancellation, kills what it leaves behind, and returns how it ended.
async fn supervise(
    mut child: Child,
    stdin: Option<Bytes>,
    deadline: Option<tokio::time::Instant>,
    driver: &TaskDriver,
    task_id: &str,
    grace: Duration,
    cancellable: bool,
) -> (ExitStatus, Option<StopCause>) {
    let pgid = child.id();
    let events = driver.event_sender();
    let readers = [
        child.stdout.take().map(|r| tokio::spawn(pump(r, events.clone(), true))),
        child.stderr.take().map(|r| tokio::spawn(pump(r, events.clone(), false))),
    ];
    if let Some(mut input) = child.stdin.take() {
        tokio::spawn(async move {
            if let Some(bytes) = stdin {
                let _ = input.write_all(&bytes).await;
            }
            // Dropping closes the pipe: the task sees EOF.
        });
    }
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let cancel = async { if cancellable { driver.cancelled().await } else { std::future::pending().await } };
    let mut stop = None;
    let status = tokio::select! {
        status = child.wait() => status,
        () = timeout => { stop = Some(StopCause::Timeout); Err(std::io::ErrorKind::TimedOut.into()) }
        reason = cancel => { stop = Some(StopCause::Cancel(reason)); Err(std::io::ErrorKind::Interrupted.into()) }
    };
    let status = match (status, stop) {
        (Ok(status), _) => status,
        (Err(_), Some(cause)) => {
            info!(?cause, "stopping the task: SIGTERM, then SIGKILL after {grace:?}");
            driver.emit(TaskEvent::Phase(TaskPhase::Stopping)).await;
            process::stop_task(pgid, task_id, grace).await;
            match child.wait().await {
                Ok(s) => s,
                Err(_) => std::process::ExitStatus::from_raw(9),
            }
        }
        (Err(e), None) => {
            warn!(error = %e, "waiting for the task failed");
            std::process::ExitStatus::from_raw(9)
        }
    };
    // Like a container whose first process exits: whatever the task left running goes too.
    process::kill_task(pgid, task_id);
    for reader in readers.into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), reader).await.is_err() {
            warn!("an output pipe stayed open after every process of the task was killed");
        }
    }
    (to_exit(status), stop)
}

/// Makes a sandbox's package cache folder (mode 0700: tasks run as the worker's user), when it has
/// a key and the backend a cache root.
fn ensure_cache(config: &DirectConfig, sandbox: &oz_core::task::SandboxSpec) -> Result<(), DirectError> {
    if let Some(key) = &sandbox.cache {
        oz_core::run::validate_id("cache", key)?;
    }
    let Some(folder) = cache_dir(config, sandbox) else { return Ok(()) };
    let failed = |source| DirectError::Workspace { path: folder.display().to_string(), source };
    std::fs::create_dir_all(&folder).map_err(failed)?;
    std::fs::set_permissions(&folder, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(failed)
}

/// A sandbox's package cache folder, when it has a key and the backend a cache root.
fn cache_dir(config: &DirectConfig, sandbox: &oz_core::task::SandboxSpec) -> Option<std::path::PathBuf> {
    Some(oz_core::task::cache_folder(config.cache_root.as_ref()?, sandbox.cache.as_ref()?))
}

/// The environment of a task: `HOME`, `TMPDIR`, `PATH`, `GIT_CONFIG_GLOBAL`; the task's own; the
/// backend's configured variables; then `OZ_RUN_ID`, `OZ_WORKSPACE_ROOT`, `OZ_WORKER_BACKEND`,
/// `OZ_ENVIRONMENT_FILE` and `OZ_CACHE_DIR` (with a package cache). Later entries win.
fn task_env(config: &DirectConfig, ws: &Workspace, spec: &TaskSpec, cwd: &Path) -> Vec<(String, String)> {
    let mut env = TaskSpec::new(spec.task_id.clone(), vec![String::new()]);
    env = env
        .env("HOME", ws.home().display().to_string())
        .env("TMPDIR", ws.tmp().display().to_string())
        .env("PATH", config.path.clone())
        .env("GIT_CONFIG_GLOBAL", ws.gitconfig().display().to_string());
    env.env.extend(spec.env.iter().cloned());
    env.env.extend(config.environment.iter().filter_map(|e| Some((e.name.clone(), e.value.clone()?))));
    env = env
        .env(RUN_ID_VAR, spec.task_id.clone())
        .env("OZ_WORKSPACE_ROOT", cwd.display().to_string())
        .env("OZ_WORKER_BACKEND", NAME)
        .env("OZ_ENVIRONMENT_FILE", ws.environment_file().display().to_string());
    if let Some(cache) = cache_dir(config, &spec.sandbox) {
        env = env.env(oz_core::runner::env::CACHE_DIR, cache.display().to_string());
    }
    env.effective_env()
}

/// The environment of a warm sandbox's runner: [`task_env`]'s, without anything of a task.
fn sandbox_env(config: &DirectConfig, ws: &Workspace, warm: &WarmSpec, cwd: &Path) -> Vec<(String, String)> {
    let mut spec = TaskSpec::new(String::new(), vec![String::new()]);
    spec.env = warm.env.clone();
    spec.sandbox.cache = warm.sandbox.cache.clone();
    let mut env = task_env(config, ws, &spec, cwd);
    env.retain(|(k, _)| k != RUN_ID_VAR);
    env
}

fn merge(env: &mut Vec<(String, String)>, extra: Vec<(String, String)>) {
    for (name, value) in extra {
        if name == RUN_ID_VAR {
            warn!("the setup command tried to change OZ_RUN_ID; ignored");
            continue;
        }
        match env.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => env.push((name, value)),
        }
    }
}

struct Finished {
    exit: Option<ExitStatus>,
    failure: Option<Failure>,
    started_at: Option<SystemTime>,
}

async fn run_task(config: Arc<DirectConfig>, ws: Workspace, spec: TaskSpec, driver: TaskDriver) {
    let result = execute(&config, &ws, &spec, &driver).await;
    let finished = match result {
        Ok(f) => f,
        Err(e) => Finished {
            exit: None,
            failure: Some(Failure { reason: e.reason(), message: e.to_string() }),
            started_at: None,
        },
    };
    let keep = !(spec.cleanup && config.cleanup);
    conclude(&config, &ws, &spec, keep, finished, driver).await;
}

/// Runs `teardown_command`, removes the workspace unless `keep`, and finishes the task. `spec` gives
/// the teardown its environment; for a reattached task only the backend's part of it is known.
async fn conclude(
    config: &DirectConfig,
    ws: &Workspace,
    spec: &TaskSpec,
    keep: bool,
    mut finished: Finished,
    driver: TaskDriver,
) {
    let cwd = config.target_dir.clone().unwrap_or_else(|| ws.work_dir());
    if let Some(teardown) = &config.teardown_command {
        driver.emit(TaskEvent::Phase(TaskPhase::TeardownCommand)).await;
        let env = task_env(config, ws, spec, &cwd);
        let teardown_run = run_shell(teardown, &env, &cwd, &driver, &spec.task_id, config, Some(TEARDOWN_LIMIT), false);
        match teardown_run.instrument(info_span!("teardown_command")).await {
            Ok((exit, None)) if exit.success() => {}
            Ok((exit, _)) => {
                let message = format!("teardown_command {}", describe_exit(exit));
                warn!("{message}");
                if finished.failure.is_none() {
                    finished.failure = Some(Failure { reason: FailureReason::TeardownCommand, message });
                }
            }
            Err(e) => warn!(error = %e, "teardown_command could not start"),
        }
    }
    if keep {
        info!(path = %ws.root.display(), "keeping the workspace (cleanup is off)");
        // Without its marker the kept folder is no longer a task for `recover` to report again.
        if let Err(e) = std::fs::remove_file(ws.marker_path()) {
            warn!(error = %e, "could not remove the marker of a kept workspace");
        }
    } else {
        driver.emit(TaskEvent::Phase(TaskPhase::CleaningUp)).await;
        if let Err(e) = ws.remove() {
            warn!(error = %e, "cleanup failed");
            if finished.failure.is_none() {
                finished.failure = Some(Failure { reason: FailureReason::Cleanup, message: e.to_string() });
            }
        }
    }
    info!(failure = ?finished.failure.as_ref().map(|f| f.reason), "task ended");
    driver.finish(finished.exit, finished.failure, finished.started_at);
}

#[allow(clippy::too_many_arguments)]
async fn run_shell(
    script: &str,
    env: &[(String, String)],
    cwd: &Path,
    driver: &TaskDriver,
    task_id: &str,
    config: &DirectConfig,
    limit: Option<Duration>,
    cancellable: bool,
) -> Result<(ExitStatus, Option<StopCause>), std::io::Error> {
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let limits = Limits { max_open_files: config.max_open_files, max_address_space: None };
    let child = process::spawn(&argv, env, cwd, limits)?;
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    Ok(supervise(child, None, deadline, driver, task_id, config.stop_grace, cancellable).await)
}

fn stop_failure(cause: StopCause, timeout: Option<Duration>, what: &str) -> Failure {
    match cause {
        StopCause::Timeout => Failure {
            reason: FailureReason::TaskTimeout,
            message: match timeout {
                Some(t) => format!("{what} ran past its timeout of {}s and was stopped", t.as_secs()),
                None => format!("{what} ran past its timeout and was stopped"),
            },
        },
        StopCause::Cancel(reason) => Failure {
            reason: reason.failure_reason(),
            message: match reason {
                CancelReason::Requested => format!("{what} was cancelled and its processes were stopped"),
                CancelReason::Shutdown => {
                    format!("{what} was stopped because the worker is shutting down")
                }
            },
        },
    }
}

async fn execute(
    config: &DirectConfig,
    ws: &Workspace,
    spec: &TaskSpec,
    driver: &TaskDriver,
) -> Result<Finished, DirectError> {
    driver.emit(TaskEvent::Phase(TaskPhase::Preparing)).await;
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let base = config.target_dir.clone().unwrap_or_else(|| ws.work_dir());
    let cwd = match &spec.sandbox.workdir {
        Some(w) => base.join(w),
        None => base.clone(),
    };
    std::fs::create_dir_all(&cwd)
        .map_err(|source| DirectError::Workspace { path: cwd.display().to_string(), source })?;
    let mut env = task_env(config, ws, spec, &cwd);

    if let Some(setup) = &config.setup_command {
        driver.emit(TaskEvent::Phase(TaskPhase::SetupCommand)).await;
        let limit = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let (exit, stop) = run_shell(setup, &env, &cwd, driver, &spec.task_id, config, limit, true)
            .instrument(info_span!("setup_command"))
            .await
            .map_err(|e| DirectError::Setup(format!("could not start /bin/sh: {e}")))?;
        if let Some(cause) = stop {
            return Ok(Finished {
                exit: Some(exit),
                failure: Some(stop_failure(cause, spec.timeout, "setup_command")),
                started_at: None,
            });
        }
        if !exit.success() {
            return Err(DirectError::Setup(describe_exit(exit)));
        }
        match std::fs::read_to_string(ws.environment_file()) {
            Ok(text) => merge(
                &mut env,
                dotenv::parse(&text)
                    .map_err(|e| DirectError::Setup(format!("{}: {e}", ws.environment_file().display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DirectError::Setup(format!("could not read OZ_ENVIRONMENT_FILE: {e}")));
            }
        }
    }

    if let Some(cause) = driver.cancel_requested() {
        return Ok(Finished {
            exit: None,
            failure: Some(stop_failure(StopCause::Cancel(cause), spec.timeout, "the task")),
            started_at: None,
        });
    }
    driver.emit(TaskEvent::Phase(TaskPhase::Starting)).await;
    // The secret input (the workload token) goes to the process's stdin, never its environment.
    let delivery = spec.stdin_delivery()?;
    env.extend(delivery.variable);
    let stdin = delivery.stdin;
    let limits =
        Limits { max_open_files: config.max_open_files, max_address_space: spec.sandbox.resources.memory_bytes };
    let child = process::spawn_recorded(&spec.argv, &env, &cwd, limits, &ws.exit_status_file())
        .map_err(|source| DirectError::Spawn { command: spec.argv[0].clone(), source })?;
    let started_at = SystemTime::now();
    info!(pid = child.id(), "task started");
    // Record the process so that a restarted worker can reattach to it (see `recover`).
    let mut marker = marker_for(config, spec);
    marker.pid = child.id();
    marker.start_time = child.id().and_then(process::start_time);
    marker.deadline = deadline.map(|d| {
        let left = d.saturating_duration_since(tokio::time::Instant::now());
        (started_at + left).duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.as_secs().saturating_add(1))
    });
    if let Err(e) = ws.write_marker(&marker) {
        warn!(error = %e, "could not record the task's process: a restarted worker will not reattach to it");
    }
    driver.emit(TaskEvent::Phase(TaskPhase::Running)).await;
    Ok(follow_started(config, spec, driver, child, stdin, deadline, started_at).await)
}

/// Follows a started task's process to its end (see [`supervise`]) and says how it went.
async fn follow_started(
    config: &DirectConfig,
    spec: &TaskSpec,
    driver: &TaskDriver,
    child: Child,
    stdin: Option<Bytes>,
    deadline: Option<tokio::time::Instant>,
    started_at: SystemTime,
) -> Finished {
    let supervised = supervise(child, stdin, deadline, driver, &spec.task_id, config.stop_grace, true);
    let (exit, stop) = supervised.instrument(info_span!("run")).await;
    driver.emit(TaskEvent::Exited(exit)).await;
    let failure = match stop {
        Some(cause) => Some(stop_failure(cause, spec.timeout, "the task")),
        None if exit.success() => None,
        None => {
            Some(Failure { reason: FailureReason::ContainerExit, message: format!("the task {}", describe_exit(exit)) })
        }
    };
    Finished { exit: Some(exit), failure, started_at: Some(started_at) }
}

/// A warm workspace's runner, waiting for its task.
struct WarmWorkspace {
    ws: Workspace,
    /// The runner (`oz agent warm`), until a task is handed over.
    child: std::sync::Mutex<Option<Child>>,
    socket: PathBuf,
    cwd: PathBuf,
}

impl WarmWorkspace {
    /// Kills the waiting runner and everything it started.
    fn stop(&self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Some(pid) = child.id()
        {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A warm workspace whose preparation has not returned: if dropped so, its waiting runner (by the
/// pid in its marker) is killed and the workspace removed.
struct UnfinishedWarm {
    ws: Option<Workspace>,
}

impl Drop for UnfinishedWarm {
    fn drop(&mut self) {
        let Some(ws) = self.ws.take() else { return };
        if let Some(pid) = ws.read_marker().and_then(|m| m.pid) {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = ws.remove();
    }
}

/// Starts `oz agent warm` in `ws` and waits until it is ready (its socket answers), it ends (its
/// preparation failed: the tail of its log says why), or `warm.ready_within` runs out.
async fn start_warm(
    config: &DirectConfig,
    ws: &Workspace,
    warm: &WarmSpec,
    marker: &mut Marker,
) -> Result<WarmWorkspace, BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    let private = ws.root.join("warm");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| DirectError::Workspace { path: private.display().to_string(), source })?;
    let environment_file = private.join("environment.json");
    let json = serde_json::to_vec(&warm.environment)
        .map_err(|e| BackendError::new(FailureReason::WorkspaceSetup, e.to_string()))?;
    std::fs::write(&environment_file, json)
        .map_err(|source| DirectError::Workspace { path: environment_file.display().to_string(), source })?;
    let socket = private.join(oz_core::warm::SOCKET_NAME);
    if socket.as_os_str().len() > oz_core::warm::MAX_SOCKET_PATH {
        return Err(BackendError::new(
            FailureReason::WorkspaceSetup,
            format!(
                "the workspace root is too deep for a unix socket ({}); choose a shorter workspace_root",
                socket.display()
            ),
        ));
    }
    let base = config.target_dir.clone().unwrap_or_else(|| ws.work_dir());
    let cwd = match &warm.sandbox.workdir {
        Some(w) => base.join(w),
        None => base,
    };
    std::fs::create_dir_all(&cwd)
        .map_err(|source| DirectError::Workspace { path: cwd.display().to_string(), source })?;
    let channel = oz_core::warm::HandoffChannel::Socket(socket.clone());
    let argv =
        oz_core::warm::warm_argv(&warm.entrypoint, &channel, &environment_file, &cwd, warm.git_base_url.as_deref());
    let env = sandbox_env(config, ws, warm, &cwd);
    let limits =
        Limits { max_open_files: config.max_open_files, max_address_space: warm.sandbox.resources.memory_bytes };
    let mut child = process::spawn_recorded(&argv, &env, &cwd, limits, &ws.exit_status_file())
        .map_err(|source| DirectError::Spawn { command: argv[0].clone(), source })?;
    marker.pid = child.id();
    marker.start_time = child.id().and_then(process::start_time);
    ws.write_marker(marker)?;
    let deadline = tokio::time::Instant::now() + warm.ready_within;
    loop {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(private.join("prepare.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(BackendError::new(
                FailureReason::WorkspaceSetup,
                format!(
                    "the warm sandbox's preparation failed ({}): {}",
                    describe_exit(to_exit(status)),
                    tail.join(" / ")
                ),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BackendError::new(
                FailureReason::WorkspaceSetup,
                format!("the warm sandbox was not ready within {}s", warm.ready_within.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(WarmWorkspace { ws: ws.clone(), child: std::sync::Mutex::new(Some(child)), socket, cwd })
}

/// Sends the handoff and reads the runner's answer.
async fn hand_over(socket: &Path, handoff: &Handoff) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let exchange = async {
        let mut stream =
            tokio::net::UnixStream::connect(socket).await.map_err(|e| format!("could not connect: {e}"))?;
        let mut line = serde_json::to_vec(handoff).map_err(|e| e.to_string())?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(|e| format!("could not send the task: {e}"))?;
        let mut answer = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut answer).await.map_err(|e| format!("no answer: {e}"))?;
        let answer: HandoffAnswer = serde_json::from_str(&answer).map_err(|e| format!("an unreadable answer: {e}"))?;
        match answer {
            HandoffAnswer { accepted: true, .. } => Ok(()),
            HandoffAnswer { error, .. } => Err(error.unwrap_or_else(|| "refused".into())),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_owned())?
}
