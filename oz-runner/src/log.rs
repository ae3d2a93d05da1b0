//! The runner's event log: every event is printed (human text or NDJSON), and reported to the
//! control plane. Output passes through the redactor first, so no registered secret is printed or sent.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use oz_core::redact::{Redactor, StreamRedactor};
use oz_core::wire::callbacks::{RunnerEvent, RunnerReport};
use tokio::sync::Mutex;
use tracing::warn;

use crate::args::OutputFormat;
use crate::control::ControlPlane;

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
    control: Arc<dyn ControlPlane>,
    redactor: Redactor,
    report_failed: AtomicBool,
    print_lock: Mutex<()>,
}

impl EventLog {
    /// A log in `format`, reporting to `control`, masking `redactor`'s secrets.
    pub fn new(format: OutputFormat, control: Arc<dyn ControlPlane>, redactor: Redactor) -> Arc<Self> {
        Arc::new(Self { format, control, redactor, report_failed: AtomicBool::new(false), print_lock: Mutex::new(()) })
    }

    /// The redactor, for output streams.
    pub fn stream_redactor(&self) -> StreamRedactor {
        StreamRedactor::new(self.redactor.clone())
    }

    /// Masks secrets in a message.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact_str(text)
    }

    /// Records an event.
    pub async fn emit(&self, event: RunnerEvent) {
        let report = RunnerReport { at: Timestamp::now(), event };
        {
            let _guard = self.print_lock.lock().await;
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
        if let Err(e) = self.control.report(&report).await
            && !self.report_failed.swap(true, Ordering::Relaxed)
        {
            let why = self.redact(&oz_core::error::error_chain(&e));
            warn!("reporting to the control plane failed (further failures are not logged): {why}");
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
        if self.format == OutputFormat::Text {
            // Already printed raw; only report.
            let report = RunnerReport { at: Timestamp::now(), event };
            if let Err(e) = self.control.report(&report).await
                && !self.report_failed.swap(true, Ordering::Relaxed)
            {
                let why = self.redact(&oz_core::error::error_chain(&e));
                warn!("reporting to the control plane failed (further failures are not logged): {why}");
            }
        } else {
            self.emit(event).await;
        }
    }
}

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
        RunnerEvent::Output { .. } => return None,
        RunnerEvent::Artifact(a) => {
            format!("artifact: {}", serde_json::to_string(a).unwrap_or_default())
        }
        RunnerEvent::Finished { state, exit_code, message } => match exit_code {
            Some(code) => format!("run {state} (exit {code}): {message}"),
            None => format!("run {state}: {message}"),
        },
    })
}
