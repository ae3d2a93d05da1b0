//! Prints the Kubernetes Job the Kubernetes backend would create for a task, as JSON: what an
//! orchestrator embedding the backend submits, and what `kubectl apply -f -` accepts.
//!
//! ```sh
//! cargo run -p oz-examples --example k8s_job
//! ```

use oz_backend_k8s::{KubernetesConfig, manifest};
use oz_core::task::TaskSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = KubernetesConfig::new("my-worker", "ghcr.io/acme/oz-sidecar:1");
    config.namespace = "agents".into();
    config.workspace_size_limit = Some("10Gi".into());
    config.pod_template = Some(serde_json::json!({"imagePullSecrets": [{"name": "regcred"}]}));
    let mut spec = TaskSpec::new(
        "3f2a9c1e-demo",
        vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into(), "--task-id".into(), "3f2a9c1e-demo".into()],
    )
    .env("TASK_ID", "3f2a9c1e-demo");
    spec.sandbox.image = Some(oz_core::image::ImageRef::parse("debian:bookworm")?);
    spec.sandbox.resources.vcpus = Some(2.0);
    spec.sandbox.resources.memory_bytes = Some(4 << 30);
    let job = manifest::job(&spec, &config)?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(())
}
