//! `GET /api/v1/selfhosted/worker/ws?worker_id=<id>`: the worker protocol over a WebSocket. The
//! server pings every 30 s and drops a connection it has not heard from in 60 s.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use oz_core::wire::worker::WorkerMessage;
use tracing::{Instrument, info_span, warn};

use crate::auth::WorkerCredential;
use crate::error::ApiError;
use crate::extract::query_pairs;
use crate::state::AppState;

/// Ping interval.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Read deadline.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Checks a worker id: 1-128 of letters, digits, `-`, `_`, `.`; not starting with `warp` (reserved).
pub fn validate_worker_id(id: &str) -> Result<(), ApiError> {
    oz_core::run::validate_id("worker_id", id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if id.to_ascii_lowercase().starts_with("warp") {
        return Err(ApiError::invalid(format!("worker_id {id:?}: ids starting with \"warp\" are reserved")));
    }
    Ok(())
}

/// The upgrade handler.
pub async fn worker_socket(
    State(state): State<AppState>,
    credential: WorkerCredential,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    let worker_id = query_pairs(query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "worker_id")
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::invalid("the worker_id query parameter is required"))?;
    validate_worker_id(&worker_id)?;
    // The credential names the worker ids it was issued for; any other is refused.
    if !credential.worker_ids.contains(&worker_id) {
        return Err(ApiError::forbidden(format!(
            "this worker credential was not issued for worker id {worker_id:?} (it is for: {})",
            credential.worker_ids.join(", ")
        )));
    }
    let span = info_span!("worker_connection", worker_id = %worker_id, credential = %credential.key_id);
    Ok(upgrade.on_upgrade(move |socket| serve(socket, state, credential, worker_id).instrument(span)))
}

async fn serve(socket: WebSocket, state: AppState, credential: WorkerCredential, worker_id: String) {
    let dispatcher = state.dispatcher.clone();
    let (conn_id, mut outbox, closed) = dispatcher.register(&credential.team_id, &worker_id, &credential.key_id);
    // Cancels asked while this worker was away (or before this server started) reach it now.
    dispatcher.forward_pending_cancels(conn_id).await;
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let frame = tokio::select! {
                message = outbox.recv() => match message {
                    Some(m) => match m.to_json() {
                        Ok(text) => Message::Text(text.into()),
                        Err(e) => { warn!("could not encode a message: {e}"); continue }
                    },
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            if tokio::time::timeout(Duration::from_secs(10), sink.send(frame)).await.map_or(true, |r| r.is_err()) {
                break;
            }
        }
        let _ = sink.close().await;
    });
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(READ_DEADLINE, stream.next()) => next,
            _ = closed.notified() => {
                warn!("the worker's credential was revoked or rotated; closing the connection");
                break;
            }
        };
        match next {
            Ok(Some(Ok(Message::Text(text)))) => match WorkerMessage::from_json(&text) {
                Ok(Some(message)) => dispatcher.on_message(conn_id, message).await,
                Ok(None) => {}
                Err(e) => warn!("ignoring a malformed worker message: {e}"),
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {} // pings are answered by the library; pongs and binary are ignored
            Err(_) => {
                warn!("no message from the worker in {}s; dropping the connection", READ_DEADLINE.as_secs());
                break;
            }
        }
    }
    writer.abort();
    dispatcher.unregister(conn_id).await;
}
