//! Live sessions: a run's terminal as its viewers see it.
//!
//! A session exists only while someone watches. The first viewer of a run makes it: its terminal
//! screen (a `vt100` emulator, server-side) is rebuilt from the run's stored output, then a task
//! follows the run's events in the store (woken by the [`EventHub`]) and feeds each new output both
//! to the screen and to the viewers. A viewer joining later gets the current screen, drawn by escape
//! codes, then the live bytes from exactly that point (both are taken under the session's lock).
//!
//! Viewers never slow the run: the runner's reports are stored before anything here sees them, and
//! the live bytes go to viewers through a bounded channel ([`LIVE_CHUNKS`]); a viewer that falls
//! further behind is sent the whole screen again instead of what it missed. Under a flood (more
//! than [`RAW_BUDGET`] bytes in a [`FLOOD_WINDOW`]), the session stops sending bytes and sends its
//! screen instead, at most once a window: what a viewer sees is the same, and what the viewers of
//! a run cost no longer grows with what the run prints. The session ends (its task stops, its
//! memory is freed) when its last viewer leaves or the run ends.
//!
//! The history (every event, in order) is `GET /agent/runs/{id}/events`; this is the screen.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

pub mod cells;

use crate::hub::EventHub;
use crate::store::{RunEventRecord, Store, StoreError};

pub use oz_core::wire::session::{COLS, ROWS};
/// How many chunks of output a viewer may be behind before it is sent the screen again.
pub const LIVE_CHUNKS: usize = 256;
/// The largest chunk of output sent to viewers; a larger output is sent in pieces, so the live
/// channel of a watched run holds at most `LIVE_CHUNKS` x `MAX_CHUNK` bytes (4 MiB).
pub const MAX_CHUNK: usize = 16 * 1024;
/// How long a viewer's socket may take to accept a frame before the viewer is let go.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The bytes a session sends as they come in one [`FLOOD_WINDOW`]; past them, until the window
/// ends, it sends its screen at the window's end instead (about 640 KB/s as bytes: far more than
/// anyone reads, and far less than a program can print).
pub const RAW_BUDGET: usize = 64 * 1024;
/// See [`RAW_BUDGET`].
pub const FLOOD_WINDOW: Duration = Duration::from_millis(100);

/// What the live channel carries to a session's viewers, shared (one copy however many viewers).
#[derive(Clone, Debug)]
enum LiveFrame {
    /// Bytes the run wrote.
    Bytes(Bytes),
    /// The whole screen, drawn, in place of bytes withheld under a flood.
    Screen(Arc<str>),
}

/// What a viewer is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewerFrame {
    /// Escape codes that draw the whole screen (clear it first); the live bytes continue from it.
    Screen(String),
    /// Bytes the run wrote, in order, to feed to a terminal after the last frame.
    Output(Bytes),
    /// The run ended: nothing more comes.
    Ended(oz_core::run::RunState),
}

struct Screen {
    terminal: vt100::Parser,
    /// The last event of the run fed to the screen.
    after: i64,
    /// The live frames, while the session's follower runs; `None` once it stopped (the run ended,
    /// or the store failed): dropping the sender ends every viewer's receiver.
    live: Option<broadcast::Sender<LiveFrame>>,
    ended: Option<oz_core::run::RunState>,
    /// The flood window: when it began, and the bytes the run wrote in it.
    window: (tokio::time::Instant, usize),
    /// Whether the screen has bytes no viewer was sent (a flood): the screen goes out at the
    /// window's end.
    withheld: bool,
    /// Whether the window before was a flood too: then this one sends no bytes at all, only its
    /// screen at its end (a flood that goes on costs its viewers ten screens a second, nothing
    /// more), until a window is quiet again.
    flooding: bool,
    /// Bytes withheld under a flood, not yet given to the emulator: they are when the screen is
    /// next drawn, at most the last [`FLOOD_TAIL`] of them ([`Screen::settle`]).
    pending: Vec<u8>,
    /// Whether the session follows the run live (after the history it was made from): only then
    /// does a flood withhold bytes.
    following: bool,
}

/// Of the bytes withheld in one flood window, the most kept for the emulator: the last 256 KiB
/// (thousands of lines), from a line's start. What came before them is skipped only when skipping
/// it cannot change the screen: it and the tail are plain lines (text, tabs, backspaces, colours)
/// and the tail has at least twice the screen's rows of them, so whatever the skipped part drew
/// has scrolled off by the tail's end; its colours are replayed. Anything else (cursor moves, modes,
/// other escapes) is emulated in full. Emulating a flood of log lines byte by byte would cost the
/// server as much as the run that floods; the history keeps every byte either way.
pub const FLOOD_TAIL: usize = 256 * 1024;

impl Screen {
    fn new() -> Self {
        let size = |n: u16| NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN);
        Self {
            // No scrollback: a viewer is drawn the screen; what scrolled off is in the history.
            terminal: vt100::Parser::new(size(ROWS), size(COLS), 0),
            after: 0,
            live: Some(broadcast::channel(LIVE_CHUNKS).0),
            ended: None,
            window: (tokio::time::Instant::now(), 0),
            withheld: false,
            flooding: false,
            pending: Vec::new(),
            following: false,
        }
    }

    /// Feeds one stored event: its output to the screen and the viewers, its end.
    fn feed(&mut self, event: &RunEventRecord) {
        if event.seq <= self.after {
            return;
        }
        self.after = event.seq;
        if let Some(bytes) = terminal_bytes(event) {
            if !self.following {
                self.terminal.process(&bytes);
                return;
            }
            let now = tokio::time::Instant::now();
            if !self.withheld && now >= self.window.0 + FLOOD_WINDOW {
                // A quiet window passed: bytes again.
                self.window = (now, 0);
                self.flooding = false;
            }
            self.window.1 += bytes.len();
            if self.flooding || self.withheld || self.window.1 > RAW_BUDGET {
                self.withhold(&bytes);
            } else if let Some(live) = &self.live {
                self.terminal.process(&bytes);
                let mut rest = bytes;
                while !rest.is_empty() {
                    let piece = rest.split_to(rest.len().min(MAX_CHUNK));
                    let _ = live.send(LiveFrame::Bytes(piece));
                }
            }
        } else if event.kind() == "state" {
            // The last state change decides: a run continued after its end goes on.
            self.ended = event.terminal_state();
        }
    }

    /// Keeps `bytes` from the viewers until the window ends; of what a window withholds, only the
    /// last [`FLOOD_TAIL`] bytes are kept for the emulator.
    fn withhold(&mut self, bytes: &[u8]) {
        self.withheld = true;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() > 2 * FLOOD_TAIL {
            self.trim_pending();
        }
    }

    fn trim_pending(&mut self) {
        let Some(excess) = self.pending.len().checked_sub(FLOOD_TAIL).filter(|e| *e > 0) else { return };
        // From a line's start, so no escape sequence is cut in two.
        let cut = self.pending[excess..].iter().position(|b| *b == b'\n').map(|at| excess + at + 1);
        let skip = cut.and_then(|cut| {
            let (skipped, kept) = self.pending.split_at(cut);
            let enough_lines = kept.iter().filter(|b| **b == b'\n').count() >= 2 * usize::from(ROWS);
            (enough_lines && plain_lines(kept).is_some()).then(|| plain_lines(skipped)).flatten().map(|c| (cut, c))
        });
        match skip {
            Some((cut, colours)) => {
                self.pending.splice(..cut, colours);
            }
            None => {
                // Not safe to skip: emulated now, in full (the emulator takes a sequence cut in
                // two across calls).
                let upto = cut.unwrap_or(excess);
                self.terminal.process(&self.pending[..upto]);
                self.pending.drain(..upto);
            }
        }
    }

    /// Gives the emulator what was withheld (its last [`FLOOD_TAIL`] bytes), so the screen is
    /// the run's as it is now.
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.trim_pending();
        self.terminal.process(&self.pending);
        self.pending.clear();
    }

    /// When the screen withheld under a flood is due to its viewers (`None`: nothing withheld).
    fn screen_due(&self) -> Option<tokio::time::Instant> {
        self.withheld.then_some(self.window.0 + FLOOD_WINDOW)
    }

    /// Sends the screen in place of the bytes withheld under a flood, and opens a new window.
    fn send_withheld(&mut self) {
        if !std::mem::replace(&mut self.withheld, false) {
            return;
        }
        self.flooding = self.window.1 > RAW_BUDGET;
        self.window = (tokio::time::Instant::now(), 0);
        let drawn = self.drawn();
        if let Some(live) = &self.live {
            let _ = live.send(LiveFrame::Screen(drawn.into()));
        }
    }

    /// What a viewer joining now is sent first, and the live frames after it (`None` once the
    /// follower stopped: then the frames end with the run's end, if known).
    fn join(&mut self) -> (VecDeque<ViewerFrame>, Option<broadcast::Receiver<LiveFrame>>) {
        let screen = ViewerFrame::Screen(self.drawn());
        match (&self.live, self.ended) {
            (Some(live), None) => (VecDeque::from([screen]), Some(live.subscribe())),
            (_, Some(state)) => (VecDeque::from([screen, ViewerFrame::Ended(state)]), None),
            (None, None) => (VecDeque::from([screen]), None),
        }
    }

    fn drawn(&mut self) -> String {
        self.settle();
        // Reset attributes and clear, then the screen as it is.
        format!("\x1b[0m\x1b[H\x1b[2J{}", self.terminal.screen().state_formatted())
    }
}

/// If `bytes` are plain lines (printable text, CR, LF, tab, backspace, and colour sequences
/// `ESC [ ... m`), the colour sequences that leave a terminal's attributes as skipping them would
/// not (a reset and what came after the last one, or all of them when none resets); `None` for
/// anything else, or when that is more than 4 KiB.
fn plain_lines(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut colours = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x1b => {
                if bytes.get(i + 1) != Some(&b'[') {
                    return None;
                }
                let params = i + 2;
                let end =
                    params + bytes[params..].iter().position(|b| !(b.is_ascii_digit() || *b == b';' || *b == b':'))?;
                if bytes[end] != b'm' {
                    return None;
                }
                let sequence = &bytes[i..=end];
                if matches!(&bytes[params..end], b"" | b"0") {
                    colours.clear();
                    colours.extend_from_slice(b"\x1b[0m");
                } else {
                    colours.extend_from_slice(sequence);
                }
                if colours.len() > 4096 {
                    return None;
                }
                i = end + 1;
            }
            b'\r' | b'\n' | b'\t' | 0x08 => i += 1,
            0x00..=0x1f | 0x7f => return None,
            _ => i += 1,
        }
    }
    Some(colours)
}

/// The bytes an output event puts on the terminal. Output reported from pipes has bare `\n` line
/// ends, which a terminal would not bring back to the first column; a terminal's line discipline
/// (`ONLCR`) adds the `\r`, so it is added here.
fn terminal_bytes(event: &RunEventRecord) -> Option<Bytes> {
    if event.kind() != "output" {
        return None;
    }
    let text = event.body.get("text").and_then(|t| t.as_str())?;
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut previous = 0u8;
    for &b in text.as_bytes() {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    Some(Bytes::from(out))
}

/// One viewer's place in a session.
pub struct Viewer {
    screen: Arc<Mutex<Screen>>,
    /// The live frames; `None` once the run's end is known.
    live: Option<broadcast::Receiver<LiveFrame>>,
    /// What to send before anything live.
    pending: VecDeque<ViewerFrame>,
    hub: SessionHub,
    run_id: String,
}

impl Viewer {
    /// The next frame for this viewer; `None` after [`ViewerFrame::Ended`].
    pub async fn next(&mut self) -> Option<ViewerFrame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        let live = self.live.as_mut()?;
        match live.recv().await {
            Ok(LiveFrame::Bytes(bytes)) => Some(ViewerFrame::Output(bytes)),
            Ok(LiveFrame::Screen(drawn)) => Some(ViewerFrame::Screen(drawn.to_string())),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too far behind: the screen as it is now, and the live bytes from there (or the
                // end, if the run ended meanwhile).
                let (pending, live) = lock(&self.screen).join();
                self.pending = pending;
                self.live = live;
                self.pending.pop_front()
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The session's follower stopped: the run ended, or the store failed.
                self.live = None;
                lock(&self.screen).ended.map(ViewerFrame::Ended)
            }
        }
    }
}

impl Viewer {
    /// The session's screen as it is now, as a `cells` message for `cells` (a viewer with no
    /// emulator of its own: one emulator per session serves them all).
    pub fn cells(&self, cells: &mut cells::CellTerminal) -> oz_core::wire::session::ViewerMessage {
        let mut screen = lock(&self.screen);
        screen.settle();
        cells.render(screen.terminal.screen())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.hub.left(&self.run_id, &self.screen);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Live {
    screen: Arc<Mutex<Screen>>,
    viewers: usize,
}

/// The sessions being watched, by run.
#[derive(Clone)]
pub struct SessionHub {
    store: Arc<dyn Store>,
    events: EventHub,
    live: Arc<Mutex<HashMap<String, Live>>>,
    /// One lock per run whose session is being made, so two first viewers of a run make one
    /// (and making one run's session never waits for another's).
    making: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SessionHub {
    /// Sessions over the runs in `store`, woken by `events`.
    pub fn new(store: Arc<dyn Store>, events: EventHub) -> Self {
        Self { store, events, live: Default::default(), making: Default::default() }
    }

    /// How many runs are being watched now.
    pub fn watched(&self) -> usize {
        lock(&self.live).len()
    }

    /// Joins run `run_id`'s session, making it if nobody watches yet: the first frame is the
    /// current screen. A run that has ended is drawn as it ended, with no session kept.
    pub async fn attach(&self, run_id: &str) -> Result<Viewer, StoreError> {
        let making = lock(&self.making).entry(run_id.to_owned()).or_default().clone();
        let made = {
            let _one_maker = making.lock().await;
            self.join_or_make(run_id).await
        };
        {
            // The run's making lock goes once nobody else waits on it.
            let mut locks = lock(&self.making);
            if Arc::strong_count(&making) <= 2 {
                locks.remove(run_id);
            }
        }
        let screen = made?;
        let (pending, live) = lock(&screen).join();
        Ok(Viewer { screen, live, pending, hub: self.clone(), run_id: run_id.to_owned() })
    }

    async fn join_or_make(&self, run_id: &str) -> Result<Arc<Mutex<Screen>>, StoreError> {
        if let Some(live) = lock(&self.live).get_mut(run_id) {
            live.viewers += 1;
            return Ok(live.screen.clone());
        }
        let screen = Arc::new(Mutex::new(Screen::new()));
        // Subscribed before reading the store, so nothing falls between the two.
        let woken = self.events.subscribe(run_id);
        catch_up(&*self.store, run_id, &screen).await?;
        let ended = {
            let mut s = lock(&screen);
            if s.ended.is_some() {
                s.live = None;
            }
            // From here on, live: a flood withholds its bytes from the viewers.
            s.following = true;
            s.ended.is_some()
        };
        if !ended {
            lock(&self.live).insert(run_id.to_owned(), Live { screen: screen.clone(), viewers: 1 });
            tokio::spawn(follow(self.clone(), run_id.to_owned(), screen.clone(), woken));
        }
        Ok(screen)
    }

    fn left(&self, run_id: &str, screen: &Arc<Mutex<Screen>>) {
        let mut live = lock(&self.live);
        if let Some(entry) = live.get_mut(run_id)
            && Arc::ptr_eq(&entry.screen, screen)
        {
            entry.viewers = entry.viewers.saturating_sub(1);
            if entry.viewers == 0 {
                live.remove(run_id);
            }
        }
    }

    fn is_watched(&self, run_id: &str, screen: &Arc<Mutex<Screen>>) -> bool {
        lock(&self.live).get(run_id).is_some_and(|l| Arc::ptr_eq(&l.screen, screen))
    }
}

/// Feeds the stored events of `run_id` after the screen's last to the screen.
async fn catch_up(store: &dyn Store, run_id: &str, screen: &Arc<Mutex<Screen>>) -> Result<(), StoreError> {
    loop {
        let after = lock(screen).after;
        let batch = store.events(run_id, after, 500).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut s = lock(screen);
        for event in &batch {
            s.feed(event);
        }
    }
}

/// Feeds `first` and the events published after it that are already queued, while each is the
/// next of the run; false at a gap or a lag (the store has what fell between).
fn feed_published(
    screen: &Mutex<Screen>,
    first: RunEventRecord,
    woken: &mut broadcast::Receiver<RunEventRecord>,
) -> bool {
    let mut next = Ok(first);
    loop {
        match next {
            Ok(event) => {
                let mut s = lock(screen);
                if event.seq > s.after + 1 {
                    return false;
                }
                s.feed(&event);
            }
            Err(broadcast::error::TryRecvError::Empty) => return true,
            Err(_) => return false,
        }
        next = woken.try_recv();
    }
}

/// How many looks in a row at a run whose row has ended, with no state event stored, before its
/// session ends with the row's state (the row changes before its state event is stored; a crash
/// between the two leaves no event).
const LOOKS_BEFORE_ENDING_FROM_THE_ROW: u8 = 3;

/// Follows the run for its session until it ends or nobody watches; then drops the live sender,
/// which ends every viewer's receiver.
async fn follow(
    hub: SessionHub,
    run_id: String,
    screen: Arc<Mutex<Screen>>,
    mut woken: broadcast::Receiver<RunEventRecord>,
) {
    let mut looks_at_an_ended_row = 0u8;
    loop {
        if lock(&screen).ended.is_some() || !hub.is_watched(&run_id, &screen) {
            break;
        }
        // A wake-up, the screen withheld under a flood falling due, or a look every few seconds
        // (a wake-up may be missed when lagging).
        let look = tokio::time::Instant::now() + Duration::from_secs(2);
        let due = lock(&screen).screen_due();
        let waited = tokio::time::timeout_at(due.map_or(look, |d| d.min(look)), woken.recv()).await;
        if let Ok(Err(broadcast::error::RecvError::Closed)) = waited {
            woken = hub.events.subscribe(&run_id);
        }
        // The events published in order are fed as they came (no store read); a gap, a lag or a
        // silence sends the session to the store, which has every event in order.
        let timed_out = waited.is_err();
        let in_order = match waited {
            Ok(Ok(first)) => feed_published(&screen, first, &mut woken),
            _ => false,
        };
        if !in_order && let Err(e) = catch_up(&*hub.store, &run_id, &screen).await {
            tracing::warn!(run_id, error = %e, "a live session could not read the run's events; its viewers are let go");
            break;
        }
        {
            let mut s = lock(&screen);
            if s.screen_due().is_some_and(|d| d <= tokio::time::Instant::now()) {
                s.send_withheld();
            }
        }
        let looked = timed_out && due.is_none_or(|d| d >= look);
        if looked && lock(&screen).ended.is_none() {
            match hub.store.run_by_id(&run_id).await {
                Ok(Some(run)) if run.state.is_terminal() => {
                    looks_at_an_ended_row += 1;
                    if looks_at_an_ended_row >= LOOKS_BEFORE_ENDING_FROM_THE_ROW {
                        lock(&screen).ended = Some(run.state);
                    }
                }
                Ok(Some(_)) => looks_at_an_ended_row = 0,
                Ok(None) | Err(_) => break,
            }
        }
    }
    {
        // What its viewers were not sent yet goes out before their end.
        let mut s = lock(&screen);
        s.send_withheld();
        s.live = None;
    }
    lock(&hub.live).retain(|id, l| id != &run_id || !Arc::ptr_eq(&l.screen, &screen));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(seq: i64, text: &str) -> RunEventRecord {
        RunEventRecord {
            run_id: "r".into(),
            seq,
            at: jiff::Timestamp::now(),
            body: json!({"event": "output", "stream": "stdout", "text": text}),
        }
    }

    #[test]
    fn output_from_pipes_lands_at_the_start_of_each_line_and_is_fed_once() {
        let mut screen = Screen::new();
        screen.feed(&output(1, "one\ntwo\r\nthree"));
        screen.feed(&output(1, "again"));
        let contents = screen.terminal.screen().contents();
        assert_eq!(contents.lines().collect::<Vec<_>>(), ["one", "two", "three"]);
        assert_eq!(screen.after, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_flood_viewers_are_sent_the_screen_instead_of_the_bytes_and_see_the_same() {
        let mut screen = Screen::new();
        screen.following = true;
        let mut live = screen.live.as_ref().unwrap().subscribe();
        let mut viewer = vt100::Parser::new(NonZeroU16::new(ROWS).unwrap(), NonZeroU16::new(COLS).unwrap(), 0);
        let mut take = |live: &mut broadcast::Receiver<LiveFrame>| {
            let mut kinds = Vec::new();
            while let Ok(frame) = live.try_recv() {
                match frame {
                    LiveFrame::Bytes(b) => {
                        viewer.process(&b);
                        kinds.push("bytes");
                    }
                    LiveFrame::Screen(drawn) => {
                        viewer.process(drawn.as_bytes());
                        kinds.push("screen");
                    }
                }
            }
            (kinds, viewer.screen().contents())
        };
        // Within the budget: the bytes, as they come.
        screen.feed(&output(1, "\x1b[1mhello\x1b[0m\n"));
        assert_eq!(take(&mut live).0, ["bytes"]);
        assert_eq!(screen.screen_due(), None);
        // A flood: its bytes up to the budget, then nothing more until the window ends, then the
        // screen, once.
        let line = format!("{}\n", "x".repeat(99));
        for seq in 2..39 {
            screen.feed(&output(seq, &format!("{seq} {}", line.repeat(50))));
        }
        screen.feed(&output(39, "the flood's last line\n"));
        let (kinds, _) = take(&mut live);
        assert!(kinds.iter().all(|k| *k == "bytes") && kinds.len() * 5 * 1024 <= RAW_BUDGET, "{kinds:?}");
        let due = screen.screen_due().expect("the screen is due");
        tokio::time::advance(FLOOD_WINDOW).await;
        assert!(due <= tokio::time::Instant::now());
        screen.send_withheld();
        let (kinds, seen) = take(&mut live);
        assert_eq!(kinds, ["screen"]);
        assert_eq!(seen, screen.terminal.screen().contents(), "the viewer sees what the session does");
        assert!(seen.contains("the flood's last line"), "{seen}");
        // The flood goes on: no bytes at all now, the screen at the window's end.
        screen.feed(&output(40, &line.repeat(1000)));
        assert_eq!(take(&mut live).0, Vec::<&str>::new());
        tokio::time::advance(FLOOD_WINDOW).await;
        screen.send_withheld();
        assert_eq!(take(&mut live).0, ["screen"]);
        // Quiet: after a window with little output, bytes again, from where the screen left them.
        screen.feed(&output(41, "almost quiet\n"));
        tokio::time::advance(FLOOD_WINDOW).await;
        screen.send_withheld();
        assert_eq!(take(&mut live).0, ["screen"]);
        tokio::time::advance(FLOOD_WINDOW).await;
        screen.feed(&output(42, "quiet again\n"));
        let (kinds, seen) = take(&mut live);
        assert_eq!(kinds, ["bytes"]);
        assert_eq!(seen, screen.terminal.screen().contents());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_far_larger_than_the_tail_draws_the_screen_a_full_emulation_does() {
        let mut screen = Screen::new();
        screen.following = true;
        let mut full = vt100::Parser::new(NonZeroU16::new(ROWS).unwrap(), NonZeroU16::new(COLS).unwrap(), 0);
        for seq in 1..=200i64 {
            let text: String =
                (0..100).map(|i| format!("\x1b[32mline {seq}.{i}\x1b[0m {}\n", "y".repeat(80))).collect();
            full.process(text.replace('\n', "\r\n").as_bytes());
            screen.feed(&output(seq, &text));
        }
        assert!(screen.pending.len() <= 2 * FLOOD_TAIL, "what is withheld stays bounded");
        tokio::time::advance(FLOOD_WINDOW).await;
        screen.send_withheld();
        assert_eq!(screen.terminal.screen().contents(), full.screen().contents());
        assert_eq!(screen.terminal.screen().contents_formatted(), full.screen().contents_formatted());
    }

    /// Floods of every shape draw, at the window's end, the screen a terminal fed every byte shows.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_any_shape_draws_the_screen_a_full_emulation_does() {
        let tui = |n: usize| {
            let rows: String =
                (0..40).map(|r| format!("\x1b[{};1H\x1b[7mframe {n} row {r}\x1b[0m\x1b[K", r + 1)).collect();
            format!("\x1b[?1049h\x1b[H{rows}{}", "z".repeat(3000))
        };
        type Flood = Box<dyn Fn(usize) -> String>;
        let floods: [(&str, Flood); 4] = [
            ("cursor-addressed redraws", Box::new(tui)),
            ("a progress bar, no line ends", Box::new(|n| format!("\r[{:>6}] {}", n, "#".repeat(n % 90 + 4000)))),
            (
                "lines coloured once, never reset",
                Box::new(|n| {
                    let colour = if n == 1 { "\x1b[1;33m" } else { "" };
                    format!(
                        "{colour}{}",
                        (0..60).map(|i| format!("log {n}.{i} {}\n", "w".repeat(60))).collect::<String>()
                    )
                }),
            ),
            (
                "lines with a scroll region set in the middle",
                Box::new(|n| {
                    let region = if n == 150 { "\x1b[5;30r" } else { "" };
                    format!("{region}{}", (0..60).map(|i| format!("{n}.{i} {}\n", "v".repeat(70))).collect::<String>())
                }),
            ),
        ];
        for (shape, flood) in floods {
            let mut screen = Screen::new();
            screen.following = true;
            let mut full = vt100::Parser::new(NonZeroU16::new(ROWS).unwrap(), NonZeroU16::new(COLS).unwrap(), 0);
            for n in 1..=300usize {
                let text = flood(n);
                let event = output(i64::try_from(n).unwrap(), &text);
                full.process(&terminal_bytes(&event).unwrap());
                screen.feed(&event);
            }
            assert!(screen.pending.len() <= 2 * FLOOD_TAIL + 8192, "{shape}: bounded");
            tokio::time::advance(FLOOD_WINDOW).await;
            screen.send_withheld();
            assert_eq!(screen.terminal.screen().contents_formatted(), full.screen().contents_formatted(), "{shape}");
            assert_eq!(screen.terminal.screen().cursor_position(), full.screen().cursor_position(), "{shape}");
        }
    }

    #[test]
    fn plain_lines_are_text_and_colours_and_say_what_colours_skipping_them_would_lose() {
        assert_eq!(plain_lines(b"a\tb\r\nc\x08\n").unwrap(), b"");
        assert_eq!(plain_lines(b"\x1b[1m\x1b[31mred\n").unwrap(), b"\x1b[1m\x1b[31m");
        assert_eq!(plain_lines(b"\x1b[31mred\x1b[0m\n\x1b[32mgreen").unwrap(), b"\x1b[0m\x1b[32m");
        assert_eq!(plain_lines(b"\x1b[31mx\x1b[m").unwrap(), b"\x1b[0m");
        for not_plain in [&b"\x1b[2J"[..], b"\x1b[?25l", b"\x1b]0;title\x07", b"\x1b[31", b"\x0e", b"\x1b7"] {
            assert_eq!(plain_lines(not_plain), None, "{not_plain:?}");
        }
    }

    #[test]
    fn the_drawn_screen_reproduces_the_screen_on_another_terminal() {
        let mut screen = Screen::new();
        screen.feed(&output(1, "\x1b[31mred\x1b[0m plain\n"));
        for i in 0..100 {
            screen.feed(&output(2 + i, &format!("line {i}\n")));
        }
        let mut other = vt100::Parser::new(NonZeroU16::new(ROWS).unwrap(), NonZeroU16::new(COLS).unwrap(), 0);
        other.process(b"garbage that must be cleared");
        other.process(screen.drawn().as_bytes());
        assert_eq!(other.screen().contents(), screen.terminal.screen().contents());
        assert!(other.screen().contents().contains("line 99"));
    }
}
