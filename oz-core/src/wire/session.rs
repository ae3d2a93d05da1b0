//! A live session's viewer protocol (`GET /agent/runs/{id}/session`, a WebSocket): what the control
//! plane sends a viewer. Text frames carry a [`ViewerMessage`]; binary frames carry the bytes the run
//! wrote to its terminal, to be fed to a terminal emulator in order after the last `screen`.

use serde::{Deserialize, Serialize};

use crate::run::RunState;

/// The WebSocket path of a run's live session, under the API base.
pub fn session_path(run_id: &str) -> String {
    format!("/agent/runs/{run_id}/session")
}

/// A text frame of the viewer protocol.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewerMessage {
    /// The whole screen: `data` is escape codes that clear a terminal of `rows` x `cols` and draw
    /// the screen on it. Sent first, and again instead of output a slow viewer fell too far behind
    /// on; the binary frames after it continue from it.
    Screen {
        /// The terminal's height.
        rows: u16,
        /// The terminal's width.
        cols: u16,
        /// Escape codes and text.
        data: String,
    },
    /// The run ended; the socket closes after this.
    Ended {
        /// How.
        state: RunState,
    },
}
