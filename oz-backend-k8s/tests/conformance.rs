//! The shared backend conformance suite, against the fake API server with its kubelet running each
//! Pod's command as a local process group. A Pod's log merges stdout and stderr and a Job takes no
//! stdin; the suite knows (see the fixture's capabilities).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::Backend;
use oz_core::conformance::ConformanceFixture;
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;
use oz_k8s_fake::{FakeCluster, WatchKind};

const NS: &str = "conformance";

struct K8sFixture {
    cluster: FakeCluster,
    backend: Arc<KubernetesBackend>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl ConformanceFixture for K8sFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn command_task(&self, task_id: &str, argv: &[&str]) -> TaskSpec {
        TaskSpec::new(task_id, argv.iter().map(|s| s.to_string()).collect())
    }
    fn added_env(&self) -> Vec<&'static str> {
        // What the container runtime adds.
        vec!["PATH", "HOSTNAME"]
    }
    async fn leftovers(&self, spec: &TaskSpec) -> Vec<String> {
        let mut left = Vec::new();
        for kind in [WatchKind::Job, WatchKind::Pod] {
            for o in self.cluster.objects(kind, NS) {
                if o["metadata"]["labels"]["oz.dev/task-id"] == spec.task_id.as_str() {
                    left.push(format!("{kind:?} {}", o["metadata"]["name"]));
                }
            }
        }
        left
    }
    async fn purge(&self, spec: &TaskSpec) {
        let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(
            kube::Client::try_from(kube::Config::new(self.cluster.url().parse().unwrap())).unwrap(),
            NS,
        );
        let params = kube::api::DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            ..Default::default()
        };
        jobs.delete(&oz_backend_k8s::manifest::job_name(spec), &params).await.unwrap();
    }
    async fn process_alive(&self, _spec: &TaskSpec, pid: u32) -> bool {
        // The fake kubelet's processes are on this host.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z'))
    }
    fn missing_command_reason(&self) -> FailureReason {
        FailureReason::ContainerStart
    }
    fn exit_reason(&self) -> FailureReason {
        FailureReason::JobFailed
    }
    fn merges_stderr(&self) -> bool {
        true
    }
    fn supports_stdin(&self) -> bool {
        false
    }
}

async fn fixture() -> Option<K8sFixture> {
    let dir = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::start().await.unwrap();
    cluster.enable_kubelet(dir.path());
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    let mut config = KubernetesConfig::new("conformance-k8s", "acme/oz-sidecar:1");
    config.namespace = NS.into();
    config.unschedulable_timeout = Duration::from_secs(30);
    Some(K8sFixture { cluster, backend: Arc::new(KubernetesBackend::new(client, config).unwrap()), _dir: dir })
}

oz_core::conformance_suite!(fixture);
