//! [`KubernetesConfig`]: Oz's `backend.kubernetes` keys. It is also that section of the worker's
//! YAML file (unknown keys are errors); `worker_id` and `cleanup` come from the worker, not the section.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oz_core::egress::IpNet;
use oz_core::image::{ImageRef, PullPolicy};
use oz_core::task::{EnvEntry, Resources};
use serde::{Deserialize, Deserializer};

use crate::error::KubernetesError;

/// An egress NetworkPolicy per task: all egress denied except DNS and these CIDRs and ports. It is
/// IP-based only (no domain names), and needs a network plugin that enforces NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// Destinations allowed (`10.0.0.0/8`, `140.82.112.0/20`).
    #[serde(default)]
    pub allowed_cidrs: Vec<IpNet>,
    /// TCP ports allowed to those destinations (empty: every port).
    #[serde(default)]
    pub ports: Vec<u16>,
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
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// This worker's id; every Job is labelled with it.
    #[serde(skip)]
    pub worker_id: String,
    /// The namespace Jobs go to (default `default`).
    pub namespace: String,
    /// The kubeconfig file to use; default: in-cluster configuration, else `KUBECONFIG`, else
    /// `~/.kube/config` (see [`crate::KubernetesBackend::connect`]).
    pub kubeconfig: Option<PathBuf>,
    /// The image of tasks that name none (default `ubuntu:22.04`).
    pub default_image: Option<ImageRef>,
    /// `Always`, `IfNotPresent` (default) or `Never`, for the task, the sidecar and setup.
    pub image_pull_policy: PullPolicy,
    /// Mount the sidecar as an image volume instead of copying it with an init container.
    pub use_image_volumes: bool,
    /// The image holding the sidecar under `/agent` (required).
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
    /// How long a Pod may stay unschedulable before the task fails (zero disables; `30s` in the YAML).
    #[serde(with = "humantime_serde")]
    pub unschedulable_timeout: Duration,
    /// A PodSpec (JSON) merged under the generated one: imagePullSecrets, nodeSelector, tolerations...
    pub pod_template: Option<serde_json::Value>,
    /// Variables every task gets (Oz's `environment`), after the task's own. Entries without a value
    /// take the worker's own when the backend is made.
    pub environment: Vec<EnvEntry>,
    /// Remove finished Jobs (through their TTL).
    #[serde(skip)]
    pub cleanup: bool,
    /// The image of the start-up preflight Job (default `busybox:1.36`).
    pub preflight_image: String,
    /// How long the preflight Job may take (default 2 minutes).
    #[serde(with = "humantime_serde")]
    pub preflight_timeout: Duration,
    /// The preflight Job's CPU (cores) and memory (bytes), as requests equal to limits; in the YAML
    /// as Kubernetes quantities: `{cpu: 100m, memory: 64Mi}`.
    #[serde(deserialize_with = "quantities")]
    pub preflight_resources: Resources,
    /// How long a Pod may keep failing to mount its volumes (`FailedMount` events) before the task
    /// fails as `volume_mount` (default 60 s; transient attach delays resolve within it).
    #[serde(with = "humantime_serde")]
    pub mount_timeout: Duration,
    /// An egress NetworkPolicy for every task, if set.
    pub egress_policy: Option<EgressPolicy>,
    /// Our extension: a PersistentVolumeClaim holding package caches, one folder per environment.
    /// Each task's Pod mounts its environment's folder (a `subPath`) read-write at `/oz-cache/env`,
    /// named by `OZ_CACHE_DIR`. ReadWriteMany when tasks run on more than one node.
    pub package_cache_claim: Option<String>,
    /// Our extension: the PersistentVolumeClaim where the worker keeps its git mirrors (mounted in
    /// the worker's own Pod at its `git_mirrors:` path). Each task's Pod mounts its environment's
    /// mirrors of it read-only under `/oz-cache/git`, and its clones reference them.
    pub git_mirror_claim: Option<String>,
    /// What the worker wrote to [`MIRROR_CHECK_FILE`] in its `git_mirrors:` folder: the preflight
    /// Job reads it through the claim, so a claim that is not that folder is found at start-up.
    #[serde(skip)]
    pub git_mirror_check: Option<String>,
}

/// The folder of the git mirrors folder that holds [`MIRROR_CHECK_FILE`]; every task's Pod mounts
/// it (a `subPath`: a folder, so that kubelet, which makes a missing `subPath` as a folder, never
/// takes the file's place).
pub const MIRROR_CHECK_DIR: &str = ".oz-check";
/// The file in the git mirrors folder that the preflight Job reads through `git_mirror_claim`.
pub const MIRROR_CHECK_FILE: &str = ".oz-check/mirror";

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self::new("", "")
    }
}

impl KubernetesConfig {
    /// Oz's defaults for a worker id and a sidecar image.
    pub fn new(worker_id: impl Into<String>, sidecar_image: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            namespace: "default".into(),
            kubeconfig: None,
            default_image: None,
            image_pull_policy: PullPolicy::IfNotPresent,
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
            environment: Vec::new(),
            cleanup: true,
            preflight_image: "busybox:1.36".into(),
            preflight_timeout: Duration::from_secs(120),
            preflight_resources: default_preflight_resources(),
            mount_timeout: Duration::from_secs(60),
            egress_policy: None,
            package_cache_claim: None,
            git_mirror_claim: None,
            git_mirror_check: None,
        }
    }

    /// Checks the configuration and gives every `environment` entry its value (inherited ones from
    /// the worker's own environment, now).
    pub fn validate_and_resolve(&mut self) -> Result<(), KubernetesError> {
        oz_core::run::validate_id("worker_id", &self.worker_id).map_err(KubernetesError::Invalid)?;
        if self.sidecar_image.trim().is_empty() {
            return Err(KubernetesError::Config(
                "sidecar_image is required: an image with the sidecar under /agent".into(),
            ));
        }
        for (field, image) in [("sidecar_image", &self.sidecar_image), ("preflight_image", &self.preflight_image)] {
            ImageRef::parse(image).map_err(|e| KubernetesError::Invalid(e.within(field)))?;
        }
        if self.active_deadline_seconds <= 0 {
            return Err(KubernetesError::Config("active_deadline_seconds must be positive".into()));
        }
        for (field, claim) in
            [("package_cache_claim", &self.package_cache_claim), ("git_mirror_claim", &self.git_mirror_claim)]
        {
            if let Some(name) = claim
                && !is_dns_subdomain(name)
            {
                return Err(KubernetesError::Config(format!(
                    "{field}: {name:?} is not a PersistentVolumeClaim name (lower-case letters, digits, '-' and '.', at most 253)"
                )));
            }
        }
        let resolved = EnvEntry::resolve_all(&self.environment, "environment", |k| std::env::var(k).ok())
            .map_err(KubernetesError::Invalid)?;
        self.environment = resolved.into_iter().map(|(name, value)| EnvEntry::new(name, value)).collect();
        Ok(())
    }
}

/// A DNS-1123 subdomain, as Kubernetes names most objects (a PersistentVolumeClaim).
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.chars().all(|c| alphanumeric(c) || c == '-' || c == '.')
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
}

/// 100m CPU, 64 MiB.
fn default_preflight_resources() -> Resources {
    Resources { vcpus: Some(0.1), memory_bytes: Some(64 << 20), ..Default::default() }
}

/// `{cpu: "100m", memory: "64Mi"}` as [`Resources`]; what is left out keeps its default.
fn quantities<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Resources, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Quantities {
        cpu: Option<String>,
        memory: Option<String>,
    }
    let q = Quantities::deserialize(deserializer)?;
    let vcpus = q
        .cpu
        .map(|c| parse_cpu(&c).ok_or_else(|| serde::de::Error::custom(format!("cpu: {c:?} is not a quantity"))))
        .transpose()?;
    let memory_bytes = q
        .memory
        .map(|m| parse_memory(&m).ok_or_else(|| serde::de::Error::custom(format!("memory: {m:?} is not a quantity"))))
        .transpose()?;
    let defaults = default_preflight_resources();
    Ok(Resources { vcpus: vcpus.or(defaults.vcpus), memory_bytes: memory_bytes.or(defaults.memory_bytes), ..defaults })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_checked() {
        let mut c = KubernetesConfig::new("w", "acme/oz-sidecar:1");
        c.package_cache_claim = Some("oz-caches".into());
        c.git_mirror_claim = Some("mirrors.v1".into());
        c.validate_and_resolve().unwrap();
        c.git_mirror_claim = Some("Bad_Name".into());
        assert!(c.validate_and_resolve().unwrap_err().to_string().contains("git_mirror_claim"));
    }

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

    #[test]
    fn the_yaml_section_reads_typed_values_and_refuses_unknown_keys() {
        let c: KubernetesConfig = serde_json::from_value(serde_json::json!({
            "namespace": "agents", "sidecar_image": "acme/sidecar:1", "image_pull_policy": "Always",
            "unschedulable_timeout": "2m", "preflight_resources": {"cpu": "250m", "memory": "128Mi"},
            "egress_policy": {"allowed_cidrs": ["10.0.0.0/8"], "ports": [443]},
            "environment": [{"name": "A", "value": "1"}]
        }))
        .unwrap();
        assert_eq!(c.image_pull_policy, PullPolicy::Always);
        assert_eq!(c.unschedulable_timeout, Duration::from_secs(120));
        assert_eq!(c.preflight_resources.vcpus, Some(0.25));
        assert_eq!(c.preflight_resources.memory_bytes, Some(128 << 20));
        assert_eq!(c.egress_policy.unwrap().ports, vec![443]);
        assert_eq!(c.environment, vec![EnvEntry::new("A", "1")]);
        assert_eq!(c.namespace, "agents");
        assert_eq!(c.active_deadline_seconds, 28_800, "defaults fill what the YAML leaves out");
        let cpu_only: KubernetesConfig =
            serde_json::from_value(serde_json::json!({"preflight_resources": {"cpu": "1"}})).unwrap();
        assert_eq!(cpu_only.preflight_resources.vcpus, Some(1.0));
        assert_eq!(cpu_only.preflight_resources.memory_bytes, Some(64 << 20), "memory keeps its default");
        let e = serde_json::from_value::<KubernetesConfig>(serde_json::json!({"namespce": "x"})).unwrap_err();
        assert!(e.to_string().contains("namespce"), "{e}");
        let e = serde_json::from_value::<KubernetesConfig>(serde_json::json!({"preflight_resources": {"cpu": "lots"}}))
            .unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
        let e = serde_json::from_value::<KubernetesConfig>(serde_json::json!({"unschedulable_timeout": "soon"}));
        assert!(e.is_err());
    }

    #[test]
    fn a_missing_sidecar_image_is_named() {
        let mut c = KubernetesConfig { worker_id: "w".into(), ..Default::default() };
        assert!(c.validate_and_resolve().unwrap_err().to_string().contains("sidecar_image"));
    }
}
