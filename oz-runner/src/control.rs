//! The runner's link to the control plane, behind a small trait so the runner is testable without a
//! server, and runs unmanaged when there is none. Over HTTP it is the SDK's [`AgentClient`], whose
//! retries suit the runner: reads ride out a restart of the control plane, reports are not sent twice.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use oz_core::wire::api::Steering;
use oz_core::wire::callbacks::{ResolvedRun, RunnerReport};
use oz_sdk::AgentClient;
use secrecy::SecretString;

/// What can go wrong talking to the control plane. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The control plane refused, could not be reached, or answered something unreadable.
    #[error("{what}: {source}")]
    Request {
        /// What the runner was doing.
        what: &'static str,
        /// The SDK's error (its problem document, or its transport error).
        #[source]
        source: oz_sdk::Error,
    },
    /// There is no control plane to ask (an unmanaged run).
    #[error("{0}")]
    NotFound(String),
}

impl ControlError {
    /// What the runner's outbox does after this answer to a report.
    pub fn disposition(&self) -> Disposition {
        match self {
            ControlError::Request { source, .. } => match source.status() {
                // The run's token is dead (the run ended, or was taken away): nothing more lands.
                Some(401 | 403 | 404) => Disposition::GiveUp,
                Some(status) if status >= 500 || status == 429 || source.is_retryable() => Disposition::Retry,
                Some(_) => Disposition::Skip,
                None if source.is_retryable() => Disposition::Retry,
                None => Disposition::GiveUp,
            },
            ControlError::NotFound(_) => Disposition::GiveUp,
        }
    }
}

/// What to do with a report the control plane did not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Send it again later (unreachable, overloaded, restarting).
    Retry,
    /// Drop this report (refused as such) and go on with the next.
    Skip,
    /// Stop reporting.
    GiveUp,
}

/// What the runner needs from the control plane.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Records one event of the run (progress, output, artifacts, the end).
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError>;
    /// What the run needs to start (prompt, environment, secrets, git credentials); `None` without a
    /// control plane.
    async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError>;
    /// Whether reports go anywhere.
    fn is_connected(&self) -> bool {
        true
    }
    /// Says the runner is alive (a registered run's lease); nothing without a control plane.
    async fn heartbeat(&self) -> Result<(), ControlError> {
        Ok(())
    }
    /// What an execution before kept of the run's conversation (a run continued after its end);
    /// none without a control plane.
    async fn conversation(&self) -> Result<Option<Vec<u8>>, ControlError> {
        Ok(None)
    }
    /// Keeps what the agent kept of its conversation for the run's next execution; nothing without
    /// a control plane.
    async fn save_conversation(&self, archive: Vec<u8>) -> Result<(), ControlError> {
        let _ = archive;
        Ok(())
    }
    /// Follow-ups and interrupts of the run after event `after_seq` (0: from the first sent), with
    /// their event numbers, until the run ends; none without a control plane.
    fn steering(&self, after_seq: i64) -> BoxStream<'static, Result<(i64, Steering), ControlError>> {
        let _ = after_seq;
        futures::stream::empty().boxed()
    }
}

/// No control plane: an unmanaged run. Reports go nowhere; environments must come from a file.
#[derive(Debug, Default)]
pub struct Detached;

#[async_trait]
impl ControlPlane for Detached {
    async fn report(&self, _report: &RunnerReport) -> Result<(), ControlError> {
        Ok(())
    }
    async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError> {
        Ok(None)
    }
    fn is_connected(&self) -> bool {
        false
    }
}

/// The control plane over HTTP for run `run_id`, authenticated with its workload token.
pub fn connect(server_root_url: &str, run_id: &str, token: SecretString) -> Result<AgentClient, ControlError> {
    AgentClient::builder(server_root_url, run_id, token)
        .user_agent(concat!("oz-agent-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| ControlError::Request { what: "setting up the control plane's client", source })
}

#[async_trait]
impl ControlPlane for AgentClient {
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError> {
        AgentClient::report(self, report)
            .await
            .map_err(|source| ControlError::Request { what: "reporting to the control plane", source })
    }

    async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError> {
        AgentClient::resolved(self)
            .await
            .map(Some)
            .map_err(|source| ControlError::Request { what: "fetching the run's configuration", source })
    }
    async fn heartbeat(&self) -> Result<(), ControlError> {
        AgentClient::heartbeat(self)
            .await
            .map_err(|source| ControlError::Request { what: "telling the control plane the runner is alive", source })
    }
    async fn conversation(&self) -> Result<Option<Vec<u8>>, ControlError> {
        AgentClient::conversation(self)
            .await
            .map_err(|source| ControlError::Request { what: "fetching the run's conversation", source })
    }
    async fn save_conversation(&self, archive: Vec<u8>) -> Result<(), ControlError> {
        AgentClient::save_conversation(self, archive)
            .await
            .map_err(|source| ControlError::Request { what: "keeping the run's conversation", source })
    }
    fn steering(&self, after_seq: i64) -> BoxStream<'static, Result<(i64, Steering), ControlError>> {
        AgentClient::steering(self, after_seq)
            .map(|f| f.map_err(|source| ControlError::Request { what: "following the run's follow-ups", source }))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::error::Error as _;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn errors_keep_the_sdk_error_as_their_cause_and_never_show_the_token() {
        const TOKEN: &str = "oz_wl_runner_0123456789abcdef";
        let connected = connect("http://127.0.0.1:9", "run-1", SecretString::from(TOKEN)).unwrap();
        assert!(!format!("{connected:?}").contains(TOKEN));
        let quick = oz_core::retry::RetryPolicy::bounded(Duration::from_millis(1), Duration::from_millis(1), 1);
        let control = AgentClient::builder("http://127.0.0.1:9", "run-1", SecretString::from(TOKEN))
            .read_retries(quick)
            .build()
            .unwrap();
        let control: &dyn ControlPlane = &control;
        let error = control.resolved().await.unwrap_err();
        let source = error.source().and_then(|s| s.downcast_ref::<oz_sdk::Error>());
        assert!(matches!(source, Some(oz_sdk::Error::Transport(_))), "{error:?}");
        assert!(error.to_string().starts_with("fetching the run's configuration: could not reach the API"), "{error}");
        let mut shown = format!("{error} {error:?}");
        let mut cause = error.source();
        while let Some(c) = cause {
            shown.push_str(&format!(" {c} {c:?}"));
            cause = c.source();
        }
        assert!(!shown.contains(TOKEN), "{shown}");
    }

    #[test]
    fn a_server_root_that_is_not_a_url_is_refused_at_once() {
        let error = connect("127.0.0.1:8080", "run-1", SecretString::from("t")).unwrap_err();
        assert!(matches!(error, ControlError::Request { source: oz_sdk::Error::Config(_), .. }), "{error:?}");
    }
}

/// A control plane for tests: keeps what is reported.
#[cfg(test)]
pub(crate) mod recording {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use super::*;

    /// Keeps what is reported, in order.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<RunnerReport>>);

    impl Recorder {
        /// What was reported as output on `stream`, concatenated.
        pub(crate) fn output(&self, stream: &str) -> String {
            let reports = self.0.lock().unwrap();
            reports
                .iter()
                .filter_map(|r| match &r.event {
                    oz_core::wire::callbacks::RunnerEvent::Output { stream: s, text } if s == stream => {
                        Some(text.as_str())
                    }
                    _ => None,
                })
                .collect()
        }
    }

    #[async_trait]
    impl ControlPlane for Recorder {
        async fn report(&self, report: &RunnerReport) -> Result<(), ControlError> {
            self.0.lock().unwrap().push(report.clone());
            Ok(())
        }
        async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError> {
            Ok(None)
        }
    }
}
