//! The shared conformance suite against a real cluster, for people who have one (every case is
//! `#[ignore]`d; these machines have no cluster):
//!
//! ```sh
//! KUBECONFIG=~/.kube/config OZ_TEST_NAMESPACE=oz-test OZ_TEST_SIDECAR_IMAGE=ghcr.io/acme/oz-sidecar:0.1.0 \
//!     cargo test -p oz-backend-k8s --test real_cluster_conformance -- --ignored
//! ```
//!
//! Tasks run in `busybox:1.36`. The credentials need the chart's Role in the namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::Backend;
use oz_core::conformance::ConformanceFixture;
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;

struct RealCluster {
    backend: Arc<KubernetesBackend>,
    client: kube::Client,
    namespace: String,
}

#[async_trait]
impl ConformanceFixture for RealCluster {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn command_task(&self, task_id: &str, argv: &[&str]) -> TaskSpec {
        let mut spec = TaskSpec::new(task_id, argv.iter().map(|s| s.to_string()).collect());
        spec.sandbox.image = Some(oz_core::image::ImageRef::parse("busybox:1.36").unwrap());
        spec
    }
    fn added_env(&self) -> Vec<&'static str> {
        // The runtime's and the kubelet's service links.
        vec![
            "PATH",
            "HOSTNAME",
            "HOME",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "KUBERNETES_SERVICE_PORT_HTTPS",
            "KUBERNETES_PORT",
            "KUBERNETES_PORT_443_TCP",
            "KUBERNETES_PORT_443_TCP_PROTO",
            "KUBERNETES_PORT_443_TCP_PORT",
            "KUBERNETES_PORT_443_TCP_ADDR",
        ]
    }
    async fn leftovers(&self, spec: &TaskSpec) -> Vec<String> {
        let selector = format!("oz.dev/task-id={}", spec.task_id);
        let mut left = Vec::new();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        for j in jobs.list(&ListParams::default().labels(&selector)).await.unwrap().items {
            left.push(format!("job {}", j.metadata.name.unwrap_or_default()));
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        for p in pods.list(&ListParams::default().labels(&selector)).await.unwrap().items {
            left.push(format!("pod {}", p.metadata.name.unwrap_or_default()));
        }
        left
    }
    async fn purge(&self, spec: &TaskSpec) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() };
        let _ = jobs.delete(&oz_backend_k8s::manifest::job_name(spec), &params).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    async fn process_alive(&self, spec: &TaskSpec, _pid: u32) -> bool {
        // Pids are the Pod's own; once its Pod is gone, so is every process in it.
        self.leftovers(spec).await.iter().any(|l| l.starts_with("pod "))
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

async fn fixture() -> Option<RealCluster> {
    let sidecar = std::env::var("OZ_TEST_SIDECAR_IMAGE").expect("set OZ_TEST_SIDECAR_IMAGE to a sidecar image");
    let namespace = std::env::var("OZ_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let client = kube::Client::try_default().await.expect("a cluster from KUBECONFIG or in-cluster config");
    let mut config = KubernetesConfig::new("oz-conformance", sidecar);
    config.namespace = namespace.clone();
    Some(RealCluster { backend: Arc::new(KubernetesBackend::new(client.clone(), config).unwrap()), client, namespace })
}

oz_core::conformance_suite!(fixture, ignore = "needs a cluster");
