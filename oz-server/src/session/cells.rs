//! The cell view of a session: a viewer with no terminal emulator (the dashboard) is sent the
//! screen as rows of text runs, rendered here from a `vt100` screen of its own, at most every
//! [`CELLS_EVERY_MS`] milliseconds however fast the run prints.

use std::num::NonZeroU16;

use oz_core::wire::session::{CELLS_EVERY_MS, CellRun, ViewerMessage};

use super::{COLS, ROWS, ViewerFrame};

/// How often a changing screen is sent to a cell viewer.
pub const CELLS_EVERY: std::time::Duration = std::time::Duration::from_millis(CELLS_EVERY_MS);

/// One cell viewer's terminal: the frames it is sent, applied, and whether it changed since it was
/// last rendered.
pub struct CellTerminal {
    terminal: vt100::Parser,
    changed: bool,
}

impl Default for CellTerminal {
    fn default() -> Self {
        Self::new()
    }
}

impl CellTerminal {
    /// A blank screen of the sessions' size.
    pub fn new() -> Self {
        let size = |n: u16| NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN);
        // Unchanged until its first frame (always a whole screen), so no blank screen is sent first.
        Self { terminal: vt100::Parser::new(size(ROWS), size(COLS), 0), changed: false }
    }

    /// Applies a frame (a whole screen starts again from blank). `Ended` changes nothing.
    pub fn apply(&mut self, frame: &ViewerFrame) {
        match frame {
            ViewerFrame::Screen(drawn) => {
                *self = Self::new();
                self.terminal.process(drawn.as_bytes());
                self.changed = true;
            }
            ViewerFrame::Output(bytes) => {
                self.terminal.process(bytes);
                self.changed = true;
            }
            ViewerFrame::Ended(_) => {}
        }
    }

    /// Whether the screen changed since the last [`CellTerminal::render`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The screen as a `cells` message.
    pub fn render(&mut self) -> ViewerMessage {
        self.changed = false;
        let screen = self.terminal.screen();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        let lines = (0..rows).map(|row| row_runs(screen, row, cols)).collect();
        let (row, col) = screen.cursor_position();
        ViewerMessage::Cells { rows, cols, lines, cursor: [row, col] }
    }
}

fn row_runs(screen: &vt100::Screen, row: u16, cols: u16) -> Vec<CellRun> {
    let mut runs: Vec<CellRun> = Vec::new();
    for col in 0..cols {
        let Some(cell) = screen.cell(row, col) else { continue };
        if cell.is_wide_continuation() {
            continue;
        }
        let look = CellRun {
            text: String::new(),
            fg: colour(cell.fgcolor()),
            bg: colour(cell.bgcolor()),
            bold: cell.bold(),
            italic: cell.italic(),
            underline: cell.underline(),
            inverse: cell.inverse(),
        };
        let text = if cell.has_contents() { cell.contents() } else { " " };
        match runs.last_mut() {
            Some(last) if same_look(last, &look) => last.text.push_str(text),
            _ => runs.push(CellRun { text: text.to_owned(), ..look }),
        }
    }
    // Trailing blanks of the default look carry nothing.
    if let Some(last) = runs.last_mut()
        && same_look(last, &CellRun::default())
    {
        let kept = last.text.trim_end_matches(' ').len();
        last.text.truncate(kept);
        if last.text.is_empty() {
            runs.pop();
        }
    }
    runs
}

fn same_look(a: &CellRun, b: &CellRun) -> bool {
    (&a.fg, &a.bg, a.bold, a.italic, a.underline, a.inverse) == (&b.fg, &b.bg, b.bold, b.italic, b.underline, b.inverse)
}

/// The xterm palette: the 16 system colours, the 6x6x6 cube, then 24 greys.
fn colour(c: vt100::Color) -> Option<String> {
    const SYSTEM: [(u8, u8, u8); 16] = [
        (0, 0, 0),
        (205, 0, 0),
        (0, 205, 0),
        (205, 205, 0),
        (0, 0, 238),
        (205, 0, 205),
        (0, 205, 205),
        (229, 229, 229),
        (127, 127, 127),
        (255, 0, 0),
        (0, 255, 0),
        (255, 255, 0),
        (92, 92, 255),
        (255, 0, 255),
        (0, 255, 255),
        (255, 255, 255),
    ];
    let (r, g, b) = match c {
        vt100::Color::Default => return None,
        vt100::Color::Rgb(r, g, b) => (r, g, b),
        vt100::Color::Idx(i) if i < 16 => SYSTEM[usize::from(i)],
        vt100::Color::Idx(i) if i < 232 => {
            let level = |n: u8| if n == 0 { 0 } else { 55 + n * 40 };
            let i = i - 16;
            (level(i / 36), level(i / 6 % 6), level(i % 6))
        }
        vt100::Color::Idx(i) => {
            let grey = 8 + (i - 232) * 10;
            (grey, grey, grey)
        }
    };
    Some(format!("#{r:02x}{g:02x}{b:02x}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn lines(message: ViewerMessage) -> Vec<Vec<CellRun>> {
        match message {
            ViewerMessage::Cells { lines, .. } => lines,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_follow_the_look_of_the_cells_and_drop_trailing_blanks() {
        let mut t = CellTerminal::new();
        assert!(!t.changed(), "nothing to draw before the first frame");
        t.apply(&ViewerFrame::Output("plain \x1b[1;31mred bold\x1b[0m end\r\nnext".into()));
        assert!(t.changed());
        let lines = lines(t.render());
        assert!(!t.changed());
        assert_eq!(lines.len(), usize::from(ROWS));
        let first: Vec<_> = lines[0].iter().map(|r| (r.text.as_str(), r.fg.as_deref(), r.bold)).collect();
        assert_eq!(first, [("plain ", None, false), ("red bold", Some("#cd0000"), true), (" end", None, false)]);
        assert_eq!(lines[1][0].text, "next");
        assert!(lines[2].is_empty());
    }

    #[test]
    fn a_whole_screen_starts_again_and_the_palette_is_xterms() {
        let mut t = CellTerminal::new();
        t.apply(&ViewerFrame::Output("old text".into()));
        t.apply(&ViewerFrame::Screen("\x1b[H\x1b[2J\x1b[38;5;196mnew".into()));
        let lines = lines(t.render());
        assert_eq!(lines[0].len(), 1);
        assert_eq!((lines[0][0].text.as_str(), lines[0][0].fg.as_deref()), ("new", Some("#ff0000")));
        assert_eq!(colour(vt100::Color::Idx(244)).as_deref(), Some("#808080"));
        assert_eq!(colour(vt100::Color::Rgb(1, 2, 3)).as_deref(), Some("#010203"));
    }
}
