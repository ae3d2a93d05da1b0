//! The control plane: the REST API (wire-compatible with the Oz Agent API), the worker WebSocket
//! endpoint and dispatcher, the runner's callbacks, live events, and persistence (SQLite embedded).
//!
//! ```no_run
//! use std::sync::Arc;
//! use oz_server::{ServerConfig, bootstrap_team, start, store::sqlite::SqliteStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(SqliteStore::open("oz.db".as_ref()).await?);
//! let (_team, api_key) = bootstrap_team(store.as_ref(), "acme").await?;
//! let config = ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() };
//! let server = start(config, store).await?;
//! println!("listening on {}, API key {api_key}", server.url());
//! # server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod config;
pub mod creation;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod extract;
pub mod git_credentials;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod principals;
pub mod scheduler;
pub mod secret_references;
pub mod secrets;
pub mod session;
pub mod sharing;
pub mod sign_in;
pub mod state;
pub mod store;
pub mod triggers;
pub mod vault;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
use tokio::sync::oneshot;

use crate::dispatch::Dispatcher;
use crate::hub::EventHub;
use crate::lifecycle::Lifecycle;
use crate::state::AppState;
use oz_core::wire::admin::{KeyKind, NewKey, NewTeam};

use crate::store::Store;

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    url: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// The address the metrics listener is bound to (`None` without `ServerConfig::metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }
    /// Its root URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.url.clone()
    }
    /// The shared state (tests, embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }
    /// Stops accepting connections and stops the dispatcher.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts the server on `config.listen` over `store`.
pub async fn start(config: ServerConfig, store: Arc<dyn Store>) -> Result<RunningServer, ServerError> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen.clone(), source })?;
    let url = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let keyring = match &config.secret_keys {
        Some(keys) => keys.clone(),
        None => {
            tracing::warn!("no secret keys configured: secrets sealed now will not open after a restart");
            vault::Keyring::generate("ephemeral").map_err(|e| ServerError::Config(e.to_string()))?
        }
    };
    let resealed = vault::upkeep(store.as_ref(), &keyring)
        .await
        .map_err(|e| ServerError::Config(format!("sealing secrets: {e}")))?;
    if resealed > 0 {
        tracing::info!(resealed, key = keyring.current_id(), "sealed stored secrets with the current key");
    }
    let config = Arc::new(config);
    let hub = EventHub::default();
    let lifecycle = Lifecycle::new(store.clone(), hub.clone());
    let dispatcher = Dispatcher::new(lifecycle.clone(), config.clone());
    dispatcher.set_public_url(&url);
    let run_limiter = Arc::new(limits::RunLimiter::new(config.run_limits.clone()));
    let sessions = session::SessionHub::new(store.clone(), hub.clone());
    let state = AppState {
        store,
        hub,
        sessions,
        lifecycle,
        dispatcher: dispatcher.clone(),
        config,
        public_url: url.clone().into(),
        keyring: Arc::new(keyring),
        run_limiter,
    };
    let mut tasks = Vec::new();
    let mut metrics_addr = None;
    if let Some(listen) = &state.config.metrics_listen {
        let (bound, task) = serve_metrics(&state, listen).await?;
        tracing::info!(addr = %bound, "metrics listening");
        metrics_addr = Some(bound);
        tasks.push(task);
    }
    let app = api::router(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let connections = state.config.connections.clone();
    let http = tokio::spawn(http::serve(listener, app, connections, async {
        let _ = stopped.await;
    }));
    let dispatch = tokio::spawn(dispatcher.clone().run());
    let upkeep = tokio::spawn(dispatcher.upkeep());
    let limiter = state.run_limiter.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            limiter.forget_idle();
        }
    }));
    let schedules = tokio::spawn(scheduler::run(state.clone()));
    let postbacks = triggers::postback::spawn(state.clone());
    tracing::info!(%url, "control plane listening");
    tasks.extend([http, dispatch, upkeep, schedules, postbacks]);
    Ok(RunningServer { addr, metrics_addr, url, state, stop: Some(stop), tasks })
}

/// The metrics routes over `state`'s metrics (for serving them somewhere of one's own).
pub fn metrics_router(state: &AppState) -> axum::Router {
    metrics::router(state.lifecycle.metrics().clone())
}

/// Binds `listen` and serves [`metrics_router`] on it until the returned task is aborted. Binds before
/// returning, so a bad or busy address is an error here, not a log line later.
pub async fn serve_metrics(
    state: &AppState,
    listen: &str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let bind_error = |source| ServerError::Bind { addr: listen.to_owned(), source };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let app = metrics_router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    });
    Ok((addr, task))
}

/// Creates a team with an admin user and an API key for it (a server admin's, which may also create
/// teams); returns the team id and the key (shown once).
pub async fn bootstrap_team(store: &dyn Store, name: &str) -> Result<(String, String), ServerError> {
    let created = principals::create_team(store, &NewTeam { name: name.to_owned() }, true).await?;
    Ok((created.team_id, created.key.key))
}

/// Issues a worker credential of `team_id` bound to `worker_ids`; returns the key (shown once).
pub async fn mint_worker_credential(
    store: &dyn Store,
    team_id: &str,
    name: &str,
    worker_ids: &[&str],
) -> Result<String, ServerError> {
    let new = NewKey {
        name: name.to_owned(),
        kind: KeyKind::Worker,
        worker_ids: worker_ids.iter().map(|w| (*w).to_owned()).collect(),
        ..Default::default()
    };
    Ok(principals::create_key(store, team_id, None, &new).await?.key)
}
