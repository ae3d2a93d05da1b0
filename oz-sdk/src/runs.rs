//! Runs: create, list (a page, or a stream following cursors), get, cancel, and live events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff};
use eventsource_stream as sse;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use oz_core::retry::RetryPolicy;
use oz_core::run::RunState;
use oz_core::runner::HarnessKind;
use oz_core::wire::api::{AgentConfig, RunAgentRequest, RunCreated, RunItem, RunList, RunStreamEvent};
use oz_core::wire::worker::HarnessConfig;
use reqwest::Method;
use sse::Eventsource;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::http::{Http, RetryRule, decode, seg};

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

    /// Cancels a run; returns its id. A run that ended already is a 400.
    pub async fn cancel(&self, run_id: &str) -> Result<String> {
        self.client
            .call_json(Method::POST, &format!("/agent/runs/{}/cancel", seg(run_id)), &serde_json::json!({}))
            .await
    }

    /// Sends a follow-up: to a run that has not ended, its running agent gets `message`; a run that
    /// ended goes on with it in a new execution (QUEUED again). The same run is answered either way.
    pub async fn followup(&self, run_id: &str, message: impl Into<String>) -> Result<RunCreated> {
        let body = oz_core::wire::api::FollowupRequest { message: Some(message.into()), mode: None };
        self.client.call_json(Method::POST, &format!("/agent/runs/{}/followups", seg(run_id)), &body).await
    }

    /// Registers a run that the caller runs itself, where it is (an unmanaged `oz agent run`): the
    /// run is tracked, watched, steered and cancelled like a managed one; report on it with the
    /// answered workload token ([`crate::AgentClient`]).
    pub async fn register_local(
        &self,
        request: &oz_core::wire::api::LocalRunRequest,
    ) -> Result<oz_core::wire::api::LocalRunCreated> {
        self.client.call_json(Method::POST, "/agent/runs/local", request).await
    }

    /// Interrupts a run's running agent (SIGINT to its harness, as Ctrl-C in a terminal): it stops
    /// what it is doing now; the run goes on if the harness handles the signal. Returns the run's id.
    /// A run whose agent has not started is a 409, one that ended a 400.
    pub async fn interrupt(&self, run_id: &str) -> Result<String> {
        self.client
            .call_json(Method::POST, &format!("/agent/runs/{}/interrupt", seg(run_id)), &serde_json::json!({}))
            .await
    }

    /// The stored transcript (every event so far).
    pub async fn transcript(&self, run_id: &str) -> Result<Vec<serde_json::Value>> {
        self.client.call(Method::GET, &format!("/agent/runs/{}/transcript/content", seg(run_id))).await
    }

    /// The run's events, live, as a stream that ends with the run: after its terminal state, when
    /// the server says nothing follows it (a run continued after its end by a follow-up goes on,
    /// and so does the stream). A dropped connection is resumed from the last event received
    /// (`Last-Event-ID`).
    pub fn events(&self, run_id: &str) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
        events_stream(self.client.http.clone(), run_id.to_owned(), 0, None)
    }

    /// Watches the run's live session: its screen first, then what it writes, then its end
    /// ([`crate::Session`]).
    pub async fn watch(&self, run_id: &str) -> Result<crate::Session> {
        crate::Session::open(&self.client, run_id).await
    }

    /// Like [`RunsHandler::events`], starting after event `after_seq`.
    pub fn events_after(
        &self,
        run_id: &str,
        after_seq: i64,
    ) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
        events_stream(self.client.http.clone(), run_id.to_owned(), after_seq, None)
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
    /// Shares the run's session with a target, as `--share` does (`self`, `team`, `team:view`,
    /// `team:edit`, a user's name or id, `USER:edit`); repeatable. Given any, the run is only its
    /// creator's, its team's admins' and the targets' ([`oz_core::sharing`]).
    pub fn share(mut self, target: impl Into<String>) -> Self {
        self.config().session_sharing.get_or_insert_with(Default::default).share.push(target.into());
        self
    }
    /// Opens the run's session to anyone signed in to the server who has its link.
    pub fn public_access(mut self, access: oz_core::sharing::PublicAccess) -> Self {
        self.config().session_sharing.get_or_insert_with(Default::default).public_access = Some(access);
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
        decode(self.client.execute(Method::GET, "/agent/runs", move |r| r.query(&params)).await?).await
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

/// How the event stream waits before reconnecting; reset whenever a connection delivers bytes, so
/// only drops in a row with nothing received end the stream.
const RECONNECT: RetryPolicy = RetryPolicy::bounded(Duration::from_millis(100), Duration::from_secs(1), 5);

type SseEvents = BoxStream<'static, std::result::Result<sse::Event, sse::EventStreamError<reqwest::Error>>>;

/// `kind`: only events of this kind (`?event=`), e.g. `followup`.
pub(crate) fn events_stream(
    http: Http,
    run_id: String,
    after: i64,
    kind: Option<&'static str>,
) -> impl Stream<Item = Result<RunStreamEvent>> + Send + 'static {
    struct S {
        http: Http,
        path: String,
        last: i64,
        body: Option<SseEvents>,
        /// Whether the current connection delivered any bytes (keep-alives included).
        received: Arc<AtomicBool>,
        delays: ExponentialBackoff,
        drops: usize,
        done: bool,
        /// Whether the last state event received was an end: when the server then closes the
        /// stream, the run is over (a run continued after its end has a later state).
        ended: bool,
    }
    let s = S {
        http,
        path: match kind {
            Some(kind) => format!("/agent/runs/{}/events?event={}", seg(&run_id), seg(kind)),
            None => format!("/agent/runs/{}/events", seg(&run_id)),
        },
        last: after,
        body: None,
        received: Arc::default(),
        delays: RECONNECT.builder().build(),
        drops: 0,
        done: false,
        ended: false,
    };
    futures::stream::unfold(s, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let Some(body) = s.body.as_mut() else {
                // (Re)connect, resuming after the last event.
                let last = s.last.to_string();
                let build = |r: reqwest::RequestBuilder| {
                    r.header("last-event-id", last.as_str()).header("accept", "text/event-stream")
                };
                match s.http.execute(Method::GET, &s.path, build, RetryRule::NEVER).await {
                    Ok(resp) => {
                        let received = s.received.clone();
                        let bytes = resp.bytes_stream().inspect_ok(move |_| received.store(true, Ordering::Relaxed));
                        s.body = Some(bytes.eventsource().boxed());
                    }
                    Err(Error::Transport(e)) => match s.delays.next() {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => {
                            s.done = true;
                            return Some((Err(Error::Transport(e)), s));
                        }
                    },
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
                continue;
            };
            let cause: Option<Box<dyn std::error::Error + Send + Sync>> = match body.next().await {
                Some(Ok(event)) => {
                    let event = match serde_json::from_str::<RunStreamEvent>(&event.data) {
                        Ok(e) => e,
                        Err(e) => return Some((Err(Error::decode(e, event.data.as_bytes())), s)),
                    };
                    if event.seq <= s.last {
                        continue;
                    }
                    s.last = event.seq;
                    if let Some(state) = event.state() {
                        s.ended = state.is_terminal();
                    }
                    return Some((Ok(event), s));
                }
                Some(Err(sse::EventStreamError::Transport(e))) => Some(Box::new(e.without_url())),
                Some(Err(e)) => Some(Box::new(e)),
                // The server closes the stream once the run's last state is an end.
                None if s.ended => return None,
                None => None,
            };
            // The connection dropped (or the server closed early): reconnect and resume.
            s.body = None;
            if s.received.swap(false, Ordering::Relaxed) {
                s.delays = RECONNECT.builder().build();
                s.drops = 0;
            }
            s.drops += 1;
            match s.delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    s.done = true;
                    return Some((Err(Error::EventsDropped { drops: s.drops, source: cause }), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::TryStreamExt;

    use super::sse::Eventsource;

    /// The framing the server's stream uses (keep-alive comments, ids, names, multi-line data) parses
    /// the same wherever the network splits it.
    #[tokio::test]
    async fn parses_events_split_anywhere() {
        let text = ": keep-alive\n\nid: 1\nevent: state\ndata: {\"a\":1}\n\nid: 2\ndata: line1\ndata: line2\n\n";
        for split in 0..text.len() {
            let chunks = [&text.as_bytes()[..split], &text.as_bytes()[split..]];
            let events: Vec<_> = futures::stream::iter(chunks.map(Ok::<_, std::convert::Infallible>))
                .eventsource()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!((events[0].id.as_str(), events[0].event.as_str()), ("1", "state"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "line1\nline2");
        }
    }
}
