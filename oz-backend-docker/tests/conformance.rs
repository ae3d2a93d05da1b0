//! The shared backend conformance suite, against the real Docker engine on this machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecResults};
use oz_backend_docker::{DockerBackend, DockerConfig};
use oz_core::backend::Backend;
use oz_core::conformance::ConformanceFixture;
use oz_core::failure::FailureReason;
use oz_core::image::ImageRef;
use oz_core::task::{TaskSpec, labels};

struct DockerFixture {
    backend: Arc<DockerBackend>,
}

#[async_trait]
impl ConformanceFixture for DockerFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn command_task(&self, task_id: &str, argv: &[&str]) -> TaskSpec {
        let mut spec = TaskSpec::new(task_id, argv.iter().map(|s| s.to_string()).collect());
        spec.sandbox.image = Some(ImageRef::parse(support::BUSYBOX).unwrap());
        spec
    }
    fn added_env(&self) -> Vec<&'static str> {
        // What the engine adds: the image's PATH, the hostname, and HOME.
        vec!["PATH", "HOSTNAME", "HOME"]
    }
    async fn leftovers(&self, spec: &TaskSpec) -> Vec<String> {
        support::labelled(self.backend.docker(), labels::TASK_ID, &spec.task_id).await
    }
    async fn purge(&self, spec: &TaskSpec) {
        oz_backend_docker::task::remove(self.backend.docker(), &oz_backend_docker::container::container_name(spec))
            .await;
    }
    async fn process_alive(&self, spec: &TaskSpec, pid: u32) -> bool {
        let name = oz_backend_docker::container::container_name(spec);
        let docker = self.backend.docker();
        let Ok(exec) = docker
            .create_exec(
                &name,
                CreateExecOptions {
                    cmd: Some(vec!["kill".to_string(), "-0".to_string(), pid.to_string()]),
                    ..Default::default()
                },
            )
            .await
        else {
            return false; // the container is gone, and every process with it
        };
        if let Ok(StartExecResults::Attached { mut output, .. }) = docker.start_exec(&exec.id, None).await {
            use futures::StreamExt;
            while output.next().await.is_some() {}
        }
        docker.inspect_exec(&exec.id).await.ok().and_then(|i| i.exit_code) == Some(0)
    }
    fn missing_command_reason(&self) -> FailureReason {
        FailureReason::ContainerExit
    }
}

async fn fixture() -> Option<DockerFixture> {
    let mut config = DockerConfig::new("conformance-docker");
    config.stop_grace = Duration::from_secs(1);
    config.pull_policy = oz_backend_docker::PullPolicy::Never;
    let backend = support::backend(config, support::BUSYBOX).await?;
    Some(DockerFixture { backend: Arc::new(backend) })
}

oz_core::conformance_suite!(fixture);
