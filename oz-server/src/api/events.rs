//! `GET /agent/runs/{id}/events`: the run's events as Server-Sent Events (our extension). Stored
//! events first, then live ones; resumable with `Last-Event-ID` (the event's sequence number). The
//! stream ends once the run has ended and every event was sent. `?event=a,b` sends only events of
//! those kinds, and the state changes that end the run or take it out of its end (a runner follows
//! its run's `followup` events so).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::api::runs::visible_run;
#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;
use crate::store::RunEventRecord;

fn sse_event(e: &RunEventRecord) -> Event {
    let wire =
        oz_core::wire::api::RunStreamEvent { seq: e.seq, at: e.at, run_id: e.run_id.clone(), event: e.body.clone() };
    let kind = wire.kind();
    let kind = if kind.is_empty() { "message".to_owned() } else { kind.to_owned() };
    let data = serde_json::to_string(&wire).unwrap_or_default();
    Event::default().id(e.seq.to_string()).event(kind).data(data)
}

/// The handler.
#[utoipa::path(get, path = "/agent/runs/{id}/events", tag = "runs", params(("id" = String, Path), ("Last-Event-ID" = Option<i64>, Header), ("event" = Option<String>, Query, description = "Only events of these kinds, comma-separated")), responses((status = 200, description = "Server-Sent Events; each data is a RunStreamEvent", body = RunStreamEvent, content_type = "text/event-stream"), BadRequest, Unauthorized, NotFound))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let mut kinds = None;
    // Unknown parameters are ignored, as on the other lists.
    for (_, value) in crate::extract::query_pairs(query.as_deref()).into_iter().filter(|(name, _)| name == "event") {
        let wanted: Vec<String> =
            value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        if wanted.is_empty() || wanted.iter().any(|k| k.len() > 64) {
            return Err(ApiError::invalid("event must name one or more event kinds, comma-separated"));
        }
        kinds = Some(wanted);
    }
    let after: i64 = match headers.get("last-event-id").map(|v| v.to_str().unwrap_or("")) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("Last-Event-ID must be an event number, got {v:?}")))?,
        None => 0,
    };
    let stream = async_stream_events(state, principal, run.id, after, kinds);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Cursor {
    state: AppState,
    /// Who follows: checked again every `credential_recheck` (a revoked key ends the stream).
    principal: Principal,
    recheck_at: tokio::time::Instant,
    run_id: String,
    after: i64,
    live: Option<tokio::sync::broadcast::Receiver<RunEventRecord>>,
    backlog: std::collections::VecDeque<RunEventRecord>,
    /// Only events of these kinds are sent, when given.
    kinds: Option<Vec<String>>,
    ended: bool,
    idle_after_end: u8,
}

/// Stored events after `after`, then live ones, until the run's terminal state event was sent and
/// no later one is stored. (The run row changes before its state event is stored, so "the run
/// ended" alone is not the end.)
fn async_stream_events(
    state: AppState,
    principal: Principal,
    run_id: String,
    after: i64,
    kinds: Option<Vec<String>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let recheck_at = tokio::time::Instant::now() + state.config.credential_recheck;
    let cursor = Cursor {
        state,
        principal,
        recheck_at,
        run_id,
        after,
        live: None,
        backlog: Default::default(),
        kinds,
        ended: false,
        idle_after_end: 0,
    };
    futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if tokio::time::Instant::now() >= c.recheck_at {
                if crate::sharing::may_still_follow(&c.state, &c.principal, &c.run_id).await.is_err() {
                    return None;
                }
                c.recheck_at = tokio::time::Instant::now() + c.state.config.credential_recheck;
            }
            if let Some(e) = c.backlog.pop_front() {
                if e.seq <= c.after {
                    continue;
                }
                c.after = e.seq;
                let terminal = e.terminal_state().is_some();
                // The run's last state change says whether it ended: a run continued after its
                // end by a follow-up has a later one (QUEUED) and goes on.
                let reopened = c.ended && e.kind() == "state" && !terminal;
                if e.kind() == "state" {
                    c.ended = terminal;
                }
                // The run's end always comes, filtered or not (it says the stream is complete), and
                // so does the state that takes it out of its end (it says the stream goes on).
                let always = terminal || reopened;
                if !always && c.kinds.as_ref().is_some_and(|kinds| !kinds.iter().any(|k| k == e.kind())) {
                    continue;
                }
                let event = sse_event(&e);
                return Some((Ok(event), c));
            }
            // Subscribe before reading the store, so nothing falls between the two.
            if c.live.is_none() {
                c.live = Some(c.state.hub.subscribe(&c.run_id));
            }
            match c.state.store.events(&c.run_id, c.after, 500).await {
                Ok(batch) if !batch.is_empty() => {
                    c.backlog.extend(batch);
                    continue;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
            if c.ended {
                return None;
            }
            let run_ended =
                c.state.store.run_by_id(&c.run_id).await.ok().flatten().is_none_or(|r| r.state.is_terminal());
            if run_ended {
                // Its state event is being stored; give it a moment, but never hang on it.
                c.idle_after_end += 1;
                if c.idle_after_end > 20 {
                    return None;
                }
            }
            let wait = if run_ended { Duration::from_millis(50) } else { Duration::from_secs(5) };
            // Never past the next check of the caller's credential.
            let wait = wait.min(c.recheck_at.saturating_duration_since(tokio::time::Instant::now()));
            let rx = c.live.as_mut()?;
            match tokio::time::timeout(wait, rx.recv()).await {
                // A wake-up only: the next pass reads the store, which has every event in order
                // (events can be published out of order by concurrent writers, never stored so).
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Closed)) => c.live = None,
                Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
            }
        }
    })
}
