//! The control plane's Prometheus metrics, served at `/metrics` on a listener of their own
//! (`ServerConfig::metrics_listen`, off by default; never on the API port), unauthenticated: bind it
//! where only the scraper can reach it.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `oz_server_runs_created_total` | counter | `source` (`API`, `SCHEDULED_AGENT`, `WEBHOOK`, ...) |
//! | `oz_server_run_state_changes_total` | counter | `to` (the new state) |
//! | `oz_server_run_duration_seconds` | histogram | `state` (the terminal state), from creation to end |
//! | `oz_server_workers_connected` | gauge | |
//! | `oz_server_http_requests_total` | counter | `method`, `route` (the matched pattern), `status` |
//! | `oz_server_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `oz_server_trigger_postbacks_total` | counter | `provider` (`slack`, `linear`, `github`), `outcome` (`posted`, `retried`, `given_up`) |

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabel {
    to: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PostbackLabels {
    provider: String,
    outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn run_duration_histogram() -> Histogram {
    // 1 s to about 9 hours.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}
fn request_duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's metrics. Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct ServerMetrics {
    registry: Arc<Registry>,
    runs_created: Family<SourceLabel, Counter>,
    state_changes: Family<ToLabel, Counter>,
    run_duration: Histograms<StateLabel>,
    workers_connected: Gauge,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    postbacks: Family<PostbackLabels, Counter>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let runs_created = Family::<SourceLabel, Counter>::default();
        let state_changes = Family::<ToLabel, Counter>::default();
        let run_duration: Histograms<StateLabel> = Family::new_with_constructor(run_duration_histogram);
        let workers_connected = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: Histograms<RouteLabels> = Family::new_with_constructor(request_duration_histogram);
        registry.register("oz_server_runs_created", "Runs created, by source", runs_created.clone());
        let postbacks = Family::<PostbackLabels, Counter>::default();
        registry.register(
            "oz_server_trigger_postbacks",
            "Post-back steps to Slack, Linear and GitHub, by provider and outcome",
            postbacks.clone(),
        );
        registry.register("oz_server_run_state_changes", "Run state changes, by new state", state_changes.clone());
        registry.register(
            "oz_server_run_duration_seconds",
            "From creation to the terminal state, by that state",
            run_duration.clone(),
        );
        registry.register("oz_server_workers_connected", "Worker connections open now", workers_connected.clone());
        registry.register("oz_server_http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "oz_server_http_request_duration_seconds",
            "Time to answer (to the first byte, for streams)",
            request_duration.clone(),
        );
        Self {
            registry: Arc::new(registry),
            runs_created,
            state_changes,
            run_duration,
            workers_connected,
            requests,
            request_duration,
            postbacks,
        }
    }
}

impl ServerMetrics {
    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A post-back step to `provider` was `posted`, will be `retried`, or was `given_up`.
    pub fn postback(&self, provider: &str, outcome: &str) {
        self.postbacks
            .get_or_create(&PostbackLabels { provider: provider.to_owned(), outcome: outcome.to_owned() })
            .inc();
    }

    /// A run was created.
    pub fn run_created(&self, source: &str) {
        self.runs_created.get_or_create(&SourceLabel { source: source.to_owned() }).inc();
    }

    /// A run changed state; `age` is the time since it was created, observed when the state is terminal.
    pub fn state_changed(&self, to: oz_core::run::RunState, age: std::time::Duration) {
        self.state_changes.get_or_create(&ToLabel { to: to.as_str().to_owned() }).inc();
        if to.is_terminal() {
            self.run_duration.get_or_create(&StateLabel { state: to.as_str().to_owned() }).observe(age.as_secs_f64());
        }
    }

    /// The number of open worker connections.
    pub fn set_workers_connected(&self, n: usize) {
        self.workers_connected.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The metrics listener's routes: `GET /metrics` (OpenMetrics text), 404 for anything else.
/// [`crate::start`] serves it on `ServerConfig::metrics_listen`; embedders may serve it themselves.
pub fn router(metrics: ServerMetrics) -> axum::Router {
    axum::Router::new().route(
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
    )
}

/// Middleware counting requests by method, matched route and status.
pub async fn track_requests(
    axum::extract::State(metrics): axum::extract::State<ServerMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    // The pattern (`/api/v1/agent/runs/{id}`), never the raw path: ids would explode the label set.
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let began = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics.request_duration.get_or_create(&RouteLabels { method, route }).observe(began.elapsed().as_secs_f64());
    response
}
