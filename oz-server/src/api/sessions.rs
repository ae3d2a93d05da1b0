//! `GET /agent/sessions/{id}/redirect`: a session link's way to its run. `GET /agent/runs/{id}/session`: a run's live terminal, as a WebSocket (our extension; the
//! protocol is `oz_core::wire::session`). Whoever may read the run may watch it; an editor of the
//! run (its sharing and the caller's role, checked on every message) may type into it: each `input`
//! message becomes an `input` event of the run, which its runner writes to the harness's terminal.
//! Anyone else's keys are refused (`refused`), and the session goes on. With `?view=cells` the
//! screen is sent as rows of text runs instead of escape codes and bytes ([`crate::session::cells`]).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use oz_core::wire::session::{CELLS_VIEW, MAX_INPUT_BYTES, VIEW_PARAM, ViewerMessage, ViewerRequest};
use tracing::Instrument;

use crate::api::runs::visible_run;
#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::{Caller, Principal};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::session::cells::{CELLS_EVERY, CellTerminal};
use crate::session::{COLS, ROWS, SEND_TIMEOUT, Viewer, ViewerFrame};
use crate::state::AppState;

/// The handler.
#[utoipa::path(get, path = "/agent/runs/{id}/session", tag = "runs", params(("id" = String, Path), ("view" = Option<String>, Query, description = "`cells`: the screen as rows of text runs (cells messages), no binary frames")), responses((status = 101, description = "A WebSocket: text frames are ViewerMessage, binary frames the terminal's bytes"), BadRequest, Unauthorized, NotFound))]
pub async fn watch(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Who may watch first: a run the caller may not see is not found, WebSocket or not.
    let run = visible_run(&state, &principal, &run_id).await?;
    let mut cells = false;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        if key == VIEW_PARAM {
            cells = match &*value {
                CELLS_VIEW => true,
                "terminal" => false,
                other => return Err(ApiError::invalid(format!("view must be cells or terminal, got {other:?}"))),
            };
        }
    }
    let upgrade = upgrade?;
    let viewer = state.sessions.attach(&run.id).await?;
    let span = tracing::info_span!("session_viewer", run_id = %run.id, cells);
    let terminal = cells.then(CellTerminal::new);
    let access = Access { state: state.clone(), principal, run_id: run.id.clone() };
    Ok(upgrade.on_upgrade(move |socket| serve(socket, viewer, terminal, access).instrument(span)))
}

/// `GET /agent/sessions/{id}/redirect`: 302 to the dashboard's page of the session's run, for
/// whoever may see it (its sharing and the caller's role decide); 404 for anyone else.
#[utoipa::path(get, path = "/agent/sessions/{id}/redirect", tag = "runs", params(("id" = String, Path, description = "The run's session_id")), responses((status = 302, description = "To the run's page on the dashboard"), BadRequest, Unauthorized, NotFound))]
pub async fn redirect(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(session_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let run = crate::sharing::session_run(&state, &caller, &session_id).await?;
    let location = format!("/runs/{}", run.id);
    Ok((axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, location)]).into_response())
}

fn text(message: &ViewerMessage) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

/// How often an idle viewer is pinged, so a connection that died without a close is noticed.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// A viewer's next messages: a frame of the session as it comes (for a cell viewer, the screen
/// once it changed and its interval passed, and the last screen before the end), or a ping; `None`
/// when the session ended.
async fn next_messages(
    viewer: &mut Viewer,
    cells: &mut Option<CellTerminal>,
    next_render: &mut tokio::time::Instant,
    ping: &mut tokio::time::Interval,
) -> Option<Vec<Message>> {
    loop {
        let render_due = cells.as_ref().is_some_and(CellTerminal::changed);
        let frame = tokio::select! {
            frame = viewer.next() => match frame {
                Some(frame) => frame,
                // The session stopped with no end known: what was applied but not drawn goes out.
                None => return cells.as_mut().filter(|t| t.changed()).map(|t| vec![text(&viewer.cells(t))]),
            },
            _ = tokio::time::sleep_until(*next_render), if render_due => {
                *next_render = tokio::time::Instant::now() + CELLS_EVERY;
                return cells.as_mut().map(|t| vec![text(&viewer.cells(t))]);
            }
            _ = ping.tick() => return Some(vec![Message::Ping(Default::default())]),
        };
        let Some(terminal) = cells.as_mut() else {
            return Some(vec![match frame {
                ViewerFrame::Screen(data) => text(&ViewerMessage::Screen { rows: ROWS, cols: COLS, data }),
                ViewerFrame::Output(bytes) => Message::Binary(bytes),
                ViewerFrame::Ended(state) => text(&ViewerMessage::Ended { state }),
            }]);
        };
        terminal.apply(&frame);
        if let ViewerFrame::Ended(state) = frame {
            return Some(vec![text(&viewer.cells(terminal)), text(&ViewerMessage::Ended { state })]);
        }
    }
}

/// Who a viewer is, checked again every `credential_recheck` while it watches.
#[derive(Clone)]
struct Access {
    state: AppState,
    principal: Principal,
    run_id: String,
}

/// Keys a viewer may send per second, sustained (a person types far fewer; a paste is one message).
const KEYS_PER_SECOND: u32 = 50;

/// What a viewer's text frame does: an editor's keys go to the run (`None`); anything else is
/// answered with why not.
async fn typed(access: &Access, frame: &str) -> Option<ViewerMessage> {
    let refused = |message: String| Some(ViewerMessage::Refused { message });
    let request = match serde_json::from_str::<ViewerRequest>(frame) {
        Ok(request) => request,
        Err(e) => return refused(format!("not a viewer message ({e}); send {{\"type\":\"input\",\"data\":\"...\"}}")),
    };
    let ViewerRequest::Input { data } = request;
    if data.len() > MAX_INPUT_BYTES {
        return refused(format!("input carries {} bytes; at most {MAX_INPUT_BYTES} go in one message", data.len()));
    }
    if data.is_empty() {
        return None;
    }
    // Every message is checked afresh: a share taken away, or a role lowered, counts at once.
    let caller = match crate::auth::still_valid(&access.state, &access.principal).await {
        Ok(Principal::Key(caller)) => caller,
        Ok(Principal::Run(_)) => {
            return refused("a run's workload token watches its session; it does not type into it".into());
        }
        Err(e) => return refused(format!("your keys were not sent: {}", e.detail)),
    };
    let run = match crate::sharing::steerable_run(&access.state, &caller, &access.run_id).await {
        Ok(run) => run,
        Err(e) => return refused(format!("your keys were not sent: {}", e.detail)),
    };
    let event = oz_core::wire::api::InputEvent { data, by: caller.user_id };
    match access.state.lifecycle.record_unless_ended(&run.id, jiff::Timestamp::now(), event.to_event()).await {
        Ok(None) => None,
        Ok(Some(state)) => refused(format!("the run has ended ({state}): nothing reads its terminal")),
        Err(e) => {
            tracing::warn!(error = %oz_core::error::error_chain(&e), "keys typed into a session could not be kept");
            refused("your keys could not be kept; try again".into())
        }
    }
}

/// Reads what the viewer sends until its side ends (the socket answers pings and closes): its keys
/// go to the run, its refusals to `replies`.
async fn read_viewer(
    mut incoming: futures::stream::SplitStream<WebSocket>,
    access: Access,
    replies: tokio::sync::mpsc::Sender<ViewerMessage>,
) {
    let per_second = std::num::NonZeroU32::new(KEYS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
    let limiter = governor::RateLimiter::direct(governor::Quota::per_second(per_second));
    while let Some(Ok(message)) = incoming.next().await {
        let Message::Text(frame) = message else { continue };
        let answer = if limiter.check().is_err() {
            Some(ViewerMessage::Refused {
                message: format!("too many messages: at most {KEYS_PER_SECOND} a second; these keys were dropped"),
            })
        } else {
            typed(&access, frame.as_str()).await
        };
        if let Some(answer) = answer {
            // A viewer that does not read its refusals loses them, not the session.
            let _ = replies.try_send(answer);
        }
    }
}

async fn serve(socket: WebSocket, mut viewer: Viewer, mut cells: Option<CellTerminal>, access: Access) {
    let (mut sink, incoming) = socket.split();
    let (replies, mut refusals) = tokio::sync::mpsc::channel(16);
    let mut gone = tokio::spawn(read_viewer(incoming, access.clone(), replies));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut recheck = tokio::time::interval(access.state.config.credential_recheck);
    recheck.tick().await;
    let mut next_render = tokio::time::Instant::now();
    loop {
        let messages = tokio::select! {
            messages = next_messages(&mut viewer, &mut cells, &mut next_render, &mut ping) => match messages {
                Some(messages) => messages,
                None => break,
            },
            _ = recheck.tick() => match crate::sharing::may_still_follow(&access.state, &access.principal, &access.run_id).await {
                Ok(()) => continue,
                Err(e) => {
                    // 1008: policy violation, with the reason (no secret in it) for the viewer to show.
                    let close = axum::extract::ws::CloseFrame { code: 1008, reason: e.detail.chars().take(120).collect::<String>().into() };
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(close)))).await;
                    gone.abort();
                    return;
                }
            },
            Some(refusal) = refusals.recv() => vec![text(&refusal)],
            _ = &mut gone => return,
        };
        for message in messages {
            // A viewer whose socket takes nothing for this long is let go (its session is not held).
            let sent = tokio::select! {
                sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(message)) => matches!(sent, Ok(Ok(()))),
                _ = &mut gone => return,
            };
            if !sent {
                gone.abort();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(None))).await;
    // The viewer's close answer, then the end of its side.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut gone).await;
    gone.abort();
}
