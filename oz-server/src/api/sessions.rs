//! `GET /agent/runs/{id}/session`: a run's live terminal, as a WebSocket (our extension; the
//! protocol is `oz_core::wire::session`). Whoever may read the run may watch it; nothing a viewer
//! sends is acted on yet (viewers only watch).

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use oz_core::wire::session::ViewerMessage;
use tracing::Instrument;

use crate::api::runs::visible_run;
#[allow(unused_imports)]
use crate::api::schema::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::session::{COLS, ROWS, SEND_TIMEOUT, Viewer, ViewerFrame};
use crate::state::AppState;

/// The handler.
#[utoipa::path(get, path = "/agent/runs/{id}/session", tag = "runs", params(("id" = String, Path)), responses((status = 101, description = "A WebSocket: text frames are ViewerMessage, binary frames the terminal's bytes"), BadRequest, Unauthorized, NotFound))]
pub async fn watch(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(run_id): ApiPath<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Who may watch first: a run the caller may not see is not found, WebSocket or not.
    let run = visible_run(&state, &principal, &run_id).await?;
    let upgrade = upgrade?;
    let viewer = state.sessions.attach(&run.id).await?;
    let span = tracing::info_span!("session_viewer", run_id = %run.id);
    Ok(upgrade.on_upgrade(move |socket| serve(socket, viewer).instrument(span)))
}

fn text(message: &ViewerMessage) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

/// How often an idle viewer is pinged, so a connection that died without a close is noticed.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

async fn serve(socket: WebSocket, mut viewer: Viewer) {
    let (mut sink, mut incoming) = socket.split();
    // Read what the viewer sends until its side ends (the socket answers pings and closes).
    let mut gone = tokio::spawn(async move { while let Some(Ok(_)) = incoming.next().await {} });
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let message = tokio::select! {
            frame = viewer.next() => match frame {
                Some(ViewerFrame::Screen(data)) => text(&ViewerMessage::Screen { rows: ROWS, cols: COLS, data }),
                Some(ViewerFrame::Output(bytes)) => Message::Binary(bytes),
                Some(ViewerFrame::Ended(state)) => text(&ViewerMessage::Ended { state }),
                None => break,
            },
            _ = ping.tick() => Message::Ping(Default::default()),
            _ = &mut gone => return,
        };
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
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(None))).await;
    // The viewer's close answer, then the end of its side.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut gone).await;
    gone.abort();
}
