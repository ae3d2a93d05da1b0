//! [`KubernetesConfig`]: Oz's `backend.kubernetes` keys.

use std::collections::BTreeMap;
use std::time::Duration;

/// An egress NetworkPolicy per task: all egress denied except DNS and these CIDRs and ports. It is
/// IP-based only (no domain names), and needs a network plugin that enforces NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Destinations allowed (`10.0.0.0/8`, `140.82.112.0/20`).
    pub allowed_cidrs: Vec<String>,
    /// TCP ports allowed to those destinations (empty: every port).
    pub ports: Vec<i32>,
}

/// Parses a Kubernetes CPU quantity (`100m`, `0.5`, `2`) into cores.
pub fn parse_cpu(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.parse::<f64>().ok(),
    }
    .filter(|c| *c > 0.0)
}

/// Parses a Kubernetes memory quantity (`64Mi`, `1Gi`, `500M`, `1048576`) into bytes.
pub fn parse_memory(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok().and_then(|n| n.checked_mul(factor));
        }
    }
    q.parse().ok()
}

/// How the Kubernetes backend shapes Jobs.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// This worker's id; every Job is labelled with it.
    pub worker_id: String,
    /// The namespace Jobs go to (default `default`).
    pub namespace: String,
    /// The image of tasks that name none (default `ubuntu:22.04`).
    pub default_image: Option<String>,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    pub image_pull_policy: String,
    /// Mount the sidecar as an image volume instead of copying it with an init container.
    pub use_image_volumes: bool,
    /// The image holding the sidecar under `/agent`.
    pub sidecar_image: String,
    /// Run before the task, as the init container `setup`, in the task's image and workspace.
    pub setup_command: Option<String>,
    /// Run when the task container stops, as its preStop hook.
    pub teardown_command: Option<String>,
    /// More labels on the Job and its Pod.
    pub extra_labels: BTreeMap<String, String>,
    /// Annotations on the Job and its Pod.
    pub extra_annotations: BTreeMap<String, String>,
    /// The Job's `activeDeadlineSeconds` (default 8 hours).
    pub active_deadline_seconds: i64,
    /// The Job's `ttlSecondsAfterFinished` when cleanup is on (default a day).
    pub ttl_seconds_after_finished: i32,
    /// The `/workspace` emptyDir's size limit (`10Gi`), if any.
    pub workspace_size_limit: Option<String>,
    /// How long a Pod may stay unschedulable before the task fails (zero disables).
    pub unschedulable_timeout: Duration,
    /// A PodSpec (JSON) merged under the generated one: imagePullSecrets, nodeSelector, tolerations...
    pub pod_template: Option<serde_json::Value>,
    /// Remove finished Jobs (through their TTL).
    pub cleanup: bool,
    /// The image of the start-up preflight Job (default `busybox:1.36`).
    pub preflight_image: String,
    /// How long the preflight Job may take (default 2 minutes).
    pub preflight_timeout: Duration,
    /// The preflight Job's CPU (cores) and memory (bytes), as requests equal to limits.
    pub preflight_resources: oz_core::task::Resources,
    /// How long a Pod may keep failing to mount its volumes (`FailedMount` events) before the task
    /// fails as `volume_mount` (default 60 s; transient attach delays resolve within it).
    pub mount_timeout: Duration,
    /// An egress NetworkPolicy for every task, if set.
    pub egress_policy: Option<EgressPolicy>,
}

impl KubernetesConfig {
    /// Oz's defaults for a worker id and a sidecar image.
    pub fn new(worker_id: impl Into<String>, sidecar_image: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            namespace: "default".into(),
            default_image: None,
            image_pull_policy: "IfNotPresent".into(),
            use_image_volumes: false,
            sidecar_image: sidecar_image.into(),
            setup_command: None,
            teardown_command: None,
            extra_labels: BTreeMap::new(),
            extra_annotations: BTreeMap::new(),
            active_deadline_seconds: 28_800,
            ttl_seconds_after_finished: 86_400,
            workspace_size_limit: None,
            unschedulable_timeout: Duration::from_secs(30),
            pod_template: None,
            cleanup: true,
            preflight_image: "busybox:1.36".into(),
            preflight_timeout: Duration::from_secs(120),
            preflight_resources: oz_core::task::Resources {
                vcpus: Some(0.1),
                memory_bytes: Some(64 << 20),
                ..Default::default()
            },
            mount_timeout: Duration::from_secs(60),
            egress_policy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_cpu("100m"), Some(0.1));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("x"), None);
        assert_eq!(parse_memory("64Mi"), Some(64 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("1048576"), Some(1 << 20));
        assert_eq!(parse_memory("lots"), None);
    }
}
