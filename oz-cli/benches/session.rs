//! A live session's latency, through the whole local stack: from a line the agent writes in its
//! sandbox to the same line on a viewer's terminal, with 1 and with 50 viewers; against the run's
//! event stream (Server-Sent Events, the history's live path) in the same run.
//!
//! ```text
//! cargo bench -p oz-cli --bench session [-- LINES]     (default 200 lines per case)
//! cargo bench -p oz-cli --bench session -- throughput [MB] [ROUNDS] [VIEWERS]   (default 50 MB, 3 rounds, 50 viewers)
//! ```
//!
//! `throughput`: the agent writes MB megabytes (100-byte lines) as fast as its pipe takes them, with
//! no viewer and with VIEWERS viewers of its live session, alternately; the agent times its own writing
//! (the pipe drains only as fast as the runner reports and the control plane stores), so a session
//! that slowed the run would show there. Also the process's resident memory before and at the end
//! of each run (the control plane, the worker and the viewers live in this one process).
//!
//! The stack is `oz local`'s (control plane on SQLite, a worker on the Direct backend, the release
//! `oz` as the runner). The agent is a command harness that waits for the viewers, then writes
//! `stamp <wall-clock ns>` lines 20 ms apart; each viewer (`client.runs().watch`, a WebSocket) and
//! one event-stream follower (`client.runs().events`) take the wall clock when the line arrives. The
//! path measured: the harness's pipe, the runner's report (HTTP), the store, the session's follower,
//! the WebSocket; same host clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;
use oz_sdk::SessionFrame;

mod common;
use common::{now_ns, report};

/// The stamps in `text`: the latency of each from its line's time to now.
fn latencies(text: &str, now: u128, out: &mut Vec<Duration>) {
    for line in text.lines() {
        if let Some(at) = line.trim().strip_prefix("stamp ").and_then(|t| t.trim().parse::<u128>().ok()) {
            out.push(Duration::from_nanos(u64::try_from(now.saturating_sub(at)).unwrap_or(u64::MAX)));
        }
    }
}

async fn case(stack: &oz_cli::local::LocalStack, dir: &std::path::Path, viewers: usize, lines: usize) {
    let client = stack.client().unwrap();
    let gate = dir.join(format!("go-{viewers}"));
    let script = format!(
        "while [ ! -e {gate} ]; do sleep 0.01; done; i=0; while [ $i -lt {lines} ]; do echo \"stamp $(date +%s%N)\"; sleep 0.02; i=$((i+1)); done",
        gate = gate.display()
    );
    let config = AgentConfig {
        worker_host: Some(oz_cli::local::LOCAL_WORKER.into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client.runs().create("stamps").agent_config(config).send().await.unwrap();
    // Wait for the agent to be running, so every viewer joins a live session.
    loop {
        let state = client.runs().get(&run.run_id).await.unwrap().state;
        if state == oz_core::run::RunState::InProgress {
            break;
        }
        assert!(!state.is_terminal(), "the run ended before it was watched: {state}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut watching = Vec::new();
    for _ in 0..viewers {
        let mut session = client.runs().watch(&run.run_id).await.unwrap();
        match session.next().await {
            Some(Ok(SessionFrame::Screen { .. })) => {}
            other => panic!("the first frame is the screen: {other:?}"),
        }
        watching.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(frame) = session.next().await {
                if let SessionFrame::Output(bytes) = frame.unwrap() {
                    latencies(&String::from_utf8_lossy(&bytes), now_ns(), &mut seen);
                }
            }
            seen
        }));
    }
    let events = client.runs().events(&run.run_id);
    let following = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut events = Box::pin(events);
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if let Some(text) = event.event.get("text").and_then(|t| t.as_str()) {
                latencies(text, now_ns(), &mut seen);
            }
        }
        seen
    });
    std::fs::write(&gate, b"").unwrap();
    let mut session_latency = Vec::new();
    for viewer in watching {
        let seen = viewer.await.unwrap();
        assert_eq!(seen.len(), lines, "every line reached every viewer");
        session_latency.extend(seen);
    }
    let mut sse_latency = following.await.unwrap();
    report(&format!("event stream (SSE), 1 follower, {viewers} viewer(s) watching"), &mut sse_latency);
    report(&format!("live session, {viewers} viewer(s)"), &mut session_latency);
}

/// Resident memory of this process, in MiB (`VmRSS`).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// One run writing `mb` MB with `viewers` viewers: the agent's own writing time, and the resident
/// memory before and at its end.
async fn flood(
    stack: &oz_cli::local::LocalStack,
    dir: &std::path::Path,
    viewers: usize,
    mb: usize,
) -> (Duration, f64, f64) {
    let client = stack.client().unwrap();
    let gate = dir.join(format!("flood-{viewers}-{}", now_ns()));
    let script = format!(
        "while [ ! -e {gate} ]; do sleep 0.01; done; s=$(date +%s%N); head -c {bytes} /dev/zero | tr '\\0' x | fold -w 99; e=$(date +%s%N); echo \"wrote-ns $((e-s))\"",
        gate = gate.display(),
        bytes = mb * 99 * 1024 * 1024 / 100,
    );
    let config = AgentConfig {
        worker_host: Some(oz_cli::local::LOCAL_WORKER.into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client.runs().create("flood").agent_config(config).send().await.unwrap();
    loop {
        let state = client.runs().get(&run.run_id).await.unwrap().state;
        if state == oz_core::run::RunState::InProgress {
            break;
        }
        assert!(!state.is_terminal(), "the run ended before it was watched: {state}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = rss_mib();
    let mut watching = Vec::new();
    for _ in 0..viewers {
        let mut session = client.runs().watch(&run.run_id).await.unwrap();
        watching.push(tokio::spawn(async move {
            let mut bytes = 0usize;
            while let Some(frame) = session.next().await {
                match frame.unwrap() {
                    SessionFrame::Output(b) => bytes += b.len(),
                    SessionFrame::Screen { .. } => {}
                    _ => {}
                }
            }
            bytes
        }));
    }
    std::fs::write(&gate, b"").unwrap();
    let mut peak = before;
    let mut events = Box::pin(client.runs().events(&run.run_id));
    // The agent's last line, which may come split over two output events.
    let mut tail = String::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        let stdout = event.event.get("stream").and_then(|s| s.as_str()) == Some("stdout");
        if let Some(text) = event.event.get("text").and_then(|t| t.as_str()).filter(|_| stdout) {
            tail.push_str(text);
            let keep = tail.len().saturating_sub(200);
            tail.drain(..tail.ceil_char_boundary(keep));
        }
        peak = peak.max(rss_mib());
    }
    // (fold ends its last line without a newline: the stamp may follow it on the same line.)
    let wrote = tail
        .rfind("wrote-ns ")
        .and_then(|at| tail[at + "wrote-ns ".len()..].split_whitespace().next())
        .and_then(|ns| ns.parse::<u64>().ok())
        .map(Duration::from_nanos);
    for viewer in watching {
        let got = viewer.await.unwrap();
        assert!(got > 0, "every viewer got output");
    }
    (wrote.unwrap_or_else(|| panic!("the agent said how long it wrote: {tail:?}")), before, peak)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("throughput") {
        let mb: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(50);
        let rounds: usize = std::env::args().nth(3).and_then(|a| a.parse().ok()).unwrap_or(3);
        let watchers: usize = std::env::args().nth(4).and_then(|a| a.parse().ok()).unwrap_or(50);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let stack = oz_cli::local::start_with_runner(dir.path(), "127.0.0.1:0", env!("CARGO_BIN_EXE_oz").into())
                .await
                .unwrap();
            println!("| round | viewers | agent wrote {mb} MB in (s) | MB/s | RSS before (MiB) | RSS peak (MiB) |");
            println!("|---|---|---|---|---|---|");
            let mut took_by = [Vec::new(), Vec::new()];
            for round in 1..=rounds {
                for (case, viewers) in [0, watchers].into_iter().enumerate() {
                    let (took, before, peak) = flood(&stack, dir.path(), viewers, mb).await;
                    println!(
                        "| {round} | {viewers} | {:.2} | {:.1} | {before:.0} | {peak:.0} |",
                        took.as_secs_f64(),
                        mb as f64 / took.as_secs_f64()
                    );
                    took_by[case].push(took.as_secs_f64());
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (none, some) = (median(&mut took_by[0]), median(&mut took_by[1]));
            println!(
                "\nmedian: {none:.2} s with no viewer, {some:.2} s with {watchers}: {:+.1}%",
                (some / none - 1.0) * 100.0
            );
            stack.stop().await;
        });
        return;
    }
    let lines: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let stack =
            oz_cli::local::start_with_runner(dir.path(), "127.0.0.1:0", env!("CARGO_BIN_EXE_oz").into()).await.unwrap();
        println!("| line written by the agent to the line received (ms) | p50 | p90 | p99 | n |");
        println!("|---|---|---|---|---|");
        for viewers in [1, 50] {
            case(&stack, dir.path(), viewers, lines).await;
        }
        stack.stop().await;
    });
}
