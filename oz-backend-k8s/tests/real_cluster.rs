//! Against a real cluster, for people who have one (these machines do not):
//!
//! ```sh
//! KUBECONFIG=~/.kube/config OZ_TEST_NAMESPACE=oz-test OZ_TEST_SIDECAR_IMAGE=ghcr.io/acme/oz-sidecar:0.1.0 \
//!     cargo test -p oz-backend-k8s --test real_cluster -- --ignored
//! ```
//!
//! The namespace must exist and the current credentials need the Role of the Helm chart in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::{Backend, TaskEvent};
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;

async fn backend() -> KubernetesBackend {
    let sidecar = std::env::var("OZ_TEST_SIDECAR_IMAGE").expect("set OZ_TEST_SIDECAR_IMAGE to a sidecar image");
    let mut config = KubernetesConfig::new("oz-real-cluster-test", sidecar);
    config.namespace = std::env::var("OZ_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    KubernetesBackend::connect(config).await.expect("a cluster from KUBECONFIG or in-cluster config")
}

fn task(id: &str, script: &str) -> TaskSpec {
    let id = format!("{id}-{}", std::process::id());
    let mut spec = TaskSpec::new(id, vec!["/bin/sh".into(), "-c".into(), script.into()]);
    spec.sandbox.image = Some(oz_core::image::ImageRef::parse("busybox:1.36").unwrap());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster"]
async fn preflight_then_a_task_succeeds_with_its_output_and_another_fails_with_its_code() {
    let backend = backend().await;
    backend.preflight().await.unwrap();
    let mut handle = backend.launch(task("ok", "echo hello-from-k8s; test -x /agent/bin/oz")).await.unwrap();
    let mut events = handle.take_events().unwrap();
    let mut out = String::new();
    while let Some(e) = events.recv().await {
        if let TaskEvent::Stdout(b) = e {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(300), handle.wait()).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(out.contains("hello-from-k8s"), "{out}");
    let failed = backend.launch(task("fail", "exit 3")).await.unwrap().wait().await;
    assert_eq!(failed.reason(), Some(FailureReason::JobFailed), "{failed:?}");
    assert_eq!(failed.exit.unwrap().code, Some(3));
}
