//! `GET /agent/runs/{id}/events`: the run's events as Server-Sent Events (our extension). Stored
//! events first, then live ones; resumable with `Last-Event-ID` (the event's sequence number). The
//! stream ends once the run has ended and every event was sent.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::api::runs::visible_run;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::RunEventRecord;

fn sse_event(e: &RunEventRecord) -> Event {
    let kind = e.body.get("event").and_then(|k| k.as_str()).unwrap_or("message").to_owned();
    let data = serde_json::json!({"seq": e.seq, "at": e.at, "run_id": e.run_id, "event": e.body});
    Event::default().id(e.seq.to_string()).event(kind).data(data.to_string())
}

/// The handler.
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let after: i64 = match headers.get("last-event-id").map(|v| v.to_str().unwrap_or("")) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("Last-Event-ID must be an event number, got {v:?}")))?,
        None => 0,
    };
    let stream = async_stream_events(state, run.id, after);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn async_stream_events(state: AppState, run_id: String, after: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (
            state,
            run_id,
            after,
            None::<tokio::sync::broadcast::Receiver<RunEventRecord>>,
            Vec::<RunEventRecord>::new(),
            false,
        ),
        |(state, run_id, mut after, mut live, mut backlog, mut done)| async move {
            loop {
                if let Some(e) = (!backlog.is_empty()).then(|| backlog.remove(0)) {
                    after = e.seq;
                    let event = sse_event(&e);
                    return Some((Ok(event), (state, run_id, after, live, backlog, done)));
                }
                if done {
                    return None;
                }
                // Subscribe before reading the store, so nothing falls between the two.
                let rx = live.get_or_insert_with(|| state.hub.subscribe(&run_id));
                match state.store.events(&run_id, after, 500).await {
                    Ok(batch) if !batch.is_empty() => {
                        backlog = batch;
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
                let ended = state.store.run_by_id(&run_id).await.ok().flatten().is_none_or(|r| r.state.is_terminal());
                if ended {
                    done = true;
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Ok(e)) if e.seq > after => backlog.push(e),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) => live = None,
                }
            }
        },
    )
}
