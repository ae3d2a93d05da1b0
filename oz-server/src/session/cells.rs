//! The cell view of a session: a viewer with no terminal emulator (the dashboard) is sent the
//! screen as rows of text runs, rendered from the session's own `vt100` screen (one emulator per
//! watched run, however many viewers), at most every [`CELLS_EVERY_MS`] milliseconds however fast
//! the run prints.

use oz_core::wire::session::{CELLS_EVERY_MS, CellRun, ViewerMessage};

use super::ViewerFrame;

/// How often a changing screen is sent to a cell viewer.
pub const CELLS_EVERY: std::time::Duration = std::time::Duration::from_millis(CELLS_EVERY_MS);

/// One cell viewer's place: whether the screen changed since it was last sent one.
#[derive(Debug, Default)]
pub struct CellTerminal {
    changed: bool,
}

impl CellTerminal {
    /// Nothing to send until its first frame (always a whole screen), so no blank screen first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a frame the viewer was sent: the screen changed (an `Ended` changes nothing).
    pub fn apply(&mut self, frame: &ViewerFrame) {
        if !matches!(frame, ViewerFrame::Ended(_)) {
            self.changed = true;
        }
    }

    /// Whether the screen changed since the last [`CellTerminal::render`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// `screen` (the session's, as it is now) as a `cells` message.
    pub fn render(&mut self, screen: &vt100::Screen) -> ViewerMessage {
        self.changed = false;
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

    fn screen(bytes: &str) -> vt100::Parser {
        let size = |n: u16| std::num::NonZeroU16::new(n).unwrap();
        let mut parser = vt100::Parser::new(size(crate::session::ROWS), size(crate::session::COLS), 0);
        parser.process(bytes.as_bytes());
        parser
    }

    #[test]
    fn runs_follow_the_look_of_the_cells_and_drop_trailing_blanks() {
        let mut t = CellTerminal::new();
        assert!(!t.changed(), "nothing to draw before the first frame");
        t.apply(&ViewerFrame::Output("x".into()));
        assert!(t.changed());
        let parser = screen("plain \x1b[1;31mred bold\x1b[0m end\r\nnext");
        let lines = lines(t.render(parser.screen()));
        assert!(!t.changed());
        t.apply(&ViewerFrame::Ended(oz_core::run::RunState::Succeeded));
        assert!(!t.changed(), "an end draws nothing new");
        assert_eq!(lines.len(), usize::from(crate::session::ROWS));
        let first: Vec<_> = lines[0].iter().map(|r| (r.text.as_str(), r.fg.as_deref(), r.bold)).collect();
        assert_eq!(first, [("plain ", None, false), ("red bold", Some("#cd0000"), true), (" end", None, false)]);
        assert_eq!(lines[1][0].text, "next");
        assert!(lines[2].is_empty());
    }

    #[test]
    fn the_palette_is_xterms() {
        let parser = screen("\x1b[38;5;196mnew");
        let lines = lines(CellTerminal::new().render(parser.screen()));
        assert_eq!(lines[0].len(), 1);
        assert_eq!((lines[0][0].text.as_str(), lines[0][0].fg.as_deref()), ("new", Some("#ff0000")));
        assert_eq!(colour(vt100::Color::Idx(244)).as_deref(), Some("#808080"));
        assert_eq!(colour(vt100::Color::Rgb(1, 2, 3)).as_deref(), Some("#010203"));
    }
}
