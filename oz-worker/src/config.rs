//! The worker's configuration: Oz's YAML file (strict: unknown keys and two backends are errors that
//! name the key) and flags, merged with flags over file over defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::WorkerError;

/// The YAML file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This worker's id.
    pub worker_id: Option<String>,
    /// Remove what tasks leave (default true).
    pub cleanup: Option<bool>,
    /// At most this many tasks; 0 = unlimited.
    pub max_concurrent_tasks: Option<usize>,
    /// Our extension: serve Prometheus metrics at `http://<this>/metrics` (e.g. `127.0.0.1:9464`).
    pub metrics_listen: Option<String>,
    /// Exactly one backend.
    pub backend: Option<BackendSection>,
}

/// `backend:`: exactly one of its keys.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// `docker:`.
    pub docker: Option<DockerSection>,
    /// `direct:`.
    pub direct: Option<DirectSection>,
    /// `kubernetes:`.
    pub kubernetes: Option<KubernetesSection>,
}

/// A variable for tasks: `{name, value}`; no value = inherit the worker's own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvEntry {
    /// The name.
    pub name: String,
    /// The value; absent = the worker's own value of `name`.
    pub value: Option<String>,
}

/// `backend.docker`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    /// `HOST:CONTAINER[:ro|rw]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Variables for tasks.
    #[serde(default)]
    pub environment: Vec<EnvEntry>,
    /// Our extension: the static `oz` mounted as the sidecar at `/agent` (see
    /// `scripts/build-sidecar-oz.sh`); without it the image must provide `oz` on its PATH.
    pub sidecar_binary: Option<PathBuf>,
    /// Our extension: `always`, `if-not-present` (default) or `never`.
    pub pull_policy: Option<String>,
    /// Our extension: `none` (default), `bridge`, `host`, `isolated` or an existing network's name.
    pub network: Option<String>,
    /// Our extension, for `network: isolated`: the domains tasks may reach through the egress proxy.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Our extension, for `network: isolated`: non-public ranges the proxy allows nonetheless.
    #[serde(default)]
    pub allowed_ranges: Vec<String>,
    /// Our extension, for `network: isolated`: the network the proxy goes out through (default `bridge`).
    pub egress_network: Option<String>,
    /// Our extension: run tasks as this user (`1000:1000`).
    pub user: Option<String>,
    /// Our extension: the image of tasks that name none (default `ubuntu:22.04`).
    pub default_image: Option<String>,
    /// Our extension: the engine address (default `DOCKER_HOST`, else the local socket).
    pub docker_host: Option<String>,
}

/// `backend.direct`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectSection {
    /// Where task workspaces go.
    pub workspace_root: Option<PathBuf>,
    /// The `oz` binary tasks run (default: `oz` on PATH).
    pub oz_path: Option<String>,
    /// Before each task.
    pub setup_command: Option<String>,
    /// After each task.
    pub teardown_command: Option<String>,
    /// Variables for tasks.
    #[serde(default)]
    pub environment: Vec<EnvEntry>,
}

/// `backend.kubernetes` (accepted and validated; the backend itself is not built yet).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct KubernetesSection {
    pub namespace: Option<String>,
    pub kubeconfig: Option<String>,
    pub default_image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub use_image_volumes: Option<bool>,
    pub preflight_image: Option<String>,
    pub preflight_resources: Option<PreflightResources>,
    pub sidecar_image: Option<String>,
    pub setup_command: Option<String>,
    pub teardown_command: Option<String>,
    pub extra_labels: Option<BTreeMap<String, String>>,
    pub extra_annotations: Option<BTreeMap<String, String>>,
    pub active_deadline_seconds: Option<u64>,
    pub ttl_seconds_after_finished: Option<u64>,
    pub workspace_size_limit: Option<String>,
    pub unschedulable_timeout: Option<String>,
    pub pod_template: Option<serde_json::Value>,
    #[serde(default)]
    pub environment: Vec<EnvEntry>,
    /// Our extension: an egress NetworkPolicy per task.
    pub egress_policy: Option<EgressPolicySection>,
}

/// `backend.kubernetes.preflight_resources`: requests equal to limits for the preflight Job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightResources {
    /// CPU, as a Kubernetes quantity (`100m`, `1`).
    pub cpu: Option<String>,
    /// Memory, as a Kubernetes quantity (`64Mi`, `1Gi`).
    pub memory: Option<String>,
}

/// `backend.kubernetes.egress_policy` (our extension).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicySection {
    /// Destinations allowed besides DNS.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// TCP ports allowed to them (empty: all).
    #[serde(default)]
    pub ports: Vec<i32>,
}

/// Which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Docker.
    Docker,
    /// Direct.
    Direct,
    /// Kubernetes.
    Kubernetes,
}

impl std::str::FromStr for BackendKind {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(BackendKind::Docker),
            "direct" => Ok(BackendKind::Direct),
            "kubernetes" => Ok(BackendKind::Kubernetes),
            other => Err(WorkerError::Config(format!("--backend {other:?} is not one of docker, direct, kubernetes"))),
        }
    }
}

/// Parses the YAML file's text; errors name the offending key.
pub fn parse_file(text: &str) -> Result<FileConfig, WorkerError> {
    let config: FileConfig =
        serde_saphyr::from_str(text).map_err(|e| WorkerError::Config(format!("the config file is invalid: {e}")))?;
    if let Some(b) = &config.backend {
        let set: Vec<&str> =
            [("docker", b.docker.is_some()), ("direct", b.direct.is_some()), ("kubernetes", b.kubernetes.is_some())]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
        if set.len() > 1 {
            return Err(WorkerError::Config(format!(
                "the config file sets more than one backend ({}); keep exactly one under `backend`",
                set.join(", ")
            )));
        }
    }
    Ok(config)
}

/// Resolves `KEY=VALUE` or a bare `KEY` (the worker's own value; an error if it has none).
pub fn resolve_env(spec: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, String), WorkerError> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n.to_owned(), v.to_owned()),
        None => {
            let value = lookup(spec).ok_or_else(|| {
                WorkerError::Config(format!("-e {spec}: the worker has no variable {spec} to pass on"))
            })?;
            (spec.to_owned(), value)
        }
    };
    oz_core::validate::env_name("-e", &name)?;
    Ok((name, value))
}

/// The backend to use: the flag, else the file's backend key, else docker (as Oz).
pub fn backend_kind(flag: Option<BackendKind>, file: &FileConfig) -> BackendKind {
    flag.or_else(|| {
        file.backend.as_ref().and_then(|b| {
            if b.direct.is_some() {
                Some(BackendKind::Direct)
            } else if b.kubernetes.is_some() {
                Some(BackendKind::Kubernetes)
            } else if b.docker.is_some() {
                Some(BackendKind::Docker)
            } else {
                None
            }
        })
    })
    .unwrap_or(BackendKind::Docker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_oz_shape() {
        let c = parse_file(
            "worker_id: my-worker\ncleanup: false\nmax_concurrent_tasks: 3\nbackend:\n  direct:\n    workspace_root: /var/lib/oz\n    oz_path: /usr/local/bin/oz\n    environment:\n      - name: A\n        value: b\n      - name: HOME_INHERITED\n",
        )
        .unwrap();
        assert_eq!(c.worker_id.as_deref(), Some("my-worker"));
        assert_eq!(c.max_concurrent_tasks, Some(3));
        let d = c.backend.as_ref().unwrap().direct.as_ref().unwrap();
        assert_eq!(d.environment[1], EnvEntry { name: "HOME_INHERITED".into(), value: None });
        assert_eq!(backend_kind(None, &c), BackendKind::Direct);
        assert_eq!(backend_kind(Some(BackendKind::Docker), &c), BackendKind::Docker);
        assert_eq!(backend_kind(None, &FileConfig::default()), BackendKind::Docker);
        let k8s = parse_file(
            "backend:\n  kubernetes:\n    namespace: agents\n    unschedulable_timeout: 30s\n    pod_template: {spec: {}}\n    preflight_image: busybox:1.36\n    preflight_resources: {cpu: 100m, memory: 64Mi}\n    egress_policy: {allowed_cidrs: [10.0.0.0/8], ports: [443]}\n",
        )
        .unwrap();
        let section = k8s.backend.unwrap().kubernetes.unwrap();
        assert_eq!(section.preflight_resources.unwrap().memory.as_deref(), Some("64Mi"));
        assert_eq!(section.egress_policy.unwrap().ports, vec![443]);
    }

    #[test]
    fn unknown_keys_and_two_backends_are_errors_naming_the_key() {
        let e = parse_file("worker_id: w\nmax_concurent_tasks: 3\n").unwrap_err().to_string();
        assert!(e.contains("max_concurent_tasks"), "{e}");
        let e = parse_file("backend:\n  direct:\n    workspace_rot: /x\n").unwrap_err().to_string();
        assert!(e.contains("workspace_rot"), "{e}");
        let e = parse_file("backend:\n  direct: {}\n  docker: {}\n").unwrap_err().to_string();
        assert!(e.contains("more than one backend") && e.contains("docker") && e.contains("direct"), "{e}");
        assert!(parse_file("worker_id: [unclosed").is_err());
    }

    #[test]
    fn a_bare_env_name_inherits_the_workers_value() {
        let lookup = |k: &str| (k == "HOME").then(|| "/home/w".to_owned());
        assert_eq!(resolve_env("A=b=c", lookup).unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(resolve_env("HOME", lookup).unwrap(), ("HOME".into(), "/home/w".into()));
        assert!(resolve_env("MISSING", lookup).unwrap_err().to_string().contains("MISSING"));
        assert!(resolve_env("BAD-NAME=1", lookup).is_err());
    }
}
