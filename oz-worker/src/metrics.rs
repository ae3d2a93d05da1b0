//! The worker's Prometheus metrics, and the optional HTTP listener that serves them at `/metrics`.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `oz_worker_connected` | gauge (0/1) | |
//! | `oz_worker_tasks_active` | gauge | |
//! | `oz_worker_tasks_claimed_total` | counter | |
//! | `oz_worker_tasks_rejected_total` | counter | `reason` (`capacity`, `shutting_down`) |
//! | `oz_worker_tasks_completed_total` | counter | `result` (`succeeded`, `failed`, `error`, `cancelled`) |
//! | `oz_worker_task_duration_seconds` | histogram | `result` |
//! | `oz_worker_task_failures_total` | counter | `phase` (`launch`, `run`), `reason` (Oz's failure reason) |
//! | `oz_worker_reconnects_total` | counter | |
//! | `oz_worker_warm_ready` | gauge | `environment`: warm sandboxes waiting for a task |
//! | `oz_worker_warm_warming` | gauge | `environment`: warm sandboxes being prepared |
//! | `oz_worker_warm_memory_bytes` | gauge | `environment`: memory the ready warm sandboxes used once ready, together |
//! | `oz_worker_warm_hits_total` | counter | `environment`: tasks handed a warm sandbox |
//! | `oz_worker_warm_misses_total` | counter | `environment`: tasks of a pooled environment started cold |
//! | `oz_worker_warm_failures_total` | counter | `environment`: preparations that failed |
//! | `oz_worker_warm_ready_seconds` | histogram | `environment`: from the start of a preparation to ready |
//! | `oz_worker_warm_handoff_seconds` | histogram | `environment`: from the assignment to the task taken by the warm runner |

use std::sync::Arc;
use std::time::Duration;

use oz_core::backend::TaskOutcome;
use oz_core::failure::FailureReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabel {
    environment: String,
}

type WarmHistogram = Family<EnvironmentLabel, Histogram, fn() -> Histogram>;

fn handoff_histogram() -> Histogram {
    // 0.5 ms to about 30 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    phase: String,
    reason: String,
}

type HistogramFamily = Family<ResultLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.1 s to about 55 minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

/// The worker's metrics. Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    connected: Gauge,
    active: Gauge,
    claimed: Counter,
    rejected: Family<ReasonLabel, Counter>,
    completed: Family<ResultLabel, Counter>,
    duration: HistogramFamily,
    failures: Family<FailureLabels, Counter>,
    reconnects: Counter,
    warm_ready: Family<EnvironmentLabel, Gauge>,
    warm_warming: Family<EnvironmentLabel, Gauge>,
    warm_memory_bytes: Family<EnvironmentLabel, Gauge>,
    warm_hits: Family<EnvironmentLabel, Counter>,
    warm_misses: Family<EnvironmentLabel, Counter>,
    warm_failures: Family<EnvironmentLabel, Counter>,
    warm_ready_seconds: WarmHistogram,
    warm_handoff_seconds: WarmHistogram,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an assignment was refused, as the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_concurrent_tasks` reached.
    Capacity,
    /// The worker is draining.
    ShuttingDown,
}

impl WorkerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connected = Gauge::default();
        let active = Gauge::default();
        let claimed = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let completed = Family::<ResultLabel, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let failures = Family::<FailureLabels, Counter>::default();
        let reconnects = Counter::default();
        registry.register("oz_worker_connected", "1 while connected to the control plane", connected.clone());
        registry.register("oz_worker_tasks_active", "Tasks running on this worker", active.clone());
        registry.register("oz_worker_tasks_claimed", "Assignments claimed", claimed.clone());
        registry.register("oz_worker_tasks_rejected", "Assignments refused, by reason", rejected.clone());
        registry.register("oz_worker_tasks_completed", "Tasks ended, by result", completed.clone());
        registry.register("oz_worker_task_duration_seconds", "From claim to outcome, by result", duration.clone());
        registry.register("oz_worker_task_failures", "Failed tasks, by phase and Oz failure reason", failures.clone());
        registry.register("oz_worker_reconnects", "Connections re-established after a drop", reconnects.clone());
        let warm_ready = Family::<EnvironmentLabel, Gauge>::default();
        let warm_warming = Family::<EnvironmentLabel, Gauge>::default();
        let warm_memory_bytes = Family::<EnvironmentLabel, Gauge>::default();
        let warm_hits = Family::<EnvironmentLabel, Counter>::default();
        let warm_misses = Family::<EnvironmentLabel, Counter>::default();
        let warm_failures = Family::<EnvironmentLabel, Counter>::default();
        let warm_ready_seconds: WarmHistogram = Family::new_with_constructor(duration_histogram);
        let warm_handoff_seconds: WarmHistogram = Family::new_with_constructor(handoff_histogram);
        registry.register("oz_worker_warm_ready", "Warm sandboxes waiting for a task", warm_ready.clone());
        registry.register("oz_worker_warm_warming", "Warm sandboxes being prepared", warm_warming.clone());
        registry.register(
            "oz_worker_warm_memory_bytes",
            "Memory the ready warm sandboxes used once ready, together",
            warm_memory_bytes.clone(),
        );
        registry.register("oz_worker_warm_hits", "Tasks handed a warm sandbox", warm_hits.clone());
        registry.register("oz_worker_warm_misses", "Tasks of a pooled environment started cold", warm_misses.clone());
        registry.register("oz_worker_warm_failures", "Warm preparations that failed", warm_failures.clone());
        registry.register(
            "oz_worker_warm_ready_seconds",
            "From a preparation's start to ready",
            warm_ready_seconds.clone(),
        );
        registry.register(
            "oz_worker_warm_handoff_seconds",
            "From the assignment to the task taken by the warm runner",
            warm_handoff_seconds.clone(),
        );
        Self {
            warm_ready,
            warm_warming,
            warm_memory_bytes,
            warm_hits,
            warm_misses,
            warm_failures,
            warm_ready_seconds,
            warm_handoff_seconds,
            registry: Arc::new(registry),
            connected,
            active,
            claimed,
            rejected,
            completed,
            duration,
            failures,
            reconnects,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub(crate) fn set_warm(&self, environment: &str, ready: usize, warming: usize, memory: Option<u64>) {
        let label = EnvironmentLabel { environment: environment.to_owned() };
        self.warm_memory_bytes.get_or_create(&label).set(i64::try_from(memory.unwrap_or(0)).unwrap_or(i64::MAX));
        self.warm_ready.get_or_create(&label).set(i64::try_from(ready).unwrap_or(i64::MAX));
        self.warm_warming.get_or_create(&label).set(i64::try_from(warming).unwrap_or(i64::MAX));
    }
    pub(crate) fn warm_hit(&self, environment: &str, handoff: Duration) {
        let label = EnvironmentLabel { environment: environment.to_owned() };
        self.warm_hits.get_or_create(&label).inc();
        self.warm_handoff_seconds.get_or_create(&label).observe(handoff.as_secs_f64());
    }
    pub(crate) fn warm_miss(&self, environment: &str) {
        self.warm_misses.get_or_create(&EnvironmentLabel { environment: environment.to_owned() }).inc();
    }
    pub(crate) fn warm_prepared(&self, environment: &str, took: Option<Duration>) {
        let label = EnvironmentLabel { environment: environment.to_owned() };
        match took {
            Some(took) => self.warm_ready_seconds.get_or_create(&label).observe(took.as_secs_f64()),
            None => {
                self.warm_failures.get_or_create(&label).inc();
            }
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }
    pub(crate) fn set_active(&self, active: usize) {
        self.active.set(i64::try_from(active).unwrap_or(i64::MAX));
    }
    pub(crate) fn claimed(&self) {
        self.claimed.inc();
    }
    pub(crate) fn rejected(&self, reason: RejectReason) {
        let reason = match reason {
            RejectReason::Capacity => "capacity",
            RejectReason::ShuttingDown => "shutting_down",
        };
        self.rejected.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// A task that never started: the backend refused to launch it.
    pub(crate) fn launch_failed(&self, reason: FailureReason, elapsed: Duration) {
        self.ended("failed_launch", reason.terminal_state(), Some(reason), elapsed);
    }

    /// A task that ran and ended.
    pub(crate) fn finished(&self, outcome: &TaskOutcome, elapsed: Duration) {
        self.ended("run", outcome.run_state(), outcome.reason(), elapsed);
    }

    fn ended(&self, phase: &str, state: oz_core::run::RunState, reason: Option<FailureReason>, elapsed: Duration) {
        let result = ResultLabel { result: state.as_str().to_ascii_lowercase() };
        self.completed.get_or_create(&result).inc();
        self.duration.get_or_create(&result).observe(elapsed.as_secs_f64());
        if let Some(reason) = reason.filter(|r| *r != FailureReason::TaskCancelled) {
            let phase = if phase == "failed_launch" { "launch" } else { "run" };
            self.failures.get_or_create(&FailureLabels { phase: phase.into(), reason: reason.as_str().into() }).inc();
        }
    }
}

/// Serves `/metrics` on `listen` until the returned task is aborted. Binds before returning, so a
/// bad address is an error here, not later.
pub async fn serve(
    metrics: WorkerMetrics,
    listen: &str,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.render(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics listener stopped: {e}");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = WorkerMetrics::new();
        m.claimed();
        m.rejected(RejectReason::Capacity);
        m.launch_failed(FailureReason::InvalidImage, Duration::from_millis(10));
        let text = m.render();
        assert!(text.contains("oz_worker_tasks_claimed_total 1"), "{text}");
        assert!(text.contains("oz_worker_tasks_rejected_total{reason=\"capacity\"} 1"), "{text}");
        assert!(text.contains("oz_worker_task_failures_total{phase=\"launch\",reason=\"invalid_image\"} 1"), "{text}");
        assert!(text.contains("oz_worker_tasks_completed_total{result=\"failed\"} 1"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
