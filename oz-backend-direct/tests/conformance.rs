//! The shared backend conformance suite, run against the Direct backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oz_backend_direct::{ADDED_ENV, DirectBackend, DirectConfig, process};
use oz_core::backend::Backend;
use oz_core::conformance::ConformanceFixture;
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;

struct DirectFixture {
    _root: tempfile::TempDir,
    backend: Arc<DirectBackend>,
}

#[async_trait]
impl ConformanceFixture for DirectFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn command_task(&self, task_id: &str, argv: &[&str]) -> TaskSpec {
        TaskSpec::new(task_id, argv.iter().map(|s| s.to_string()).collect())
    }
    fn added_env(&self) -> Vec<&'static str> {
        ADDED_ENV.to_vec()
    }
    async fn leftovers(&self, spec: &TaskSpec) -> Vec<String> {
        let mut left = Vec::new();
        let path = self.backend.workspace_path(&spec.task_id);
        if path.exists() {
            left.push(path.display().to_string());
        }
        left.extend(process::processes_of_task(&spec.task_id).into_iter().map(|p| format!("process {p}")));
        left
    }
    async fn purge(&self, spec: &TaskSpec) {
        oz_backend_direct::workspace::remove_tree(&self.backend.workspace_path(&spec.task_id)).unwrap();
    }
    async fn process_alive(&self, _spec: &TaskSpec, pid: u32) -> bool {
        process::process_alive(pid)
    }
    fn missing_command_reason(&self) -> FailureReason {
        FailureReason::AgentInvocation
    }
}

async fn fixture() -> Option<DirectFixture> {
    let root = tempfile::tempdir().unwrap();
    let mut config = DirectConfig::new("conformance-worker", root.path().join("ws"));
    config.stop_grace = Duration::from_secs(1);
    let backend = Arc::new(DirectBackend::new(config).unwrap());
    Some(DirectFixture { _root: root, backend })
}

oz_core::conformance_suite!(fixture);
