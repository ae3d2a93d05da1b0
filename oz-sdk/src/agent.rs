//! [`AgentClient`]: the API as the in-sandbox runner sees it, authenticated with one run's workload
//! token instead of an API key.

use std::time::Duration;

use oz_core::environment::EnvironmentConfig;
use oz_core::failure::ErrorCode;
use oz_core::retry::RetryPolicy;
use oz_core::wire::api::{EnvironmentList, RunItem, Steering};
use oz_core::wire::callbacks::{
    MAX_CONVERSATION_BYTES, ResolvedRun, RunnerEvent, RunnerReport, conversation_path, report_path, resolved_path,
};
use oz_core::wire::problem::Problem;
use reqwest::Method;
use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::http::{Http, HttpSettings, RetryRule, decode, seg};

/// A client for one run, authenticated with its workload token. Reads (the environment, the
/// prompt) are retried on any transport error, 429 and 5xx; a report only when it cannot have
/// arrived (a connect error) or was refused (429, 5xx), so a retry never records it twice.
///
/// ```no_run
/// # async fn demo() -> oz_sdk::Result<()> {
/// use secrecy::SecretString;
/// let agent = oz_sdk::AgentClient::new("http://127.0.0.1:8080", "run-1", SecretString::from("oz_wl_..."))?;
/// let prompt = agent.prompt().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AgentClient {
    http: Http,
    run_id: String,
    reads: RetryPolicy,
    reports: RetryPolicy,
}

/// Configures an [`AgentClient`].
#[derive(Debug)]
pub struct AgentClientBuilder {
    server_root_url: String,
    run_id: String,
    token: SecretString,
    settings: HttpSettings,
    reads: RetryPolicy,
    reports: RetryPolicy,
}

impl AgentClientBuilder {
    /// The `User-Agent`.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.settings.user_agent = agent.into();
        self
    }
    /// The retries of reads (default [`AgentClient::READ_RETRIES`]).
    pub fn read_retries(mut self, policy: RetryPolicy) -> Self {
        self.reads = policy;
        self
    }
    /// The retries of reports (default [`AgentClient::REPORT_RETRIES`]).
    pub fn report_retries(mut self, policy: RetryPolicy) -> Self {
        self.reports = policy;
        self
    }
    /// Builds the client.
    pub fn build(self) -> Result<AgentClient> {
        Ok(AgentClient {
            http: Http::new(&self.server_root_url, self.token, &self.settings)?,
            run_id: self.run_id,
            reads: self.reads,
            reports: self.reports,
        })
    }
}

impl AgentClient {
    /// The default for reads: 8 attempts over about 12 s, so a run rides out a control plane's
    /// restart (it cannot start without its environment and prompt).
    pub const READ_RETRIES: RetryPolicy = RetryPolicy::bounded(Duration::from_millis(200), Duration::from_secs(3), 7);

    /// The default for reports: 4 attempts over about 1.4 s, so a run does not stall on a control
    /// plane that is away.
    pub const REPORT_RETRIES: RetryPolicy = RetryPolicy::bounded(Duration::from_millis(200), Duration::from_secs(3), 3);

    /// Follow-ups and interrupts sent to this run after its event `after_seq` (0: from the first
    /// ever sent, also follow-ups sent before the runner started), each with its event number, while
    /// the run goes on: the run's event stream (`GET /agent/runs/{id}/events?event=followup,interrupt`,
    /// with the workload token). It ends when the run does.
    pub fn steering(&self, after_seq: i64) -> impl futures::Stream<Item = Result<(i64, Steering)>> + Send + 'static {
        use futures::StreamExt;
        let only = Some(Steering::KINDS);
        crate::runs::events_stream(self.http.clone(), self.run_id.clone(), after_seq, only).filter_map(
            |event| async move {
                match event {
                    Ok(event) => event.steering().map(|f| Ok((event.seq, f))),
                    Err(e) => Some(Err(e)),
                }
            },
        )
    }

    /// A builder for run `run_id` on the control plane at `server_root_url` (`http://host:8080`; the
    /// API is under `/api/v1`).
    pub fn builder(
        server_root_url: impl Into<String>,
        run_id: impl Into<String>,
        token: SecretString,
    ) -> AgentClientBuilder {
        AgentClientBuilder {
            server_root_url: server_root_url.into(),
            run_id: run_id.into(),
            token,
            settings: HttpSettings::default(),
            reads: Self::READ_RETRIES,
            reports: Self::REPORT_RETRIES,
        }
    }

    /// A client with the defaults.
    pub fn new(server_root_url: &str, run_id: &str, token: SecretString) -> Result<Self> {
        Self::builder(server_root_url, run_id, token).build()
    }

    /// The run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        self.http.base()
    }

    /// Records one event of the run: `POST /agent/runs/{id}/report`.
    pub async fn report(&self, report: &RunnerReport) -> Result<()> {
        let path = report_path(&seg(&self.run_id));
        self.http.execute(Method::POST, &path, |r| r.json(report), RetryRule::unless_sent(self.reports)).await.map(drop)
    }

    /// Says the runner is alive (a runner that registered its own run has no worker to renew the
    /// run's lease): a `heartbeat` report, not stored.
    pub async fn heartbeat(&self) -> Result<()> {
        let report = RunnerReport { at: jiff::Timestamp::now(), seq: None, event: RunnerEvent::Heartbeat };
        self.report(&report).await
    }

    /// The environment `id`, from the ones the run may see (`GET /agent/environments`). One that is
    /// not there is an [`Error::Api`] with status 404 naming it.
    pub async fn environment(&self, id: &str) -> Result<EnvironmentConfig> {
        let list: EnvironmentList = self.read("/agent/environments").await?;
        list.environments.into_iter().find(|e| e.uid == id).map(|e| e.config).ok_or_else(|| {
            let detail = format!("the control plane has no environment {id:?} for this run");
            Error::Api(Box::new(Problem::new(404, ErrorCode::ResourceNotFound, detail)))
        })
    }

    /// What the runner needs to start (`GET /agent/runs/{id}/resolved`): the prompt, the environment,
    /// the secrets the run references and its git credentials. The control plane answers it until
    /// the runner reports that the harness started.
    pub async fn resolved(&self) -> Result<ResolvedRun> {
        self.read(&resolved_path(&seg(&self.run_id))).await
    }

    /// What an execution before kept of the run's conversation (`GET /agent/runs/{id}/conversation`),
    /// for a run continued after its end; `None` when none was kept. Bounded by
    /// [`MAX_CONVERSATION_BYTES`] (a larger answer is an error, not read whole).
    pub async fn conversation(&self) -> Result<Option<Vec<u8>>> {
        let path = conversation_path(&seg(&self.run_id));
        let resp = match self.http.execute(Method::GET, &path, |r| r, RetryRule::idempotent(self.reads)).await {
            Ok(resp) => resp,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::Transport(e.without_url()))? {
            if body.len() + chunk.len() > MAX_CONVERSATION_BYTES {
                let detail = format!("the run's conversation is larger than {MAX_CONVERSATION_BYTES} bytes");
                return Err(Error::Api(Box::new(Problem::new(413, ErrorCode::InvalidRequest, detail))));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// Keeps what the agent kept of its conversation for the run's next execution
    /// (`PUT /agent/runs/{id}/conversation`, an archive of at most [`MAX_CONVERSATION_BYTES`]),
    /// replacing the one before; before the run's end.
    pub async fn save_conversation(&self, archive: Vec<u8>) -> Result<()> {
        let path = conversation_path(&seg(&self.run_id));
        let body = bytes::Bytes::from(archive);
        self.http
            .execute(
                Method::PUT,
                &path,
                |r| r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(body.clone()),
                RetryRule::idempotent(self.reports),
            )
            .await
            .map(drop)
    }

    /// The run's prompt (`GET /agent/runs/{id}`); an empty one is `None`.
    pub async fn prompt(&self) -> Result<Option<String>> {
        let run: RunItem = self.read(&format!("/agent/runs/{}", seg(&self.run_id))).await?;
        Ok(Some(run.prompt).filter(|p| !p.is_empty()))
    }

    async fn read<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        decode(self.http.execute(Method::GET, path, |r| r, RetryRule::idempotent(self.reads)).await?).await
    }
}
