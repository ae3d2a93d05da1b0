//! The runner's link to the control plane, behind a small trait so the runner is testable without a
//! server, and runs unmanaged when there is none.

use async_trait::async_trait;
use oz_core::environment::EnvironmentConfig;
use oz_core::wire::api::{EnvironmentList, RunItem};
use oz_core::wire::callbacks::{RunnerReport, report_path};
use secrecy::{ExposeSecret, SecretString};

/// What can go wrong talking to the control plane. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The server answered with an error status.
    #[error("the control plane answered {status} to {what}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// What was asked.
        what: String,
        /// The problem's detail, or the body.
        detail: String,
    },
    /// The request did not get an answer.
    #[error("could not reach the control plane for {what}: {message}")]
    Transport {
        /// What was asked.
        what: String,
        /// Why.
        message: String,
    },
    /// Nothing with that id.
    #[error("{0}")]
    NotFound(String),
}

/// What the runner needs from the control plane.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Records one event of the run (progress, output, artifacts, the end).
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError>;
    /// The environment with this id.
    async fn environment(&self, id: &str) -> Result<EnvironmentConfig, ControlError>;
    /// The run's prompt, if the control plane has one.
    async fn prompt(&self) -> Result<Option<String>, ControlError>;
    /// Whether reports go anywhere.
    fn is_connected(&self) -> bool {
        true
    }
}

/// No control plane: an unmanaged run. Reports go nowhere; environments must come from a file.
#[derive(Debug, Default)]
pub struct Detached;

#[async_trait]
impl ControlPlane for Detached {
    async fn report(&self, _report: &RunnerReport) -> Result<(), ControlError> {
        Ok(())
    }
    async fn environment(&self, id: &str) -> Result<EnvironmentConfig, ControlError> {
        Err(ControlError::NotFound(format!(
            "environment {id:?} cannot be fetched without a control plane: pass --server-root-url with OZ_WORKLOAD_TOKEN, or --environment-file"
        )))
    }
    async fn prompt(&self) -> Result<Option<String>, ControlError> {
        Ok(None)
    }
    fn is_connected(&self) -> bool {
        false
    }
}

/// The control plane over HTTP, authenticated with the run's workload token.
pub struct HttpControlPlane {
    client: reqwest::Client,
    api: String,
    run_id: String,
    token: SecretString,
}

impl std::fmt::Debug for HttpControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpControlPlane")
            .field("api", &self.api)
            .field("run_id", &self.run_id)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl HttpControlPlane {
    /// A client for `server_root_url` (the API is under `/api/v1`).
    pub fn new(server_root_url: &str, run_id: &str, token: SecretString) -> Result<Self, ControlError> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("oz-agent-runner/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ControlError::Transport { what: "client setup".into(), message: e.to_string() })?;
        Ok(Self {
            client,
            api: format!("{}/api/v1", server_root_url.trim_end_matches('/')),
            run_id: run_id.to_owned(),
            token,
        })
    }

    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ControlError> {
        let mut delay = std::time::Duration::from_millis(200);
        let mut attempt = 0;
        // Reads are safe to repeat whatever failed, and the run cannot start without them: they ride
        // out a longer outage (about 12 s) than reports, which are retried only when nothing was sent.
        let read = request.try_clone().and_then(|r| r.build().ok()).is_some_and(|r| r.method() == reqwest::Method::GET);
        let attempts = if read { 8 } else { 4 };
        loop {
            attempt += 1;
            let result = request
                .try_clone()
                .ok_or_else(|| ControlError::Transport {
                    what: what.into(),
                    message: "the request cannot be retried".into(),
                })?
                .bearer_auth(self.token.expose_secret())
                .send()
                .await;
            let retryable = match &result {
                Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
                Err(e) => e.is_connect() || e.is_timeout() || read,
            };
            if !retryable || attempt >= attempts {
                return match result {
                    Ok(r) if r.status().is_success() => Ok(r),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        let detail = serde_json::from_str::<oz_core::wire::problem::Problem>(&body)
                            .map(|p| p.detail)
                            .unwrap_or(body);
                        Err(ControlError::Status {
                            status,
                            what: what.into(),
                            detail: detail.chars().take(500).collect(),
                        })
                    }
                    Err(e) => Err(ControlError::Transport { what: what.into(), message: e.without_url().to_string() }),
                };
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(3));
        }
    }
}

#[async_trait]
impl ControlPlane for HttpControlPlane {
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError> {
        let url = format!("{}{}", self.api, report_path(&self.run_id));
        self.send("a progress report", self.client.post(url).json(report)).await.map(drop)
    }

    async fn environment(&self, id: &str) -> Result<EnvironmentConfig, ControlError> {
        let url = format!("{}/agent/environments", self.api);
        let response = self.send("the environment list", self.client.get(url)).await?;
        let list: EnvironmentList = response
            .json()
            .await
            .map_err(|e| ControlError::Transport { what: "the environment list".into(), message: e.to_string() })?;
        list.environments
            .into_iter()
            .find(|e| e.uid == id)
            .map(|e| e.config)
            .ok_or_else(|| ControlError::NotFound(format!("the control plane has no environment {id:?} for this run")))
    }

    async fn prompt(&self) -> Result<Option<String>, ControlError> {
        let url = format!("{}/agent/runs/{}", self.api, self.run_id);
        let response = self.send("the run", self.client.get(url)).await?;
        let run: RunItem = response
            .json()
            .await
            .map_err(|e| ControlError::Transport { what: "the run".into(), message: e.to_string() })?;
        Ok(Some(run.prompt).filter(|p| !p.is_empty()))
    }
}
