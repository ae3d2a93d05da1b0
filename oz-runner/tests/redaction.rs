//! `oz agent run` in-process, reporting to a recording control plane: a secret's value written into
//! a setup command (not only in a variable it expands) is never reported in the clear.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oz_core::wire::callbacks::{ResolvedRun, RunnerEvent, RunnerReport};
use oz_runner::args::{OutputFormat, RunArgs};
use oz_runner::control::{ControlError, ControlPlane};
use oz_runner::run::{Context, run};

const SECRET: &str = "svc-secret-value-42";

#[derive(Default)]
struct Recorder(Mutex<Vec<RunnerReport>>);

#[async_trait]
impl ControlPlane for Recorder {
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError> {
        self.0.lock().unwrap().push(report.clone());
        Ok(())
    }
    /// The secret comes from the control plane, as a team secret an environment references.
    async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError> {
        Ok(Some(ResolvedRun {
            prompt: "p".into(),
            continuation: None,
            environment: None,
            secret_env: [("MY_SERVICE_TOKEN".to_owned(), SECRET.to_owned())].into(),
            git_credentials: Vec::new(),
        }))
    }
}

#[tokio::test]
async fn a_setup_command_holding_a_secret_is_reported_with_the_secret_masked() {
    let dir = tempfile::tempdir().unwrap();
    let environment = serde_json::json!({
        "name": "e",
        "setup_commands": [format!("echo configured; test {SECRET} = \"$MY_SERVICE_TOKEN\""), "exit 3"],
    });
    let env_file = dir.path().join("environment.json");
    std::fs::write(&env_file, environment.to_string()).unwrap();
    let args = RunArgs {
        environment_file: Some(env_file),
        harness: "command".into(),
        command: vec!["/bin/true".into()],
        workdir: Some(dir.path().join("work")),
        git_base_url: "https://github.com".into(),
        output_format: OutputFormat::Ndjson,
        ..Default::default()
    };
    let recorder = Arc::new(Recorder::default());
    let (_cancel, cancel) = tokio::sync::watch::channel(false);
    let ctx = Context {
        env: vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            ("TMPDIR".into(), dir.path().display().to_string()),
        ],
        control: Some(recorder.clone()),
        oz_binary: "oz".into(),
        cancel,
    };
    let code = tokio::time::timeout(Duration::from_secs(60), run(args, Vec::new(), ctx)).await.expect("the run ended");
    assert_eq!(code, oz_runner::run::EXIT_SETUP, "the second setup command fails the run");

    let reports = recorder.0.lock().unwrap().clone();
    let started: Vec<&RunnerEvent> =
        reports.iter().map(|r| &r.event).filter(|e| matches!(e, RunnerEvent::SetupStarted { .. })).collect();
    assert_eq!(
        started[0],
        &RunnerEvent::SetupStarted {
            index: 0,
            command: "echo configured; test [REDACTED] = \"$MY_SERVICE_TOKEN\"".into()
        }
    );
    // The first command saw the real value (it succeeded), and nothing reported holds it.
    assert!(
        reports.iter().any(|r| matches!(&r.event, RunnerEvent::SetupFinished { index: 0, exit_code: 0, .. })),
        "{reports:?}"
    );
    let all = serde_json::to_string(&reports).unwrap();
    assert!(!all.contains(SECRET), "{all}");
}
