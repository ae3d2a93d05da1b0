//! Following a run live: its events as a progress display (text) or as NDJSON, until it ends.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use oz_core::wire::api::{RunItem, RunStreamEvent};
use oz_core::wire::callbacks::RunnerEvent;

use super::{CliError, Format};

/// What following a run saw.
#[derive(Debug)]
pub struct Followed {
    /// Every event, in order.
    pub events: Vec<RunStreamEvent>,
    /// The run as it ended.
    pub run: RunItem,
}

/// One progress line for an event, or `None` for events a person need not see.
pub fn describe(event: &RunStreamEvent) -> Option<String> {
    if event.kind() == "state" {
        let state = event.event["state"].as_str().unwrap_or("?");
        let message = event.event["status_message"]["message"].as_str().unwrap_or("");
        return Some(if message.is_empty() { state.to_owned() } else { format!("{state:<11} {message}") });
    }
    let Some(report) = event.runner_report() else {
        // A kind this client does not know yet: say its name rather than hide it.
        return Some(event.kind().replace('_', " ")).filter(|k| !k.is_empty());
    };
    Some(match report.event {
        RunnerEvent::Started { version } => format!("sandbox ready (runner {version})"),
        RunnerEvent::CloneStarted { repo } => format!("cloning {repo}"),
        RunnerEvent::CloneFinished { repo, millis, ok: true, .. } => format!("cloned {repo} in {millis} ms"),
        RunnerEvent::CloneFinished { repo, error, .. } => {
            format!("clone of {repo} failed: {}", error.unwrap_or_default())
        }
        RunnerEvent::SetupStarted { command, .. } => format!("setup: {command}"),
        RunnerEvent::SetupFinished { exit_code, millis, .. } => format!("setup exited {exit_code} after {millis} ms"),
        RunnerEvent::HarnessStarted { harness } => format!("agent started ({harness} harness)"),
        RunnerEvent::Heartbeat => return None,
        RunnerEvent::Output { text, .. } => {
            let body = text.trim_end_matches('\n');
            if body.is_empty() {
                return None;
            }
            body.lines().map(|l| format!("| {l}")).collect::<Vec<_>>().join("\n")
        }
        RunnerEvent::Artifact(artifact) => {
            format!("artifact: {}", serde_json::to_string(&artifact).unwrap_or_default())
        }
        RunnerEvent::Finished { state, exit_code, message } => match exit_code {
            Some(code) => format!("agent finished: {state} (exit {code}) {message}"),
            None => format!("agent finished: {state} {message}"),
        },
    })
}

/// Follows `run_id` until it ends: in text, a progress line per event with the time since following
/// began; in NDJSON, each event as a line; in JSON, nothing until the end (the caller prints the run).
pub async fn follow(client: &oz_sdk::Client, run_id: &str, format: Format) -> Result<Followed, CliError> {
    let began = Instant::now();
    let mut stream = Box::pin(client.runs().events(run_id));
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event?;
        let mut out = std::io::stdout().lock();
        match format {
            Format::Text => {
                if let Some(line) = describe(&event) {
                    let elapsed = began.elapsed().as_secs_f64();
                    for (i, part) in line.lines().enumerate() {
                        if i == 0 {
                            writeln!(out, "[{elapsed:>7.2}s] {part}")?;
                        } else {
                            writeln!(out, "           {part}")?;
                        }
                    }
                }
            }
            Format::Ndjson => writeln!(
                out,
                "{}",
                serde_json::to_string(&event).map_err(|e| CliError::Output(std::io::Error::other(e)))?
            )?,
            Format::Json => {}
        }
        out.flush()?;
        events.push(event);
    }
    let run = client.runs().get(run_id).await?;
    Ok(Followed { events, run })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: serde_json::Value) -> RunStreamEvent {
        RunStreamEvent { seq: 1, at: jiff::Timestamp::UNIX_EPOCH, run_id: "r".into(), event: value }
    }

    #[test]
    fn describes_states_output_and_skips_empty_output() {
        let state = event(serde_json::json!({"event": "state", "state": "CLAIMED",
            "status_message": {"message": "claimed by worker w1"}}));
        assert_eq!(describe(&state).unwrap(), "CLAIMED     claimed by worker w1");
        let out = event(
            serde_json::json!({"at": "2026-01-01T00:00:00Z", "event": "output", "stream": "stdout", "text": "a\nb\n"}),
        );
        assert_eq!(describe(&out).unwrap(), "| a\n| b");
        let empty =
            serde_json::json!({"at": "2026-01-01T00:00:00Z", "event": "output", "stream": "stdout", "text": ""});
        assert!(describe(&event(empty)).is_none());
        assert_eq!(describe(&event(serde_json::json!({"event": "some_new_thing"}))).unwrap(), "some new thing");
    }
}
