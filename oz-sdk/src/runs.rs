//! Runs: create, list (a page, or a stream following cursors), get, cancel, and live events.

use std::time::Duration;

use futures::{Stream, StreamExt};
use oz_core::run::RunState;
use oz_core::runner::HarnessKind;
use oz_core::wire::api::{AgentConfig, RunAgentRequest, RunCreated, RunItem, RunList, RunStreamEvent};
use oz_core::wire::worker::HarnessConfig;
use reqwest::Method;

use crate::client::{Client, seg};
use crate::error::{Error, Result};
use crate::sse::SseParser;

/// `client.runs()`.
#[derive(Debug, Clone)]
pub struct RunsHandler {
    client: Client,
}

impl Client {
    /// Runs.
    pub fn runs(&self) -> RunsHandler {
        RunsHandler { client: self.clone() }
    }
}

impl RunsHandler {
    /// Starts a run: `.create("fix the flaky test").worker_host("my-worker").send().await`.
    pub fn create(&self, prompt: impl Into<String>) -> CreateRun {
        CreateRun {
            client: self.client.clone(),
            request: RunAgentRequest { prompt: Some(prompt.into()), ..Default::default() },
        }
    }

    /// Lists runs: `.list().state(RunState::Queued).limit(50).send().await` for a page, or
    /// `.stream()` for every match, following cursors.
    pub fn list(&self) -> ListRuns {
        ListRuns { client: self.client.clone(), params: Vec::new() }
    }

    /// One run.
    pub async fn get(&self, run_id: &str) -> Result<RunItem> {
        self.client.call(Method::GET, &format!("/agent/runs/{}", seg(run_id))).await
    }

    /// Cancels a run; returns its id. A run being handed to a worker answers 409 (retryable).
    pub async fn cancel(&self, run_id: &str) -> Result<String> {
        self.client
            .call_json(Method::POST, &format!("/agent/runs/{}/cancel", seg(run_id)), &serde_json::json!({}))
            .await
    }

    /// The stored transcript (every event so far).
    pub async fn transcript(&self, run_id: &str) -> Result<Vec<serde_json::Value>> {
        self.client.call(Method::GET, &format!("/agent/runs/{}/transcript/content", seg(run_id))).await
    }

    /// The run's events, live, as a stream that ends after the run's terminal state. A dropped
    /// connection is resumed from the last event received (`Last-Event-ID`).
    pub fn events(&self, run_id: &str) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
        events_stream(self.client.clone(), run_id.to_owned(), 0)
    }

    /// Like [`RunsHandler::events`], starting after event `after_seq`.
    pub fn events_after(
        &self,
        run_id: &str,
        after_seq: i64,
    ) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
        events_stream(self.client.clone(), run_id.to_owned(), after_seq)
    }
}

/// The builder of `POST /agent/runs`.
#[derive(Debug, Clone)]
pub struct CreateRun {
    client: Client,
    request: RunAgentRequest,
}

impl CreateRun {
    fn config(&mut self) -> &mut AgentConfig {
        self.request.config.get_or_insert_with(AgentConfig::default)
    }
    /// The self-hosted worker id to run on.
    pub fn worker_host(mut self, worker: impl Into<String>) -> Self {
        self.config().worker_host = Some(worker.into());
        self
    }
    /// The environment.
    pub fn environment_id(mut self, id: impl Into<String>) -> Self {
        self.config().environment_id = Some(id.into());
        self
    }
    /// The harness (`claude`, `codex`, `gemini`, `command`, `oz`).
    pub fn harness(mut self, kind: HarnessKind) -> Self {
        self.config().harness.get_or_insert_with(HarnessConfig::default).kind = Some(kind);
        self
    }
    /// The model.
    pub fn model_id(mut self, model: impl Into<String>) -> Self {
        self.config().model_id = Some(model.into());
        self
    }
    /// The agent's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config().name = Some(name.into());
        self
    }
    /// The title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.request.title = Some(title.into());
        self
    }
    /// A metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.request.metadata.get_or_insert_with(Default::default).insert(key.into(), value.into());
        self
    }
    /// Shares the run with the whole team (`team: true`).
    pub fn team(mut self, shared: bool) -> Self {
        self.request.team = Some(shared);
        self
    }
    /// Attaches a file (the server accepts at most 5); `data` is the content, base64-encoded.
    pub fn attachment(mut self, attachment: oz_core::wire::api::Attachment) -> Self {
        self.request.attachments.get_or_insert_with(Vec::new).push(attachment);
        self
    }
    /// Replaces the whole agent config.
    pub fn agent_config(mut self, config: AgentConfig) -> Self {
        self.request.config = Some(config);
        self
    }
    /// Sends it (not retried: creating is not idempotent).
    pub async fn send(self) -> Result<RunCreated> {
        self.client.call_json(Method::POST, "/agent/runs", &self.request).await
    }
}

/// The builder of `GET /agent/runs`.
#[derive(Debug, Clone)]
pub struct ListRuns {
    client: Client,
    params: Vec<(String, String)>,
}

impl ListRuns {
    fn param(mut self, k: &str, v: impl ToString) -> Self {
        self.params.retain(|(key, _)| key != k || k == "state");
        self.params.push((k.to_owned(), v.to_string()));
        self
    }
    /// Only runs in this state (repeatable).
    pub fn state(self, state: RunState) -> Self {
        self.param("state", state.as_str())
    }
    /// Page size, 1-500.
    pub fn limit(self, limit: u32) -> Self {
        self.param("limit", limit)
    }
    /// Continue from a cursor.
    pub fn cursor(self, cursor: impl Into<String>) -> Self {
        self.param("cursor", cursor.into())
    }
    /// Free text.
    pub fn query(self, q: impl Into<String>) -> Self {
        self.param("q", q.into())
    }
    /// By source.
    pub fn source(self, source: impl Into<String>) -> Self {
        self.param("source", source.into())
    }
    /// By schedule.
    pub fn schedule_id(self, id: impl Into<String>) -> Self {
        self.param("schedule_id", id.into())
    }
    /// By environment.
    pub fn environment_id(self, id: impl Into<String>) -> Self {
        self.param("environment_id", id.into())
    }
    /// `created_at` (default), `updated_at`, `title`, `agent`.
    pub fn sort_by(self, field: impl Into<String>) -> Self {
        self.param("sort_by", field.into())
    }
    /// Oldest first.
    pub fn ascending(self) -> Self {
        self.param("sort_order", "asc")
    }
    /// One page.
    pub async fn send(self) -> Result<RunList> {
        let params = self.params.clone();
        let resp = self.client.execute(Method::GET, "/agent/runs", move |r| r.query(&params)).await?;
        resp.json().await.map_err(|e| Error::Decode(e.to_string()))
    }
    /// Every matching run, page after page.
    pub fn stream(self) -> impl Stream<Item = Result<RunItem>> + Send + 'static {
        type Buffer = std::collections::VecDeque<RunItem>;
        futures::stream::unfold((Some(self), Buffer::new()), |(mut next, mut buffer)| async move {
            if buffer.is_empty() {
                let builder = next.take()?;
                match builder.clone().send().await {
                    Ok(page) => {
                        buffer.extend(page.runs);
                        if let (true, Some(cursor)) = (page.page_info.has_next_page, page.page_info.next_cursor) {
                            next = Some(builder.cursor(cursor));
                        }
                    }
                    Err(e) => return Some((Err(e), (None, buffer))),
                }
            }
            let item = buffer.pop_front()?;
            Some((Ok(item), (next, buffer)))
        })
    }
}

fn events_stream(
    client: Client,
    run_id: String,
    after: i64,
) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
    struct S {
        client: Client,
        run_id: String,
        last: i64,
        body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
        parser: SseParser,
        pending: std::collections::VecDeque<RunStreamEvent>,
        done: bool,
        failures: u32,
    }
    let s = S {
        client,
        run_id,
        last: after,
        body: None,
        parser: SseParser::default(),
        pending: Default::default(),
        done: false,
        failures: 0,
    };
    futures::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                if e.seq <= s.last {
                    continue;
                }
                s.last = e.seq;
                if e.state().is_some_and(|st| st.is_terminal()) {
                    s.done = true;
                }
                return Some((Ok(e), s));
            }
            if s.done {
                return None;
            }
            let Some(body) = s.body.as_mut() else {
                // (Re)connect, resuming after the last event.
                let path = format!("/agent/runs/{}/events", seg(&s.run_id));
                let resp = s
                    .client
                    .request(Method::GET, &path)
                    .header("last-event-id", s.last.to_string())
                    .header("accept", "text/event-stream")
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        s.body = Some(r.bytes_stream().boxed());
                        s.parser = SseParser::default();
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let err = match r.json::<oz_core::wire::problem::Problem>().await {
                            Ok(p) => Error::Api(Box::new(p)),
                            Err(_) => Error::Decode(format!("the event stream answered HTTP {status}")),
                        };
                        s.done = true;
                        return Some((Err(err), s));
                    }
                    Err(e) => {
                        s.failures += 1;
                        if s.failures > 5 {
                            s.done = true;
                            return Some((Err(Error::Transport(e.without_url().to_string())), s));
                        }
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(s.failures))).await;
                    }
                }
                continue;
            };
            match body.next().await {
                Some(Ok(bytes)) => {
                    s.failures = 0;
                    for event in s.parser.push(&bytes) {
                        match serde_json::from_str::<RunStreamEvent>(&event.data) {
                            Ok(e) => s.pending.push_back(e),
                            Err(e) => return Some((Err(Error::Decode(format!("bad event: {e}"))), s)),
                        }
                    }
                }
                // The connection dropped (or the server closed early): reconnect and resume.
                Some(Err(_)) | None => {
                    s.body = None;
                    s.failures += 1;
                    if s.failures > 5 {
                        s.done = true;
                        return Some((Err(Error::Transport("the event stream kept dropping".into())), s));
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(s.failures))).await;
                }
            }
        }
    })
}
