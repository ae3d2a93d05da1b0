//! Live sessions over real sockets: a viewer's WebSocket on a run whose runner reports its output
//! over HTTP, as a real runner does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::num::NonZeroU16;
use std::time::Duration;

use futures::StreamExt;
use oz_core::wire::session::ViewerMessage;
use serde_json::json;
use support::TestServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

use support::{report, running};

async fn output(t: &TestServer, run_id: &str, token: &str, text: &str) {
    report(t, run_id, token, json!({"event": "output", "stream": "stdout", "text": text})).await;
}

/// Connects a viewer with `key`; the HTTP status if refused. With `small_buffer`, the viewer's
/// socket has a tiny receive buffer, so that a viewer that stops reading holds the server back
/// at once rather than after megabytes of kernel buffers.
async fn viewer(t: &TestServer, run_id: &str, key: &str, small_buffer: bool) -> Result<Ws, u16> {
    let url = format!("{}{}", t.url("").replace("http://", "ws://"), oz_core::wire::session::session_path(run_id));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {key}").parse().unwrap());
    let addr = t.server.url().trim_start_matches("http://").parse::<std::net::SocketAddr>().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small_buffer {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("could not connect: {e}"),
    }
}

/// A terminal the viewer's frames are fed to, as a browser's emulator would be.
struct Terminal {
    screen: vt100::Parser,
    screens_received: usize,
    ended: Option<oz_core::run::RunState>,
}

impl Terminal {
    fn new() -> Self {
        let (rows, cols) = (oz_server::session::ROWS, oz_server::session::COLS);
        Self {
            screen: vt100::Parser::new(NonZeroU16::new(rows).unwrap(), NonZeroU16::new(cols).unwrap(), 0),
            screens_received: 0,
            ended: None,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.screen.screen().contents().lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    /// Reads frames until `done` says so (or the socket closes); within 60 s in all (a hang guard,
    /// not a timing: the server's pings must not keep a stuck viewer reading forever).
    async fn read_until(&mut self, ws: &mut Ws, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done(self) {
            let frame = tokio::time::timeout_at(deadline, ws.next()).await.expect("the frames in time");
            match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ViewerMessage>(&text).unwrap() {
                    ViewerMessage::Screen { rows, cols, data } => {
                        assert_eq!((rows, cols), (oz_server::session::ROWS, oz_server::session::COLS));
                        self.screens_received += 1;
                        self.screen.process(data.as_bytes());
                    }
                    ViewerMessage::Ended { state } => self.ended = Some(state),
                    other => panic!("a terminal viewer is sent no {other:?}"),
                },
                Some(Ok(Message::Binary(bytes))) => self.screen.process(&bytes),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("the session failed: {e}"),
                None => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_mid_run_sees_the_screen_then_the_live_output_then_the_end() {
    let t = TestServer::start().await;
    let (run_id, token, _worker) = running(&t).await;
    output(&t, &run_id, &token, "line one\n").await;
    output(&t, &run_id, &token, "\x1b[1mline two\x1b[0m\n").await;

    // Joining late: the screen as it is, drawn.
    let mut first = viewer(&t, &run_id, &t.key_a, false).await.unwrap();
    let mut seen = Terminal::new();
    seen.read_until(&mut first, |s| s.screens_received == 1).await;
    assert_eq!(seen.lines(), ["line one", "line two"]);
    assert!(seen.screen.screen().cell(1, 0).unwrap().bold(), "the screen keeps its attributes");

    // Then what comes, as it comes.
    output(&t, &run_id, &token, "line three\n").await;
    seen.read_until(&mut first, |s| s.lines().len() == 3).await;
    assert_eq!(seen.lines(), ["line one", "line two", "line three"]);

    // A second viewer sees the same screen, and both see what follows.
    let mut second = viewer(&t, &run_id, &t.key_a, false).await.unwrap();
    let mut also = Terminal::new();
    also.read_until(&mut second, |s| s.screens_received == 1).await;
    assert_eq!(also.lines(), ["line one", "line two", "line three"]);
    output(&t, &run_id, &token, "four").await;
    seen.read_until(&mut first, |s| s.lines().len() == 4).await;
    also.read_until(&mut second, |s| s.lines().len() == 4).await;
    assert_eq!(seen.lines(), also.lines());

    // The end reaches both, and the sockets close.
    report(&t, &run_id, &token, json!({"event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "ok"}))
        .await;
    for (terminal, ws) in [(&mut seen, &mut first), (&mut also, &mut second)] {
        terminal.read_until(ws, |s| s.ended.is_some()).await;
        assert_eq!(terminal.ended, Some(oz_core::run::RunState::Succeeded));
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the socket closes after the end");
    }

    // After the run: its last screen, then its end.
    let mut late = viewer(&t, &run_id, &t.key_a, false).await.unwrap();
    let mut after = Terminal::new();
    after.read_until(&mut late, |s| s.ended.is_some()).await;
    assert_eq!(after.lines(), ["line one", "line two", "line three", "four"]);
    assert_eq!(after.screens_received, 1);
    drop((first, second, late));
    let mut watched = usize::MAX;
    for _ in 0..200 {
        watched = t.server.state().sessions.watched();
        if watched == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(watched, 0, "the run ended and nobody watches: no session is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_those_who_may_read_the_run_may_watch_it() {
    let t = TestServer::start().await;
    let (run_id, token, _worker) = running(&t).await;
    output(&t, &run_id, &token, "secret-looking work\n").await;
    assert_eq!(viewer(&t, &run_id, &t.key_b, false).await.err(), Some(404), "another team's run is not found");
    assert_eq!(viewer(&t, &run_id, "ozk_not-a-key", false).await.err(), Some(401));
    assert_eq!(viewer(&t, "no-such-run", &t.key_a, false).await.err(), Some(404));
    let other = t.create_run(&t.key_a, "nobody", "other").await;
    assert_eq!(viewer(&t, &other, &token, false).await.err(), Some(404), "a run's token sees only its run");
    assert!(viewer(&t, &run_id, &token, false).await.is_ok(), "the run's own token may watch it");
    // Not a WebSocket: a clear error, not a hang.
    let resp = t.http.get(t.url(&format!("/agent/runs/{run_id}/session"))).bearer_auth(&t.key_a).send().await.unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert!(resp.text().await.unwrap().contains("WebSocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_never_holds_the_run_back_and_is_drawn_the_screen_again() {
    let t = TestServer::start().await;
    let (run_id, token, _worker) = running(&t).await;
    let mut stalled = viewer(&t, &run_id, &t.key_a, true).await.unwrap();
    let mut seen = Terminal::new();
    seen.read_until(&mut stalled, |s| s.screens_received == 1).await;

    // The viewer reads nothing while the run writes far more than the live channel holds: every
    // report is still taken (the runner is never made to wait for a viewer).
    let chunks = 4 * oz_server::session::LIVE_CHUNKS;
    let pad = "x".repeat(oz_server::session::MAX_CHUNK);
    for i in 0..chunks {
        output(&t, &run_id, &token, &format!("chunk {i} {pad}\n")).await;
    }
    output(&t, &run_id, &token, "the last line\n").await;
    // The run ends while the viewer is still far behind.
    report(&t, &run_id, &token, json!({"event": "finished", "state": "FAILED", "exit_code": 1, "message": "x"})).await;

    // Reading again, it is drawn the screen as it is (not every chunk it missed), on the run's last
    // line, and then told the run ended (not left waiting).
    seen.read_until(&mut stalled, |s| s.ended.is_some()).await;
    assert_eq!(seen.ended, Some(oz_core::run::RunState::Failed));
    assert_eq!(seen.lines().last().map(String::as_str), Some("the last line"));
    assert!(seen.screens_received >= 2, "a viewer that fell behind is sent the screen again");
}
