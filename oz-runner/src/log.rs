//! The runner's event log: every event is printed (human text or NDJSON), and reported to the
//! control plane. Every event passes through the redactor first, all of its text (setup command
//! lines, clone errors, messages, artifacts, output), so no registered secret is printed or sent,
//! whatever the caller put in it.
//!
//! Reports go through an outbox: each gets the next sequence number (the control plane stores a
//! `(run, seq)` once), and one task sends them in order, resending each until the control plane
//! takes it, across its restarts and partitions. The outbox holds at most [`OUTBOX_REPORTS`]
//! reports; beyond that, the run waits for room (its output pipes fill and slow the agent), so
//! nothing is dropped and memory stays bounded. [`EventLog::close`] waits for it to drain.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use oz_core::redact::{Redactor, StreamRedactor};
use oz_core::wire::callbacks::{RunnerEvent, RunnerReport};
use tokio::sync::Mutex;
use tracing::warn;

use crate::args::OutputFormat;
use crate::control::{ControlPlane, Disposition};

/// The most reports waiting to be sent (output chunks are at most 64 KiB each).
pub const OUTBOX_REPORTS: usize = 1024;

/// How long [`EventLog::close`] waits, by default, for the outbox to drain (a control plane that is
/// restarting or cut off for a while still gets the whole history).
pub const FLUSH_WITHIN: Duration = Duration::from_secs(120);

/// The longest pause between two attempts at one report.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Prints and reports the run's events.
pub struct EventLog {
    format: OutputFormat,
    redactor: Redactor,
    /// Serializes printing and numbering, so the outbox's order is the printed order.
    print_lock: Mutex<()>,
    next_seq: AtomicU64,
    outbox: Mutex<Option<tokio::sync::mpsc::Sender<RunnerReport>>>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EventLog {
    /// A log in `format`, reporting to `control`, masking `redactor`'s secrets. Must be made inside
    /// a Tokio runtime (its outbox's sender is a task).
    pub fn new(format: OutputFormat, control: Arc<dyn ControlPlane>, redactor: Redactor) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX_REPORTS);
        let sender = tokio::spawn(deliver(control, rx, redactor.clone()));
        Arc::new(Self {
            format,
            redactor,
            print_lock: Mutex::new(()),
            next_seq: AtomicU64::new(1),
            outbox: Mutex::new(Some(tx)),
            sender: Mutex::new(Some(sender)),
        })
    }

    /// Stops taking reports and waits up to `within` for the outbox to drain; says on stderr how
    /// many could not be delivered if it did not.
    pub async fn close(&self, within: Duration) {
        drop(self.outbox.lock().await.take());
        let Some(sender) = self.sender.lock().await.take() else { return };
        let abort = sender.abort_handle();
        if tokio::time::timeout(within, sender).await.is_err() {
            abort.abort();
            warn!(
                "reporting to the control plane failed: it did not take the run's last reports within {}s; they are lost",
                within.as_secs()
            );
        }
    }

    /// The redactor, for output streams.
    pub fn stream_redactor(&self) -> StreamRedactor {
        StreamRedactor::new(self.redactor.clone())
    }

    /// Masks secrets in a message.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact_str(text)
    }

    /// Records an event, with every secret in its text masked.
    pub async fn emit(&self, event: RunnerEvent) {
        self.record(event, true).await;
    }

    /// Numbers, prints (if `print`) and queues one event, in that order under one lock.
    async fn record(&self, event: RunnerEvent, print: bool) {
        let event = self.redact_event(event);
        let _guard = self.print_lock.lock().await;
        let report =
            RunnerReport { at: Timestamp::now(), seq: Some(self.next_seq.fetch_add(1, Ordering::Relaxed)), event };
        if print {
            match self.format {
                OutputFormat::Ndjson | OutputFormat::Json => {
                    if let Ok(line) = serde_json::to_string(&report) {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                }
                OutputFormat::Text => {
                    if let Some(text) = human(&report.event) {
                        let _ = writeln!(std::io::stderr().lock(), "oz: {text}");
                    }
                }
            }
        }
        let outbox = self.outbox.lock().await.clone();
        if let Some(outbox) = outbox {
            // Waits for room when the outbox is full: back-pressure, never a dropped report.
            let _ = outbox.send(report).await;
        }
    }

    /// `event` with every secret in its text masked. The walk goes over the event's JSON form, so a
    /// variant or field added later is covered without touching this; only the tags (which variant,
    /// which state) are left alone, so the result still reads back as an event. Should masking make
    /// it unreadable anyway, the masked JSON is reported as stderr output instead: never in the clear.
    pub fn redact_event(&self, event: RunnerEvent) -> RunnerEvent {
        if self.redactor.is_empty() {
            return event;
        }
        let fields = match event {
            // The common case, and the largest: no need for the JSON walk.
            RunnerEvent::Output { stream, text } => return RunnerEvent::Output { stream, text: self.redact(&text) },
            event => match serde_json::to_value(&event) {
                Ok(serde_json::Value::Object(fields)) => fields,
                _ => {
                    return RunnerEvent::Output {
                        stream: Stream::Stderr.name().into(),
                        text: "oz: an event that could not be checked for secrets was dropped\n".into(),
                    };
                }
            },
        };
        let fields: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(key, value)| {
                let value = if EVENT_TAGS.contains(&key.as_str()) { value } else { self.redact_value(value) };
                (key, value)
            })
            .collect();
        let masked = serde_json::Value::Object(fields);
        match serde_json::from_value(masked.clone()) {
            Ok(event) => event,
            Err(_) => RunnerEvent::Output { stream: Stream::Stderr.name().into(), text: format!("oz: {masked}\n") },
        }
    }

    fn redact_value(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(text) => Value::String(self.redact(&text)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.redact_value(v)).collect()),
            Value::Object(fields) => {
                Value::Object(fields.into_iter().map(|(k, v)| (self.redact(&k), self.redact_value(v))).collect())
            }
            other => other,
        }
    }

    /// A note for the person watching (text mode only; not reported).
    pub fn note(&self, text: &str) {
        if self.format == OutputFormat::Text {
            let _ = writeln!(std::io::stderr().lock(), "oz: {}", self.redact(text));
        } else {
            warn!("{}", self.redact(text));
        }
    }

    /// A note that belongs in the run's history too: printed as [`EventLog::note`] is, and reported
    /// as a line of the runner's stderr.
    pub async fn announce(&self, text: &str) {
        if self.format == OutputFormat::Text {
            self.note(text);
        }
        self.emit(RunnerEvent::Output { stream: Stream::Stderr.name().into(), text: format!("oz: {text}\n") }).await;
    }

    /// Output of a setup command or the harness, already redacted by the caller's stream redactor.
    pub async fn output(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.format == OutputFormat::Text {
            let _guard = self.print_lock.lock().await;
            let _ = match stream {
                Stream::Stdout => {
                    std::io::stdout().lock().write_all(bytes).and_then(|()| std::io::stdout().lock().flush())
                }
                Stream::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        }
        let event =
            RunnerEvent::Output { stream: stream.name().into(), text: String::from_utf8_lossy(bytes).into_owned() };
        // In text mode it was printed raw already; only report it.
        self.record(event, self.format != OutputFormat::Text).await;
    }
}

/// The outbox's sender: each report in order, again and again until the control plane takes it,
/// skips it (refused as such) or the run's token is dead (then the rest is dropped, said once).
async fn deliver(
    control: Arc<dyn ControlPlane>,
    mut rx: tokio::sync::mpsc::Receiver<RunnerReport>,
    redactor: Redactor,
) {
    let mut failing = false;
    while let Some(report) = rx.recv().await {
        let mut pause = Duration::from_millis(100);
        loop {
            let Err(e) = control.report(&report).await else {
                if std::mem::take(&mut failing) {
                    tracing::info!("the control plane takes reports again");
                }
                break;
            };
            let why = redactor.redact_str(&oz_core::error::error_chain(&e));
            match e.disposition() {
                Disposition::Retry => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!("reporting to the control plane failed; resending until it answers: {why}");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Disposition::Skip => {
                    warn!(seq = report.seq, "the control plane refused a report; it is dropped: {why}");
                    break;
                }
                Disposition::GiveUp => {
                    warn!(
                        "reporting to the control plane failed for good; the run's further reports are dropped: {why}"
                    );
                    rx.close();
                    while rx.recv().await.is_some() {}
                    return;
                }
            }
        }
    }
}

/// The top-level keys of an event's JSON that are tags (the variant, the artifact's kind, the run
/// state), never free text.
const EVENT_TAGS: [&str; 3] = ["event", "artifact_type", "state"];

fn human(event: &RunnerEvent) -> Option<String> {
    Some(match event {
        RunnerEvent::Started { version } => format!("agent runner {version} starting"),
        RunnerEvent::CloneStarted { repo } => format!("cloning {repo}"),
        RunnerEvent::CloneFinished { repo, millis, ok: true, .. } => format!("cloned {repo} in {millis} ms"),
        RunnerEvent::CloneFinished { repo, error, .. } => {
            format!("could not clone {repo}: {}", error.as_deref().unwrap_or("unknown error"))
        }
        RunnerEvent::SetupStarted { index, command } => format!("setup[{index}]: {command}"),
        RunnerEvent::SetupFinished { index, exit_code, millis } => {
            format!("setup[{index}] exited {exit_code} after {millis} ms")
        }
        RunnerEvent::HarnessStarted { harness } => format!("starting the {harness} harness"),
        RunnerEvent::Output { .. } | RunnerEvent::Heartbeat => return None,
        RunnerEvent::Artifact(a) => {
            format!("artifact: {}", serde_json::to_string(a).unwrap_or_default())
        }
        RunnerEvent::Finished { state, exit_code, message } => match exit_code {
            Some(code) => format!("run {state} (exit {code}): {message}"),
            None => format!("run {state}: {message}"),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use oz_core::run::RunState;
    use oz_core::wire::callbacks::Artifact;

    use super::*;
    use crate::control::recording::Recorder;

    const SECRET: &str = "hunter2-s3cr3t-value";

    fn log_with(format: OutputFormat) -> (Arc<EventLog>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        (EventLog::new(format, recorder.clone(), Redactor::new([SECRET])), recorder)
    }

    #[tokio::test]
    async fn a_setup_command_holding_a_secret_is_reported_masked() {
        for format in [OutputFormat::Text, OutputFormat::Ndjson] {
            let (log, recorder) = log_with(format);
            let command = format!("curl -H 'Authorization: Bearer {SECRET}' https://example.com/setup.sh | sh");
            log.emit(RunnerEvent::SetupStarted { index: 0, command }).await;
            log.close(Duration::from_secs(5)).await;
            let reports = recorder.0.lock().unwrap().clone();
            assert_eq!(
                reports[0].event,
                RunnerEvent::SetupStarted {
                    index: 0,
                    command: "curl -H 'Authorization: Bearer [REDACTED]' https://example.com/setup.sh | sh".into()
                },
                "{format:?}"
            );
        }
    }

    /// Every kind of event text, however the caller built it: nothing reported holds the secret,
    /// and the events keep their kind and state.
    #[tokio::test]
    async fn every_event_text_is_masked_before_it_is_reported() {
        let (log, recorder) = log_with(OutputFormat::Ndjson);
        let events = vec![
            RunnerEvent::CloneStarted { repo: format!("acme/{SECRET}") },
            RunnerEvent::CloneFinished { repo: "acme/app".into(), millis: 1, ok: false, error: Some(SECRET.into()) },
            RunnerEvent::HarnessStarted { harness: format!("command {SECRET}") },
            RunnerEvent::Artifact(Artifact::ExternalReference {
                reference_type: "git_commit".into(),
                url: format!("https://x-access-token:{SECRET}@example.com/commit/1"),
                title: SECRET.into(),
                metadata: Some(serde_json::json!({"nested": [SECRET], SECRET: 1})),
            }),
            RunnerEvent::Artifact(Artifact::Plan { content: format!("use {SECRET}") }),
            RunnerEvent::Finished { state: RunState::Failed, exit_code: Some(4), message: format!("{SECRET} failed") },
        ];
        for event in events.clone() {
            log.emit(event).await;
        }
        log.output(Stream::Stderr, format!("out {SECRET}\n").as_bytes()).await;
        log.close(Duration::from_secs(5)).await;
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(reports.len(), events.len() + 1);
        for (report, sent) in reports.iter().zip(&events) {
            let json = serde_json::to_string(&report.event).unwrap();
            assert!(!json.contains(SECRET), "{json}");
            assert!(json.contains("[REDACTED]"), "{json}");
            assert_eq!(std::mem::discriminant(&report.event), std::mem::discriminant(sent), "{json}");
        }
        assert!(matches!(&reports[5].event, RunnerEvent::Finished { state: RunState::Failed, .. }));
        assert_eq!(reports[6].event, RunnerEvent::Output { stream: "stderr".into(), text: "out [REDACTED]\n".into() });
    }

    /// Reports are numbered from 1 in the order they were made, and all of them are delivered once
    /// the log is closed, even past the outbox's size (the emitter waits for room).
    #[tokio::test]
    async fn reports_are_numbered_in_order_and_all_delivered() {
        let (log, recorder) = log_with(OutputFormat::Ndjson);
        let count = OUTBOX_REPORTS as u64 + 50;
        for i in 0..count {
            log.emit(RunnerEvent::SetupStarted { index: i as usize, command: "true".into() }).await;
        }
        log.close(Duration::from_secs(30)).await;
        let seqs: Vec<u64> = recorder.0.lock().unwrap().iter().filter_map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<_>>());
    }

    /// A secret that spells a tag (a state's name) leaves the event readable.
    #[tokio::test]
    async fn a_secret_spelling_a_tag_leaves_events_readable() {
        let recorder = Arc::new(Recorder::default());
        let log = EventLog::new(OutputFormat::Ndjson, recorder.clone(), Redactor::new(["FAILED", "setup_started"]));
        log.emit(RunnerEvent::Finished { state: RunState::Failed, exit_code: None, message: "FAILED".into() }).await;
        log.emit(RunnerEvent::SetupStarted { index: 1, command: "true".into() }).await;
        log.close(Duration::from_secs(5)).await;
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(
            reports[0].event,
            RunnerEvent::Finished { state: RunState::Failed, exit_code: None, message: "[REDACTED]".into() }
        );
        assert_eq!(reports[1].event, RunnerEvent::SetupStarted { index: 1, command: "true".into() });
    }
}
