//! A run's live session (`client.runs().watch(id)`): its terminal, as the control plane draws it
//! for viewers (`oz_core::wire::session`).

use bytes::Bytes;
use futures::SinkExt;
use futures::StreamExt;
use oz_core::run::RunState;
use oz_core::wire::session::{MAX_INPUT_BYTES, ViewerMessage, ViewerRequest, session_path};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::http::{problem_from, seg};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a viewer is sent, in order. Feed `Screen` and `Output` to a terminal emulator (or a real
/// terminal) as they come.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionFrame {
    /// Escape codes that clear a terminal of `rows` x `cols` and draw the run's screen on it: first,
    /// and again when this viewer fell too far behind.
    Screen {
        /// The terminal's height.
        rows: u16,
        /// The terminal's width.
        cols: u16,
        /// Escape codes and text.
        data: String,
    },
    /// Bytes the run wrote to its terminal since the last frame.
    Output(Bytes),
    /// The server did not act on what this viewer sent (keys from someone who may only watch, or
    /// after the run ended): why. The session goes on.
    Refused(String),
    /// The run ended; nothing more comes.
    Ended(RunState),
}

/// A live session being watched.
pub struct Session {
    ws: Ws,
    ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl Session {
    /// Opens run `run_id`'s session. A run the key may not read is an [`Error::Api`] 404.
    pub(crate) async fn open(client: &Client, run_id: &str) -> Result<Self> {
        let request = client.http.websocket_request(&session_path(&seg(run_id)))?;
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Self { ws, ended: false }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let retry_after = response.headers().contains_key("retry-after");
                let body = response.body().as_deref().unwrap_or_default();
                Err(problem_from(response.status().as_u16(), body, retry_after))
            }
            Err(e) => Err(Error::Session(Box::new(e))),
        }
    }

    /// The next frame; `None` once the run's end was given (or the server closed the session).
    pub async fn next(&mut self) -> Option<Result<SessionFrame>> {
        if self.ended {
            return None;
        }
        loop {
            let message = match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return None,
                Some(Err(e)) => return Some(Err(Error::Session(Box::new(e)))),
                Some(Ok(m)) => m,
            };
            match message {
                Message::Binary(bytes) => return Some(Ok(SessionFrame::Output(bytes))),
                Message::Text(text) => match serde_json::from_str::<ViewerMessage>(&text) {
                    Ok(ViewerMessage::Screen { rows, cols, data }) => {
                        return Some(Ok(SessionFrame::Screen { rows, cols, data }));
                    }
                    Ok(ViewerMessage::Ended { state }) => {
                        self.ended = true;
                        return Some(Ok(SessionFrame::Ended(state)));
                    }
                    Ok(ViewerMessage::Refused { message }) => return Some(Ok(SessionFrame::Refused(message))),
                    // Sent only to viewers that ask for the cell view, which this one does not.
                    Ok(ViewerMessage::Cells { .. }) => {}
                    Err(e) => return Some(Err(Error::decode(e, text.as_bytes()))),
                },
                _ => {}
            }
        }
    }

    /// Types `keys` into the run's terminal, as the bytes a terminal sends (`"\r"` is Enter). Only
    /// an editor of the run may: for anyone else a [`SessionFrame::Refused`] follows. Longer input
    /// goes in pieces of at most [`MAX_INPUT_BYTES`] bytes.
    pub async fn type_keys(&mut self, keys: &str) -> Result<()> {
        let mut rest = keys;
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_INPUT_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, after) = rest.split_at(cut);
            let frame = serde_json::to_string(&ViewerRequest::Input { data: piece.to_owned() })
                .map_err(|e| Error::decode(e, b""))?;
            self.ws.send(Message::Text(frame.into())).await.map_err(|e| Error::Session(Box::new(e)))?;
            rest = after;
        }
        Ok(())
    }

    /// Leaves the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
