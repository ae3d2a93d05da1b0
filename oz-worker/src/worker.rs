//! The worker: one outbound WebSocket to the control plane, tasks run on a backend.
//!
//! - Connects with `Authorization: Bearer <key>` to `<ws url>?worker_id=<id>`; pings every 30 s; drops
//!   a connection it has not heard from in 60 s; redials at once after a live connection drops, then
//!   backs off from 1 s doubling to 60 s while dialing fails.
//! - Messages to the server go through an outbox that outlives connections: a task that ends while
//!   disconnected has its outcome delivered after the next connect.
//! - `max_concurrent_tasks` (0 = unlimited): beyond it, assignments get `task_rejected`.
//! - `task_cancellation` stops the task through the backend; its end is reported as CANCELLED.
//! - Shutdown: stop taking tasks (assignments are rejected), cancel running tasks (reported as
//!   `graceful_shutdown`), deliver every outcome, close. [`WorkerHandle::abort`] exits at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use oz_core::backend::{Backend, CancelReason, Canceller, TaskOutcome};
use oz_core::credentials::ApiKey;
use oz_core::failure::FailureReason;
use oz_core::retry::RetryPolicy;
use oz_core::run::RunState;
use oz_core::wire::worker::{
    ServerMessage, TaskAssignment, TaskClaimed, TaskCompleted, TaskFailed, TaskRejected, WorkerMessage,
};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{RejectReason, WorkerMetrics};

use crate::error::WorkerError;
use oz_core::runner::CommandOptions;

/// How the worker connects and behaves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This worker's id; runs for `worker_host` = this id come here.
    pub worker_id: String,
    /// `ws://host:port/api/v1/selfhosted/worker/ws` (the `worker_id` query is added).
    pub websocket_url: String,
    /// The API key.
    pub api_key: ApiKey,
    /// At most this many tasks at once; 0 = unlimited.
    pub max_concurrent_tasks: usize,
    /// Remove what tasks leave behind (off: `--no-cleanup`).
    pub cleanup: bool,
    /// The agent's command line and environment.
    pub command: CommandOptions,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Drop the connection after this long without a message.
    pub read_deadline: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Where messages not yet sent are kept, so a restarted worker still sends them (`None`: in
    /// memory only, lost with the process).
    pub outbox_file: Option<std::path::PathBuf>,
    /// Warm pools, per environment (`warm_pools:` in the file; see [`crate::pool`]).
    pub warm_pools: Vec<crate::pool::WarmPoolConfig>,
    /// The folder of git mirrors the worker keeps (`git_mirrors:`; see [`crate::mirror`]). The
    /// backend must be given it as well ([`crate::backends::mount_git_mirrors`]).
    pub git_mirrors: Option<std::path::PathBuf>,
    /// Whether the worker's own git (mirrors, HEAD checks) may read `file://` remotes
    /// (`local_git_remotes:`; see [`crate::git::GitAccess`]).
    pub local_git_remotes: bool,
}

impl WorkerConfig {
    /// Defaults as Oz: ping 30 s, read deadline 60 s, backoff 1 s to 60 s, cleanup on, unlimited tasks.
    pub fn new(
        worker_id: impl Into<String>,
        websocket_url: impl Into<String>,
        api_key: ApiKey,
        command: CommandOptions,
    ) -> Self {
        Self {
            worker_id: worker_id.into(),
            websocket_url: websocket_url.into(),
            api_key,
            max_concurrent_tasks: 0,
            cleanup: true,
            warm_pools: Vec::new(),
            git_mirrors: None,
            local_git_remotes: false,
            command,
            ping_interval: Duration::from_secs(30),
            read_deadline: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            outbox_file: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Running,
    Draining,
    Aborted,
}

struct Shared {
    /// Running tasks; `None` while the backend is still launching one.
    tasks: HashMap<String, Option<Canceller>>,
    /// Cancellations that arrived while their task was launching.
    cancel_pending: HashSet<String>,
    outbox: crate::outbox::Outbox,
    claims: crate::outbox::Claims,
    /// What an earlier process of this worker had claimed and not seen end.
    earlier_claims: Vec<String>,
}

/// Controls a running worker.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    mode: watch::Sender<Mode>,
}

impl WorkerHandle {
    /// Graceful shutdown: take no more tasks, cancel the running ones (reported as
    /// `graceful_shutdown`), deliver their outcomes, then stop.
    pub fn shutdown(&self) {
        self.mode.send_if_modified(|m| {
            if *m == Mode::Running {
                *m = Mode::Draining;
                true
            } else {
                false
            }
        });
    }
    /// Stops at once (a second signal).
    pub fn abort(&self) {
        let _ = self.mode.send(Mode::Aborted);
    }
}

/// The worker daemon's core.
pub struct Worker {
    config: Arc<WorkerConfig>,
    backend: Arc<dyn Backend>,
    shared: Arc<Mutex<Shared>>,
    outbox_ready: Arc<Notify>,
    mode: watch::Receiver<Mode>,
    handle: WorkerHandle,
    metrics: WorkerMetrics,
    pools: crate::pool::WarmPools,
    mirrors: Option<Arc<crate::mirror::GitMirrors>>,
}

impl Worker {
    /// A worker for `backend`.
    pub fn new(config: WorkerConfig, backend: Arc<dyn Backend>) -> Result<Self, WorkerError> {
        oz_core::run::validate_id("worker_id", &config.worker_id)?;
        // One TLS crypto provider for the process (ring), for wss:// connections.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tx, rx) = watch::channel(Mode::Running);
        let outbox = crate::outbox::Outbox::open(config.outbox_file.clone());
        let (claims, earlier_claims) =
            crate::outbox::Claims::open(config.outbox_file.as_ref().map(|f| f.with_extension("claims")));
        let metrics = WorkerMetrics::new();
        let access = crate::git::GitAccess {
            local_remotes: config.local_git_remotes,
            credentials: crate::pool::control_plane_client(&config.command, &config.api_key)
                .map(|client| Arc::new(crate::git::PreparationCredentials::new(client))),
        };
        let mirrors = match &config.git_mirrors {
            Some(dir) => Some(Arc::new(
                crate::mirror::GitMirrors::new(
                    dir.clone(),
                    crate::pool::control_plane_client(&config.command, &config.api_key),
                    access.clone(),
                )
                .map_err(|e| WorkerError::Config(format!("git_mirrors: could not create {}: {e}", dir.display())))?,
            )),
            None => None,
        };
        let pools = crate::pool::WarmPools::new(
            backend.clone(),
            config.warm_pools.clone(),
            config.command.clone(),
            &config.api_key,
            metrics.clone(),
            mirrors.clone(),
            access,
        )?;
        Ok(Self {
            pools,
            mirrors,
            config: Arc::new(config),
            backend,
            shared: Arc::new(Mutex::new(Shared {
                tasks: HashMap::new(),
                cancel_pending: HashSet::new(),
                outbox,
                claims,
                earlier_claims,
            })),
            outbox_ready: Arc::new(Notify::new()),
            mode: rx,
            handle: WorkerHandle { mode: tx },
            metrics,
        })
    }

    /// Reports tasks a backend found after a restart (see `Backend::recover`): the ones it removed
    /// are reported as failed once connected (their runs end with the backend's message); the ones it
    /// reattached to are followed like any task.
    pub fn adopt_recovered(self: &Arc<Self>, recovered: Vec<oz_core::backend::RecoveredTask>) {
        // Claimed by an earlier process, and nothing of them found: they never started.
        let earlier = std::mem::take(&mut self.shared().earlier_claims);
        for task_id in earlier.into_iter().filter(|id| !recovered.iter().any(|t| t.task_id == *id)) {
            let reason = "the worker restarted after claiming the run and before starting it".to_owned();
            self.send(WorkerMessage::TaskRejected(TaskRejected { task_id, reason, execution_id: None }));
        }
        for task in recovered {
            match task.action {
                oz_core::backend::RecoveryAction::Removed(f) => self.send(WorkerMessage::TaskFailed(TaskFailed {
                    task_id: task.task_id,
                    message: f.message,
                    failure_reason: f.reason,
                    exit_code: 0,
                    execution_id: task.execution_id,
                })),
                // The control plane queues a rejected run again, and offers it anew.
                oz_core::backend::RecoveryAction::NotStarted(reason) => {
                    self.send(WorkerMessage::TaskRejected(TaskRejected {
                        task_id: task.task_id,
                        reason,
                        execution_id: task.execution_id,
                    }))
                }
                oz_core::backend::RecoveryAction::Reattached(handle) => {
                    let worker = self.clone();
                    let task_id = task.task_id.clone();
                    let execution_id = task.execution_id.clone();
                    {
                        let mut shared = self.shared();
                        shared.tasks.insert(task_id.clone(), Some(handle.canceller()));
                        shared.claims.add(&task_id);
                    }
                    self.track_active();
                    let span =
                        info_span!("task", task_id = %task_id, worker_id = %self.config.worker_id, reattached = true);
                    tokio::spawn(
                        async move {
                            let outcome = handle.wait().await;
                            let elapsed = outcome.finished_at.duration_since(outcome.accepted_at).unwrap_or_default();
                            worker.metrics.finished(&outcome, elapsed);
                            let lost_token =
                                outcome.exit.map(|e| e.oz_exit_code()) == Some(oz_core::runner::EXIT_NO_SECRET_INPUT);
                            let message = if lost_token {
                                // Its token went with the worker that died before handing it over:
                                // nothing ran, so the run goes again.
                                WorkerMessage::TaskRejected(TaskRejected {
                                    task_id: task_id.clone(),
                                    reason: "the sandbox never got its token before the worker restarted".into(),
                                    execution_id,
                                })
                            } else {
                                outcome_message(&task_id, execution_id.as_deref(), &outcome)
                            };
                            info!(message = ?message, "reattached task ended");
                            worker.task_ended(&task_id, message);
                        }
                        .instrument(span),
                    );
                }
            }
        }
    }

    /// Its warm pools.
    pub fn warm_pools(&self) -> &crate::pool::WarmPools {
        &self.pools
    }

    /// Its metrics (serve them with [`crate::metrics::serve`]).
    pub fn metrics(&self) -> WorkerMetrics {
        self.metrics.clone()
    }

    /// Records the number of running tasks.
    fn track_active(&self) {
        let active = self.shared().tasks.len();
        self.metrics.set_active(active);
    }

    /// A handle to stop it.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, message: WorkerMessage) {
        self.shared().outbox.push(message);
        self.outbox_ready.notify_one();
    }

    /// Forgets an ended task and queues its outcome in one step: an assignment of the same task
    /// (a new execution of a run continued after its end) is refused while the task is here, and
    /// once it is not, its claim goes out after this outcome, never before.
    fn task_ended(&self, task_id: &str, outcome: WorkerMessage) {
        {
            let mut shared = self.shared();
            shared.tasks.remove(task_id);
            shared.claims.remove(task_id);
            shared.outbox.push(outcome);
        }
        self.outbox_ready.notify_one();
        self.track_active();
    }

    fn finished(&self) -> bool {
        let s = self.shared();
        // Tasks a backend preserves across restarts are left running: the next process reattaches.
        let tasks_done = s.tasks.is_empty() || self.backend.preserves_tasks_on_shutdown();
        *self.mode.borrow() == Mode::Draining && tasks_done && s.outbox.is_empty()
    }

    /// Runs until shut down (or aborted).
    pub async fn run(self) -> Result<(), WorkerError> {
        Arc::new(self).run_shared().await
    }

    /// [`Worker::run`] for a worker already shared (after [`Worker::adopt_recovered`]).
    pub async fn run_shared(self: Arc<Self>) -> Result<(), WorkerError> {
        let this = self;
        let filling = tokio::spawn(this.pools.clone().run());
        let result = this.clone().connect_and_serve().await;
        this.pools.stop().await;
        filling.abort();
        result
    }

    async fn connect_and_serve(self: Arc<Self>) -> Result<(), WorkerError> {
        let this = self;
        let reconnect = RetryPolicy::forever(this.config.backoff_min, this.config.backoff_max);
        let mut delays = reconnect.delays();
        let mut mode = this.mode.clone();
        let mut connected_before = false;
        loop {
            if *mode.borrow() == Mode::Aborted || this.finished() {
                return Ok(());
            }
            match this.connect().await {
                Ok(ws) => {
                    info!(worker_id = %this.config.worker_id, "connected to the control plane");
                    if connected_before {
                        this.metrics.reconnected();
                    }
                    connected_before = true;
                    this.metrics.set_connected(true);
                    delays = reconnect.delays();
                    this.clone().session(ws).await;
                    this.metrics.set_connected(false);
                    // A live connection that dropped is redialed at once.
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(this.config.backoff_max);
                    warn!("{e}; retrying in {}s", delay.as_secs_f32());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = mode.changed() => {}
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<WsStream, WorkerError> {
        let sep = if self.config.websocket_url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}worker_id={}", self.config.websocket_url, self.config.worker_id);
        let mut request = url.into_client_request().map_err(|e| WorkerError::Request(Box::new(e)))?;
        let auth = format!("Bearer {}", self.config.api_key.expose()).parse().map_err(|_| WorkerError::ApiKeyHeader)?;
        request.headers_mut().insert("Authorization", auth);
        let connect = tokio_tungstenite::connect_async(request);
        let limit = Duration::from_secs(15);
        let (ws, _) = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| WorkerError::ConnectTimeout(limit))?
            .map_err(|e| WorkerError::Connect(Box::new(e)))?;
        Ok(ws)
    }

    async fn session(self: Arc<Self>, ws: WsStream) {
        let (mut sink, mut stream) = ws.split();
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut mode = self.mode.clone();
        // What this connection was last told of the warm pools (each connection is told afresh).
        let mut pools_sent: Option<Vec<crate::pool::PoolStatus>> = None;
        loop {
            // Deliver what is waiting; a message leaves the outbox only once written.
            loop {
                let next = self.shared().outbox.front().cloned();
                let Some(message) = next else { break };
                let Ok(text) = message.to_json() else {
                    self.shared().outbox.pop();
                    continue;
                };
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
                self.shared().outbox.pop();
            }
            if !self.pools.is_empty() {
                let now = self.pools.status();
                if pools_sent.as_ref() != Some(&now) {
                    let report =
                        WorkerMessage::WarmPools(oz_core::wire::worker::WarmPoolsReport { pools: now.clone() });
                    if let Ok(text) = report.to_json()
                        && sink.send(Message::Text(text.into())).await.is_err()
                    {
                        return;
                    }
                    pools_sent = Some(now);
                }
            }
            if *mode.borrow() == Mode::Aborted {
                return;
            }
            if self.finished() {
                let _ = sink.close().await;
                return;
            }
            tokio::select! {
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                _ = self.outbox_ready.notified() => {}
                _ = self.pools.changed() => {}
                _ = mode.changed() => {
                    if *mode.borrow() == Mode::Draining {
                        self.begin_shutdown();
                    }
                }
                frame = tokio::time::timeout(self.config.read_deadline, stream.next()) => match frame {
                    Ok(Some(Ok(Message::Text(text)))) => match ServerMessage::from_json(&text) {
                        Ok(Some(message)) => self.clone().on_message(message),
                        Ok(None) => {}
                        Err(e) => warn!("ignoring a malformed message from the server: {e}"),
                    },
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return,
                    Ok(Some(Ok(_))) => {}
                    Err(_) => {
                        warn!("no message from the server in {}s; reconnecting", self.config.read_deadline.as_secs());
                        return;
                    }
                },
            }
        }
    }

    fn begin_shutdown(&self) {
        if self.backend.preserves_tasks_on_shutdown() {
            let running = self.shared().tasks.len();
            info!(
                tasks = running,
                backend = self.backend.name(),
                "shutting down: leaving running tasks to be reattached after restart"
            );
            self.outbox_ready.notify_one();
            return;
        }
        let cancellers: Vec<Canceller> = self.shared().tasks.values().flatten().cloned().collect();
        info!(tasks = cancellers.len(), "shutting down: cancelling running tasks");
        for c in cancellers {
            c.cancel(CancelReason::Shutdown);
        }
        self.outbox_ready.notify_one();
    }

    fn on_message(self: Arc<Self>, message: ServerMessage) {
        match message {
            ServerMessage::TaskAssignment(a) => self.on_assignment(*a),
            ServerMessage::TaskCancellation(c) => {
                let mut shared = self.shared();
                match shared.tasks.get(&c.task_id).cloned() {
                    Some(Some(canceller)) => canceller.cancel(CancelReason::Requested),
                    Some(None) => {
                        shared.cancel_pending.insert(c.task_id.clone());
                    }
                    None => warn!(task_id = %c.task_id, "cancellation for a task this worker does not run"),
                }
            }
            ServerMessage::ReposMoved(moved) => {
                if let Some(mirrors) = &self.mirrors {
                    mirrors.expire(&moved.repos);
                }
                self.pools.repos_moved(&moved.repos);
            }
        }
    }

    /// Launches a task: in a warm sandbox of its environment's pool if one is ready, else cold (and
    /// cold as well if the warm sandbox does not take it).
    async fn launch(
        &self,
        mut spec: oz_core::task::TaskSpec,
        environment: Option<&str>,
        assigned_at: std::time::Instant,
    ) -> Result<oz_core::backend::TaskHandle, oz_core::backend::BackendError> {
        if let (Some(mirrors), Some(environment)) = (&self.mirrors, environment) {
            // Only its own environment's mirrors (as a warm sandbox of it was given).
            spec.sandbox.git_mirrors = mirrors.for_environment(environment);
            // For the next clones of this environment; this one goes on with the mirror as it is.
            let (mirrors, environment) = (mirrors.clone(), environment.to_owned());
            tokio::spawn(async move { mirrors.refresh_environment(&environment).await });
        }
        let Some(environment) = environment.filter(|e| self.pools.has(e)) else {
            return self.backend.launch(spec).await;
        };
        let Some(prepared) = self.pools.take(environment, &spec.sandbox) else {
            return self.backend.launch(spec).await;
        };
        let id = prepared.id.clone();
        // The mirrors it was given when it was made: its environment's own, as the task's are.
        let mut warm_spec = spec.clone();
        warm_spec.sandbox.git_mirrors = prepared.spec.git_mirrors.clone();
        match self.backend.launch_prepared(prepared, warm_spec).await {
            Ok(handle) => {
                self.pools.handed_over(environment, assigned_at.elapsed());
                info!(task_id = %spec.task_id, warm = %id, "started in a warm sandbox");
                Ok(handle)
            }
            Err(e) => {
                warn!(task_id = %spec.task_id, warm = %id, "the warm sandbox did not take the task ({e}); starting it cold");
                self.backend.launch(spec).await
            }
        }
    }

    fn on_assignment(self: Arc<Self>, assignment: TaskAssignment) {
        let task_id = assignment.task_id.clone();
        let execution_id = assignment.execution_id.clone();
        let reject = |reason: String| {
            WorkerMessage::TaskRejected(TaskRejected {
                task_id: task_id.clone(),
                reason,
                execution_id: execution_id.clone(),
            })
        };
        if *self.mode.borrow() != Mode::Running {
            self.metrics.rejected(RejectReason::ShuttingDown);
            self.send(reject("the worker is shutting down".into()));
            return;
        }
        if self.shared().tasks.contains_key(&task_id) {
            // Offered again (the control plane lost track of the first offer): the task runs here
            // already, and a second copy of it must not start.
            warn!(task_id, "an assignment for a task this worker already runs; refused");
            self.send(reject("the worker already runs this task".into()));
            return;
        }
        let active = self.shared().tasks.len();
        if self.config.max_concurrent_tasks > 0 && active >= self.config.max_concurrent_tasks {
            self.metrics.rejected(RejectReason::Capacity);
            self.send(reject(format!("at capacity ({active} of {} tasks)", self.config.max_concurrent_tasks)));
            return;
        }
        // An assignment that cannot become a task (a bad image) is claimed, then failed, as Oz does.
        let spec = oz_core::runner::task_spec(&assignment, &self.config.command, self.config.cleanup);
        let environment = oz_core::runner::runner_invocation(&assignment, &self.config.command).environment;
        // Claim first, as Oz does; a launch that fails is then reported as task_failed.
        self.send(WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: task_id.clone(),
            worker_id: self.config.worker_id.clone(),
            execution_id: execution_id.clone(),
        }));
        self.metrics.claimed();
        let claimed_at = std::time::Instant::now();
        let span =
            info_span!("task", task_id = %task_id, worker_id = %self.config.worker_id, backend = self.backend.name());
        let worker = self.clone();
        // Take the slot before the launch, so a burst of assignments respects the limit.
        {
            let mut shared = self.shared();
            shared.tasks.insert(task_id.clone(), None);
            shared.claims.add(&task_id);
        }
        self.track_active();
        tokio::spawn(
            async move {
                let launched = match spec {
                    Ok(spec) => worker.launch(spec, environment.as_deref(), claimed_at).await,
                    Err(e) => Err(e),
                };
                let message = match launched {
                    Ok(handle) => {
                        let cancelled_meanwhile = {
                            let mut shared = worker.shared();
                            shared.tasks.insert(task_id.clone(), Some(handle.canceller()));
                            shared.cancel_pending.remove(&task_id)
                        };
                        // A cancellation or a shutdown that arrived during the launch still applies.
                        if cancelled_meanwhile {
                            handle.canceller().cancel(CancelReason::Requested);
                        } else if *worker.mode.borrow() != Mode::Running {
                            handle.canceller().cancel(CancelReason::Shutdown);
                        }
                        let outcome = handle.wait().await;
                        worker.metrics.finished(&outcome, claimed_at.elapsed());
                        outcome_message(&task_id, execution_id.as_deref(), &outcome)
                    }
                    Err(e) => {
                        worker.metrics.launch_failed(e.reason, claimed_at.elapsed());
                        WorkerMessage::TaskFailed(TaskFailed {
                            task_id: task_id.clone(),
                            message: e.message.clone(),
                            failure_reason: e.reason,
                            exit_code: 0,
                            execution_id: execution_id.clone(),
                        })
                    }
                };
                info!(message = ?message, "task ended");
                worker.task_ended(&task_id, message);
            }
            .instrument(span),
        );
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The message reporting an outcome of execution `execution_id` of a task: `task_completed` for
/// success and cancellation, else `task_failed`.
pub fn outcome_message(task_id: &str, execution_id: Option<&str>, outcome: &TaskOutcome) -> WorkerMessage {
    let exit_code = outcome.exit.map_or(0, |e| e.oz_exit_code());
    let execution_id = execution_id.map(str::to_owned);
    match &outcome.failure {
        None => WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: "the agent finished".into(),
            task_state: None,
            execution_id,
        }),
        Some(f) if f.reason == FailureReason::TaskCancelled => WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: f.message.clone(),
            task_state: Some(RunState::Cancelled),
            execution_id,
        }),
        Some(f) => WorkerMessage::TaskFailed(TaskFailed {
            task_id: task_id.into(),
            message: f.message.clone(),
            failure_reason: f.reason,
            exit_code,
            execution_id,
        }),
    }
}
