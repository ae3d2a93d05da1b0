//! The state every handler shares.

use std::sync::Arc;

use crate::config::ServerConfig;
use crate::dispatch::Dispatcher;
use crate::hub::EventHub;
use crate::lifecycle::Lifecycle;
use crate::store::Store;

/// Shared state: the store, the live event hub, the dispatcher, the configuration.
#[derive(Clone)]
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Live run events.
    pub hub: EventHub,
    /// Live sessions: runs' terminals as their viewers see them.
    pub sessions: crate::session::SessionHub,
    /// State changes and events.
    pub lifecycle: Lifecycle,
    /// Worker connections and the queue.
    pub dispatcher: Dispatcher,
    /// Configuration.
    pub config: Arc<ServerConfig>,
    /// The URL workers and runners use.
    pub public_url: Arc<str>,
    /// What secrets are sealed with.
    pub keyring: Arc<crate::vault::Keyring>,
    /// How fast keys may make runs.
    pub run_limiter: Arc<crate::limits::RunLimiter>,
}
