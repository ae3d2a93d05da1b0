//! Dispatch: connected workers, and the loop that hands QUEUED runs to them.
//!
//! A run for `worker_host` X goes only to connections of the same team whose worker id is exactly X;
//! several connections with one id share the load (fewest runs in flight first). Offering a run moves
//! it QUEUED -> PENDING with a lease; `task_claimed` -> CLAIMED; `task_rejected` -> QUEUED again (that
//! connection is skipped for a moment); a connection that drops returns its PENDING runs to the queue.
//! While any connection of the worker id is up, the leases of its runs are renewed; a lease that runs
//! out ends the run ERROR with a message saying so.

pub mod assignment;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use oz_core::run::RunState;
use oz_core::wire::worker::{ServerMessage, TaskCancellation, WorkerMessage};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::lifecycle::Lifecycle;
use crate::store::{RunRecord, StateChange};

/// How long a connection that rejected a task is skipped.
const REJECT_BACKOFF: Duration = Duration::from_secs(1);
/// How often the loop runs without being woken (lease checks, retries after rejections).
const TICK: Duration = Duration::from_millis(500);

struct Conn {
    team_id: String,
    worker_id: String,
    /// The worker credential it opened with.
    key_id: String,
    /// Notified to close the connection (its credential was revoked or rotated).
    closed: Arc<Notify>,
    tx: mpsc::UnboundedSender<ServerMessage>,
    in_flight: HashSet<String>,
    skip_until: Option<Instant>,
    /// What the worker last said of its warm pools.
    warm_pools: Vec<oz_core::wire::worker::WarmPoolState>,
}

/// A connected worker, as `GET /workers` lists it.
pub use oz_core::wire::worker::ConnectedWorker as WorkerInfo;

/// The dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    lifecycle: Lifecycle,
    config: Arc<ServerConfig>,
    public_url: Mutex<String>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    wake: Notify,
    /// When this process began: until a lease's length has passed since, a worker may not have had
    /// the time to reconnect, and the runs it holds are not given up for want of a connection.
    started: Instant,
}

impl Dispatcher {
    /// A dispatcher over the run lifecycle.
    pub fn new(lifecycle: Lifecycle, config: Arc<ServerConfig>) -> Self {
        Self {
            inner: Arc::new(Inner {
                lifecycle,
                config,
                public_url: Mutex::new(String::new()),
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                wake: Notify::new(),
                started: Instant::now(),
            }),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the URL sent to workers as `WARP_SERVER_ROOT_URL`.
    pub fn set_public_url(&self, url: &str) {
        *self.inner.public_url.lock().unwrap_or_else(|p| p.into_inner()) = url.to_owned();
    }

    /// Registers a connection opened with worker credential `key_id`; returns its id, the messages to
    /// send it, and what is notified when it must close.
    pub fn register(
        &self,
        team_id: &str,
        worker_id: &str,
        key_id: &str,
    ) -> (u64, mpsc::UnboundedReceiver<ServerMessage>, Arc<Notify>) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(Notify::new());
        self.conns().insert(
            id,
            Conn {
                team_id: team_id.to_owned(),
                worker_id: worker_id.to_owned(),
                key_id: key_id.to_owned(),
                closed: closed.clone(),
                tx,
                in_flight: HashSet::new(),
                skip_until: None,
                warm_pools: Vec::new(),
            },
        );
        let open = self.conns().len();
        self.inner.lifecycle.metrics().set_workers_connected(open);
        info!(worker_id, connection = id, "worker connected");
        self.wake();
        (id, rx, closed)
    }

    /// Closes the connections opened with credential `key_id` of `team_id` (revoked or rotated).
    pub fn disconnect_credential(&self, team_id: &str, key_id: &str) {
        for conn in self.conns().values().filter(|c| c.team_id == team_id && c.key_id == key_id) {
            conn.closed.notify_one();
        }
    }

    /// Forgets a connection; its PENDING runs go back to the queue. Runs it claimed keep their lease:
    /// the worker may reconnect and report them.
    pub async fn unregister(&self, conn_id: u64) {
        let Some(conn) = self.conns().remove(&conn_id) else { return };
        let open = self.conns().len();
        self.inner.lifecycle.metrics().set_workers_connected(open);
        info!(worker_id = %conn.worker_id, connection = conn_id, "worker disconnected");
        for run_id in conn.in_flight {
            let Ok(Some(run)) = self.inner.lifecycle.store().run_by_id(&run_id).await else { continue };
            if run.state == RunState::Pending {
                let message = format!("worker {} disconnected before claiming the run; queued again", conn.worker_id);
                if let Err(e) = self.inner.lifecycle.advance(&run_id, RunState::Queued, Some(message)).await {
                    warn!(run_id, "could not requeue: {}", e.detail);
                }
            }
        }
        self.wake();
    }

    /// News about a held run (its runner reported): its lease runs a full term again, whether or not
    /// the worker holding it is connected.
    pub async fn heard_from(&self, run_id: &str) -> Result<(), crate::error::ApiError> {
        Ok(self.inner.lifecycle.store().renew_lease(run_id, self.lease_deadline()).await?)
    }

    /// Wakes the dispatch loop (a run was queued, a worker freed up).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// How many connections a worker id has in a team.
    pub fn connections(&self, team_id: &str, worker_id: &str) -> usize {
        self.conns().values().filter(|c| c.team_id == team_id && c.worker_id == worker_id).count()
    }

    /// The team's environments whose warm sandboxes a connected worker could not prepare (its last
    /// preparation failed): their `setup_failed`.
    pub fn failing_environments(&self, team_id: &str) -> HashSet<String> {
        self.conns()
            .values()
            .filter(|c| c.team_id == team_id)
            .flat_map(|c| c.warm_pools.iter().filter(|p| p.last_error.is_some()).map(|p| p.environment.clone()))
            .collect()
    }

    /// The team's connected workers.
    pub fn workers(&self, team_id: &str) -> Vec<WorkerInfo> {
        let mut by_id: HashMap<String, WorkerInfo> = HashMap::new();
        for c in self.conns().values().filter(|c| c.team_id == team_id) {
            let w = by_id.entry(c.worker_id.clone()).or_insert_with(|| WorkerInfo {
                worker_id: c.worker_id.clone(),
                connections: 0,
                runs_in_flight: 0,
                warm_pools: Vec::new(),
            });
            w.connections += 1;
            w.runs_in_flight += c.in_flight.len();
            w.warm_pools.extend(c.warm_pools.iter().cloned());
        }
        let mut list: Vec<WorkerInfo> = by_id.into_values().collect();
        list.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        list
    }

    /// Sends `message` to every connection of the team's workers; how many.
    pub fn tell_team(&self, team_id: &str, message: &ServerMessage) -> usize {
        self.conns().values().filter(|c| c.team_id == team_id).filter(|c| c.tx.send(message.clone()).is_ok()).count()
    }

    /// Sends `task_cancellation` for a held run to its worker's connections.
    pub fn forward_cancel(&self, run: &RunRecord) {
        let Some(worker_id) = &run.claimed_by else { return };
        let message = ServerMessage::TaskCancellation(TaskCancellation { task_id: run.id.clone() });
        let conns = self.conns();
        let holders: Vec<&Conn> =
            conns.values().filter(|c| c.team_id == run.team_id && c.worker_id == *worker_id).collect();
        let preferred: Vec<&&Conn> = holders.iter().filter(|c| c.in_flight.contains(&run.id)).collect();
        let targets: Vec<&Conn> =
            if preferred.is_empty() { holders.clone() } else { preferred.into_iter().copied().collect() };
        for c in targets {
            let _ = c.tx.send(message.clone());
        }
    }

    /// Sends `task_cancellation` on connection `conn_id` for every run its worker holds whose
    /// cancel was asked for and not yet carried out.
    pub async fn forward_pending_cancels(&self, conn_id: u64) {
        let Some((team_id, worker_id, tx)) =
            self.conns().get(&conn_id).map(|c| (c.team_id.clone(), c.worker_id.clone(), c.tx.clone()))
        else {
            return;
        };
        let held = match self.inner.lifecycle.store().held_runs(&worker_id).await {
            Ok(held) => held,
            Err(e) => {
                warn!(worker_id, "could not look up the worker's runs: {e}");
                return;
            }
        };
        for run in held.into_iter().filter(|r| r.team_id == team_id && r.cancel_requested) {
            info!(run_id = %run.id, worker_id, "forwarding a cancel asked while the worker was away");
            let _ = tx.send(ServerMessage::TaskCancellation(TaskCancellation { task_id: run.id }));
        }
    }

    /// Handles a message from a connection.
    pub async fn on_message(&self, conn_id: u64, message: WorkerMessage) {
        let lifecycle = &self.inner.lifecycle;
        if let WorkerMessage::WarmPools(report) = &message {
            if let Some(c) = self.conns().get_mut(&conn_id) {
                c.warm_pools = report.pools.clone();
            }
            return;
        }
        let Some(task_id) = message.task_id().map(str::to_owned) else { return };
        let (team_id, worker_id) = {
            let conns = self.conns();
            let Some(c) = conns.get(&conn_id) else { return };
            (c.team_id.clone(), c.worker_id.clone())
        };
        // A worker may only speak about runs of its own team that it holds, and, when it names the
        // execution (ours does), about the run's current one: a run continued after its end runs
        // again under a new execution id, and the end of the execution before must not end it.
        let run = match lifecycle.store().run_by_id(&task_id).await {
            Ok(Some(run))
                if run.team_id == team_id
                    && run.claimed_by.as_deref() == Some(worker_id.as_str())
                    && message.execution_id().is_none_or(|e| run.execution_id.as_deref() == Some(e)) =>
            {
                run
            }
            Ok(_) => {
                warn!(
                    task_id,
                    worker_id, "a worker reported on a run (or an execution of it) it does not hold; ignored"
                );
                // An execution that is over still frees the connection's slot, so the run's next
                // execution may be offered (see `dispatch_once`).
                if !matches!(message, WorkerMessage::TaskClaimed(_)) {
                    self.track(conn_id, &task_id, false);
                    self.wake();
                }
                return;
            }
            Err(e) => {
                warn!(task_id, "store error: {e}");
                return;
            }
        };
        let result = match &message {
            WorkerMessage::TaskClaimed(_) => {
                self.track(conn_id, &task_id, true);
                let mut change = StateChange::new(RunState::Pending, RunState::Claimed)
                    .message(format!("claimed by worker {worker_id}"));
                change.lease_expires_at = Some(Some(self.lease_deadline()));
                if run.state == RunState::Pending { lifecycle.apply(&task_id, change).await.map(drop) } else { Ok(()) }
            }
            WorkerMessage::TaskRejected(m) => {
                self.track(conn_id, &task_id, false);
                if let Some(c) = self.conns().get_mut(&conn_id) {
                    c.skip_until = Some(Instant::now() + REJECT_BACKOFF);
                }
                let note = format!("worker {worker_id} rejected the run ({}); queued again", m.reason);
                match lifecycle.advance(&task_id, RunState::Queued, Some(note)).await {
                    // Too far along to run again (its agent had started): it ends, saying why.
                    Ok(None) => {
                        let note = format!("worker {worker_id} gave the run up after it had started: {}", m.reason);
                        lifecycle.advance(&task_id, RunState::Error, Some(note)).await.map(drop)
                    }
                    other => other.map(drop),
                }
            }
            WorkerMessage::TaskCompleted(m) => {
                self.track(conn_id, &task_id, false);
                // A cancel answered 200 is carried out even if the task got to finish first; the
                // lifecycle sees to that (`Lifecycle::apply`).
                let to =
                    if m.task_state == Some(RunState::Cancelled) { RunState::Cancelled } else { RunState::Succeeded };
                let text =
                    if m.message.is_empty() { format!("worker {worker_id} reported {to}") } else { m.message.clone() };
                lifecycle.advance(&task_id, to, Some(text)).await.map(drop)
            }
            WorkerMessage::WarmPools(_) => Ok(()),
            WorkerMessage::TaskFailed(m) => {
                self.track(conn_id, &task_id, false);
                let to = m.failure_reason.terminal_state();
                let text = failure_text(m);
                lifecycle.advance(&task_id, to, Some(text)).await.map(drop)
            }
        };
        if let Err(e) = result {
            warn!(task_id, "could not apply the worker's report: {}", e.detail);
        }
        self.wake();
    }

    fn track(&self, conn_id: u64, run_id: &str, holding: bool) {
        if let Some(c) = self.conns().get_mut(&conn_id) {
            if holding {
                c.in_flight.insert(run_id.to_owned());
            } else {
                c.in_flight.remove(run_id);
                c.skip_until = None;
            }
        }
    }

    fn lease_deadline(&self) -> Timestamp {
        deadline(self.inner.config.lease_timeout)
    }

    fn offer_deadline(&self) -> Timestamp {
        deadline(self.inner.config.offer_timeout)
    }

    /// The dispatch loop: runs until the process ends. It only dispatches, so nothing slow ever sits
    /// between a new run and its worker; upkeep has its own loop ([`Dispatcher::upkeep`]).
    pub async fn run(self) {
        loop {
            if let Err(e) = self.dispatch_once().await {
                warn!("dispatch failed: {}", e.detail);
            }
            let _ = tokio::time::timeout(TICK, self.inner.wake.notified()).await;
        }
    }

    /// The upkeep loop: renews the leases of runs held by connected workers, ends runs whose worker
    /// is gone, and lets the store do its housekeeping. Runs until the process ends.
    pub async fn upkeep(self) {
        loop {
            if let Err(e) = self.maintain_leases().await {
                warn!("lease upkeep failed: {}", e.detail);
            }
            if let Err(e) = self.drop_lapsed_credentials().await {
                warn!("credential upkeep failed: {e}");
            }
            if let Err(e) = self.inner.lifecycle.store().maintenance().await {
                warn!("store upkeep failed: {e}");
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Closes the connections whose worker credential no longer authenticates: revoked or rotated
    /// (also from `oz-server admin`, another process), expired, or its user disabled.
    async fn drop_lapsed_credentials(&self) -> Result<(), crate::store::StoreError> {
        let credentials: HashSet<(String, String)> =
            self.conns().values().map(|c| (c.team_id.clone(), c.key_id.clone())).collect();
        let now = jiff::Timestamp::now();
        for (team_id, key_id) in credentials {
            let found = self.inner.lifecycle.store().api_key(&key_id).await?;
            let why = match &found {
                Some(found) => crate::auth::lapsed(found, now),
                None => Some("the worker credential no longer exists"),
            };
            if let Some(why) = why {
                info!(key_id, "closing the worker connections of a credential: {why}");
                self.disconnect_credential(&team_id, &key_id);
            }
        }
        Ok(())
    }

    /// Offers queued runs to connected workers, once.
    pub async fn dispatch_once(&self) -> Result<(), crate::error::ApiError> {
        let keys: HashSet<(String, String)> =
            self.conns().values().map(|c| (c.team_id.clone(), c.worker_id.clone())).collect();
        // A queued run still in a connection's hands is a run continued after its end whose
        // execution before has not been reported over yet (its sandbox is being removed): it is
        // offered once that worker said so, so no worker gets an assignment for a task it still runs.
        let held: HashSet<String> = self.conns().values().flat_map(|c| c.in_flight.iter().cloned()).collect();
        for (team_id, worker_id) in keys {
            let queued = self.inner.lifecycle.store().queued_runs(&team_id, &worker_id, 64).await?;
            for run in queued.into_iter().filter(|r| !held.contains(&r.id)) {
                let environment = run.config.as_ref().and_then(|c| c.environment_id.as_deref());
                let Some((conn_id, tx)) = self.pick(&team_id, &worker_id, environment) else { break };
                self.offer(conn_id, tx, run).await?;
            }
        }
        Ok(())
    }

    /// The connection of `worker_id` to offer a run to: one with a ready warm sandbox for the run's
    /// `environment` first, then the least loaded.
    fn pick(
        &self,
        team_id: &str,
        worker_id: &str,
        environment: Option<&str>,
    ) -> Option<(u64, mpsc::UnboundedSender<ServerMessage>)> {
        let now = Instant::now();
        let warm =
            |c: &Conn| environment.is_some_and(|e| c.warm_pools.iter().any(|p| p.environment == e && p.ready > 0));
        self.conns()
            .iter()
            .filter(|(_, c)| c.team_id == team_id && c.worker_id == worker_id && c.skip_until.is_none_or(|t| t <= now))
            .min_by_key(|(id, c)| (!warm(c), c.in_flight.len(), **id))
            .map(|(id, c)| (*id, c.tx.clone()))
    }

    async fn offer(
        &self,
        conn_id: u64,
        tx: mpsc::UnboundedSender<ServerMessage>,
        run: RunRecord,
    ) -> Result<(), crate::error::ApiError> {
        let lifecycle = &self.inner.lifecycle;
        let execution_id = uuid::Uuid::new_v4().to_string();
        let public_url = self.inner.public_url.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let assignment = assignment::build(
            lifecycle.store().as_ref(),
            &run,
            &execution_id,
            &public_url,
            self.inner.config.token_ttl,
        )
        .await?;
        let worker_id = run.worker_host.clone().unwrap_or_default();
        let mut change =
            StateChange::new(RunState::Queued, RunState::Pending).message(format!("offered to worker {worker_id}"));
        change.claimed_by = Some(Some(worker_id));
        change.execution_id = Some(execution_id);
        change.lease_expires_at = Some(Some(self.offer_deadline()));
        match lifecycle.apply(&run.id, change).await {
            Ok(_) => {}
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => return Ok(()), // cancelled meanwhile
            Err(e) => return Err(e),
        }
        self.track(conn_id, &run.id, true);
        if tx.send(ServerMessage::TaskAssignment(Box::new(assignment))).is_err() {
            self.track(conn_id, &run.id, false);
            lifecycle
                .advance(&run.id, RunState::Queued, Some("the worker connection closed; queued again".into()))
                .await?;
        }
        Ok(())
    }

    async fn maintain_leases(&self) -> Result<(), crate::error::ApiError> {
        let store = self.inner.lifecycle.store();
        // Renew the leases of runs held by workers that are connected. An offer's lease is not
        // renewed: it is claimed within `offer_timeout` or goes back to the queue.
        let live: HashSet<String> = self.conns().values().flat_map(|c| c.in_flight.iter().cloned()).collect();
        let deadline = self.lease_deadline();
        for run_id in &live {
            store.renew_lease(run_id, deadline).await?;
        }
        let connected: HashSet<(String, String)> =
            self.conns().values().map(|c| (c.team_id.clone(), c.worker_id.clone())).collect();
        for run in store.expired_leases(Timestamp::now()).await? {
            let holder = (run.team_id.clone(), run.claimed_by.clone().unwrap_or_default());
            if run.state == RunState::Pending {
                if live.contains(&run.id) {
                    // The connection it went to is still open (a slow or frozen worker): offering it
                    // again would run it twice. The connection's read deadline decides.
                    continue;
                }
                // Never claimed: the offer died with a connection, a worker, or a server before this one.
                let message = format!(
                    "worker {} did not claim the run within {}s; queued again",
                    holder.1,
                    self.inner.config.offer_timeout.as_secs()
                );
                self.inner.lifecycle.advance(&run.id, RunState::Queued, Some(message)).await?;
                continue;
            }
            if connected.contains(&holder) {
                // The worker is back (a reconnect): keep waiting for its report.
                store.renew_lease(&run.id, deadline).await?;
                continue;
            }
            if self.inner.started.elapsed() < self.inner.config.lease_timeout {
                // This server restarted less than a lease ago: the worker has not had a lease's
                // time to find it again, so its silence says nothing yet.
                store.renew_lease(&run.id, deadline).await?;
                continue;
            }
            let message = if run.worker_host.is_none() {
                format!(
                    "its runner, which registered it from where it ran, stopped responding (nothing for {}s); the run did not finish",
                    self.inner.config.lease_timeout.as_secs()
                )
            } else {
                format!(
                    "worker {} stopped responding while holding the run (no connection for {}s); the run did not finish",
                    holder.1,
                    self.inner.config.lease_timeout.as_secs()
                )
            };
            self.inner.lifecycle.advance(&run.id, RunState::Error, Some(message)).await?;
        }
        Ok(())
    }
}

/// `now + timeout`, saturating.
fn deadline(timeout: Duration) -> Timestamp {
    let timeout = jiff::SignedDuration::try_from(timeout).unwrap_or(jiff::SignedDuration::from_secs(90));
    Timestamp::now().checked_add(timeout).unwrap_or(Timestamp::MAX)
}

/// The run's status text for a worker's `task_failed`: its message, then the reason and the exit code.
/// `exit_code` 0 is what the wire carries when no exit was observed (a failure never exits 0: the
/// task was stopped, never started, or its end was not seen), so it is left out rather than shown
/// as "exit code 0"; a code above 128 also names the signal it stands for.
fn failure_text(m: &oz_core::wire::worker::TaskFailed) -> String {
    match m.exit_code {
        0 => format!("{} ({})", m.message, m.failure_reason),
        code @ 129..=192 => format!("{} ({}, exit code {code}: signal {})", m.message, m.failure_reason, code - 128),
        code => format!("{} ({}, exit code {code})", m.message, m.failure_reason),
    }
}

#[cfg(test)]
mod tests {
    use oz_core::failure::FailureReason;
    use oz_core::wire::worker::TaskFailed;

    use super::failure_text;

    fn failed(reason: FailureReason, exit_code: i32) -> TaskFailed {
        TaskFailed {
            task_id: "t".into(),
            message: "it broke".into(),
            failure_reason: reason,
            exit_code,
            execution_id: None,
        }
    }

    #[test]
    fn failure_text_leaves_out_an_unobserved_exit_and_names_signals() {
        let unknown = failure_text(&failed(FailureReason::Unknown, 0));
        assert_eq!(unknown, "it broke (unknown)");
        let killed = failure_text(&failed(FailureReason::TaskCancelled, 143));
        assert_eq!(killed, "it broke (task_cancelled, exit code 143: signal 15)");
        assert_eq!(failure_text(&failed(FailureReason::ContainerExit, 3)), "it broke (container_exit, exit code 3)");
    }
}
