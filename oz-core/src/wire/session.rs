//! A live session's viewer protocol (`GET /agent/runs/{id}/session`, a WebSocket): what the control
//! plane sends a viewer. Text frames carry a [`ViewerMessage`]; binary frames carry the bytes the run
//! wrote to its terminal, to be fed to a terminal emulator in order after the last `screen`.

use serde::{Deserialize, Serialize};

use crate::run::RunState;

/// The WebSocket path of a run's live session, under the API base.
pub fn session_path(run_id: &str) -> String {
    format!("/agent/runs/{run_id}/session")
}

/// The query parameter that picks how the screen is sent: [`CELLS_VIEW`] for `cells` messages
/// instead of escape codes and bytes (for a viewer with no terminal emulator, as the dashboard).
pub const VIEW_PARAM: &str = "view";
/// The value of [`VIEW_PARAM`] for the cell view.
pub const CELLS_VIEW: &str = "cells";

/// The session terminal's height: the harness's terminal has this size, and so has every viewer's.
pub const ROWS: u16 = 40;
/// The session terminal's width; see [`ROWS`].
pub const COLS: u16 = 120;

/// The most bytes of keys one [`ViewerRequest::Input`] may carry.
pub const MAX_INPUT_BYTES: usize = 4096;

/// A text frame a viewer sends.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewerRequest {
    /// Keys for the agent's terminal, as a terminal sends them (Enter is `\r`, Ctrl-C `\x03`,
    /// the arrows `\x1b[A`...). Only an editor of the run may type: anyone else is sent an
    /// [`ViewerMessage::Refused`], and nothing reaches the agent.
    Input {
        /// The keys, at most [`MAX_INPUT_BYTES`] bytes.
        data: String,
    },
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
    /// The whole screen as text runs (the cell view): sent first, then whenever the screen changed,
    /// at most every [`CELLS_EVERY_MS`] milliseconds, and once more before `ended`.
    Cells {
        /// The terminal's height.
        rows: u16,
        /// The terminal's width.
        cols: u16,
        /// One entry per row, top first: the row's runs of cells that look alike, left to right.
        lines: Vec<Vec<CellRun>>,
        /// The cursor's row and column, from 0.
        cursor: [u16; 2],
    },
    /// What the viewer sent was not acted on (it may not type into this run, or the message was
    /// malformed or too long); the session goes on.
    Refused {
        /// Why, for a person.
        message: String,
    },
    /// The run ended; the socket closes after this.
    Ended {
        /// How.
        state: RunState,
    },
}

/// The fewest milliseconds between two `cells` messages to one viewer: what a screen that changes
/// faster costs a viewer is one message per interval, however much the run prints.
pub const CELLS_EVERY_MS: u64 = 50;

/// Cells of a row that share their look. Colours are `#rrggbb`; absent is the terminal's default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRun {
    /// The cells' characters.
    pub text: String,
    /// Foreground colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fg: Option<String>,
    /// Background colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bg: Option<String>,
    /// Bold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bold: bool,
    /// Italic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub italic: bool,
    /// Underlined.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub underline: bool,
    /// Foreground and background swapped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inverse: bool,
}
