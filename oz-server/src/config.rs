//! The server's configuration.

use std::time::Duration;

/// How the control plane behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where it listens (`127.0.0.1:8080`; port 0 picks a free one).
    pub listen: String,
    /// The URL workers and runners reach the server at (sent as `WARP_SERVER_ROOT_URL`); defaults to
    /// `http://<listen address>`.
    pub public_url: Option<String>,
    /// The worker a run goes to when it names none (`config.worker_host` absent). `None`: such runs
    /// are refused, since this server has no hosted execution.
    pub default_worker_host: Option<String>,
    /// How long a worker may hold a run without news before the run ends ERROR.
    pub lease_timeout: Duration,
    /// How long an offer may go unclaimed before the run goes back to the queue (to be offered
    /// again): an offer lost with a connection or with a server that died is not waited on forever.
    pub offer_timeout: Duration,
    /// How long a run's workload token lives (it is revoked earlier, when the run ends).
    pub token_ttl: Duration,
    /// How long after its first answer a run's token may fetch the run's resolved configuration
    /// again (the runner's retries of a lost answer; the runner asks once, before cloning). It stops
    /// earlier, when the runner reports that the harness started.
    pub resolution_window: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The header-read deadline and the cap on open connections.
    pub connections: crate::http::ConnectionLimits,
    /// How fast a key may make runs, and how many unfinished runs a team may have.
    pub run_limits: crate::limits::RunLimits,
    /// Where to serve Prometheus metrics at `/metrics`, unauthenticated, on a listener of their own
    /// (`127.0.0.1:9464`; port 0 picks a free one). `None` (the default): no metrics listener. The API
    /// port never serves them, so exposing the API does not expose them.
    pub metrics_listen: Option<String>,
    /// How often an open stream (a run's event stream, a session's WebSocket) checks that its
    /// caller may still read: a revoked key, a disabled user, an ended sign-in or a revoked workload
    /// token ends it within this long, not only at its next request.
    pub credential_recheck: Duration,
    /// The keys secrets are sealed with (`crate::vault`). `None`: a key made for this process only,
    /// so what it seals cannot be opened after a restart (tests, throwaway servers).
    pub secret_keys: Option<crate::vault::Keyring>,
    /// API roots other than the providers' own that integrations may name (`api_base_url`), as URL
    /// prefixes (`https://github.example.com/api/v3`, `http://127.0.0.1:` for any loopback port).
    /// An operator's choice, not a team's: an integration sends its credentials there.
    pub provider_api_urls: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            default_worker_host: None,
            lease_timeout: Duration::from_secs(90),
            offer_timeout: Duration::from_secs(15),
            token_ttl: Duration::from_secs(24 * 3600),
            resolution_window: Duration::from_secs(60),
            max_body_bytes: 2 * 1024 * 1024,
            run_limits: crate::limits::RunLimits::default(),
            connections: crate::http::ConnectionLimits::default(),
            metrics_listen: None,
            credential_recheck: Duration::from_secs(30),
            secret_keys: None,
            provider_api_urls: Vec::new(),
        }
    }
}
