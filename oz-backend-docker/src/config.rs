//! [`DockerConfig`]: how the backend talks to the engine and how it shapes containers. It is also the
//! `backend.docker` section of the worker's YAML file (unknown keys are errors); `worker_id` and
//! `cleanup` come from the worker, not from the section.

use std::path::PathBuf;
use std::time::Duration;

use oz_core::egress::IpNet;
use oz_core::image::ImageRef;
pub use oz_core::image::PullPolicy;
use oz_core::task::EnvEntry;
use serde::Deserialize;

use crate::error::DockerError;

/// The network a task's container gets by default (a task's `NetworkMode` can ask for less). In the
/// YAML: `none`, `bridge`, `isolated`, or the name of an existing network (`host` included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum DefaultNetwork {
    /// No network at all (the default): the agent cannot reach anything, not even the control plane.
    #[default]
    None,
    /// Docker's default bridge: outbound access like any container.
    Bridge,
    /// A named network that already exists (made by the operator), or `host`.
    Named(String),
    /// An internal network per task whose only way out is an egress proxy allowing
    /// [`DockerConfig::allowed_domains`].
    Isolated,
}

impl From<String> for DefaultNetwork {
    fn from(name: String) -> Self {
        match name.as_str() {
            "none" => DefaultNetwork::None,
            "bridge" => DefaultNetwork::Bridge,
            "isolated" => DefaultNetwork::Isolated,
            _ => DefaultNetwork::Named(name),
        }
    }
}

/// How the Docker backend behaves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// This worker's id; every container, volume and network is labelled with it.
    #[serde(skip)]
    pub worker_id: String,
    /// The engine address (`unix:///var/run/docker.sock`, `tcp://127.0.0.1:2375`); default:
    /// `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// The image of tasks that name none (default `ubuntu:22.04`, as Oz).
    pub default_image: Option<ImageRef>,
    /// When to pull.
    pub pull_policy: PullPolicy,
    /// The Docker config file with registry credentials (default `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// The statically linked `oz` binary to mount at `/agent/bin/oz` (see `scripts/build-sidecar-oz.sh`);
    /// `None`: tasks get no sidecar (their image must have what they run).
    pub sidecar_binary: Option<PathBuf>,
    /// A CA bundle to ship at `/agent/certs/ca-certificates.crt` (default: the host's, when found).
    pub sidecar_ca_bundle: Option<PathBuf>,
    /// `HOST:CONTAINER[:ro|rw]` volumes for every task (Oz's `-v`).
    pub volumes: Vec<String>,
    /// Where package caches live on the host (`<cache_root>/<key>`, one per environment, mounted
    /// at [`crate::container::CACHE_MOUNT`]; from the worker's `package_caches:`). `None`: none.
    #[serde(skip)]
    pub cache_root: Option<PathBuf>,
    /// The worker's git mirrors on the host (from its `git_mirrors:`): a sandbox gets the mirrors
    /// its spec names ([`oz_core::task::SandboxSpec::git_mirrors`]), each bound read-only under
    /// [`oz_core::task::SANDBOX_GIT_MIRRORS`], and no other. `None`: none.
    #[serde(skip)]
    pub git_mirrors_root: Option<PathBuf>,
    /// Variables every task gets (Oz's `environment`), after the task's own.
    pub environment: Vec<EnvEntry>,
    /// The default network.
    pub network: DefaultNetwork,
    /// Isolated mode: the domains tasks may reach through the egress proxy (`example.com`, or
    /// `*.example.com` for its subdomains); at least the control plane's host.
    pub allowed_domains: Vec<String>,
    /// Isolated mode: non-public ranges the proxy allows nonetheless (`10.20.0.0/16`), e.g. a
    /// control plane on a private address. Loopback, private and metadata addresses are refused otherwise.
    pub allowed_ranges: Vec<IpNet>,
    /// Isolated mode: the network the egress proxy reaches the world through (default `bridge`).
    pub egress_network: String,
    /// Run as this user (`1000`, `1000:1000`, `nobody`); default: the image's user.
    pub user: Option<String>,
    /// The most processes a task may have (default 4096).
    pub pids_limit: i64,
    /// How long a task has to stop after SIGTERM before SIGKILL (default 10 s; `30s` in the YAML).
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Remove containers after their task (default true; a task's `cleanup: false` keeps its own).
    #[serde(skip)]
    pub cleanup: bool,
    /// Largest size of a container's log file before Docker rotates it (default `16m`).
    pub log_max_size: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self::new("")
    }
}

impl DockerConfig {
    /// Defaults for a worker id.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            docker_host: None,
            default_image: None,
            pull_policy: PullPolicy::default(),
            docker_config: None,
            sidecar_binary: None,
            sidecar_ca_bundle: None,
            volumes: Vec::new(),
            cache_root: None,
            git_mirrors_root: None,
            environment: Vec::new(),
            network: DefaultNetwork::default(),
            allowed_domains: Vec::new(),
            allowed_ranges: Vec::new(),
            egress_network: "bridge".into(),
            user: None,
            pids_limit: 4096,
            stop_grace: Duration::from_secs(10),
            cleanup: true,
            log_max_size: "16m".into(),
        }
    }

    /// Checks what can be checked without the engine.
    pub fn validate(&self) -> Result<(), DockerError> {
        oz_core::run::validate_id("worker_id", &self.worker_id).map_err(DockerError::invalid)?;
        for volume in &self.volumes {
            validate_volume(volume)?;
        }
        if self.network == DefaultNetwork::Isolated && self.allowed_domains.is_empty() {
            return Err(DockerError::Config(
                "network: isolated needs allowed_domains (at least the control plane's host)".into(),
            ));
        }
        Ok(())
    }
}

fn validate_volume(spec: &str) -> Result<(), DockerError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let ok = match parts.as_slice() {
        [host, container] => !host.is_empty() && container.starts_with('/'),
        [host, container, mode] => !host.is_empty() && container.starts_with('/') && matches!(*mode, "ro" | "rw"),
        _ => false,
    };
    if !ok || parts.get(1).is_some_and(|c| c.trim_end_matches('/') == "/agent") {
        return Err(DockerError::Config(format!("volume {spec:?}: expected HOST:/CONTAINER[:ro|rw], not over /agent")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_yaml_section_reads_typed_values_and_refuses_unknown_keys() {
        let c: DockerConfig = serde_json::from_value(serde_json::json!({
            "pull_policy": "never", "network": "isolated", "allowed_domains": ["github.com"],
            "allowed_ranges": ["10.20.0.0/16"], "default_image": "debian:12", "stop_grace": "3s",
            "environment": [{"name": "A", "value": "1"}, {"name": "HOME"}]
        }))
        .unwrap();
        assert_eq!(c.pull_policy, PullPolicy::Never);
        assert_eq!(c.network, DefaultNetwork::Isolated);
        assert_eq!(c.allowed_ranges, vec!["10.20.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(c.stop_grace, Duration::from_secs(3));
        assert_eq!(c.environment[1], EnvEntry { name: "HOME".into(), value: None });
        assert!(c.cleanup, "cleanup is the worker's, defaulting to on");
        let e = serde_json::from_value::<DockerConfig>(serde_json::json!({"allowed_ranges": ["10.0.0.0/33"]}));
        assert!(e.is_err());
        let e = serde_json::from_value::<DockerConfig>(serde_json::json!({"netwrok": "none"})).unwrap_err();
        assert!(e.to_string().contains("netwrok"), "{e}");
        let host: DockerConfig = serde_json::from_value(serde_json::json!({"network": "host"})).unwrap();
        assert_eq!(host.network, DefaultNetwork::Named("host".into()));
    }

    #[test]
    fn volumes_are_checked() {
        assert!(validate_volume("/data:/data").is_ok());
        assert!(validate_volume("cache:/cache:rw").is_ok());
        for bad in ["/data", "/data:data", "/data:/data:rx", "x:/agent", ":/x"] {
            assert!(validate_volume(bad).is_err(), "{bad}");
        }
        let range = |r: &str| serde_json::from_value::<DockerConfig>(serde_json::json!({"allowed_ranges": [r]}));
        assert!(range("10.20.0.0/16").is_ok());
        for bad in ["10.20.0.0", "10.20.0.0/40", "example.com/8"] {
            assert!(range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn isolated_without_domains_and_bad_volumes_are_refused() {
        let mut c = DockerConfig::new("w");
        c.network = DefaultNetwork::Isolated;
        assert!(c.validate().unwrap_err().to_string().contains("allowed_domains"));
        let mut c = DockerConfig::new("w");
        c.volumes = vec!["/x:/agent".into()];
        assert!(c.validate().is_err());
        assert!(DockerConfig::new("").validate().is_err(), "a worker id is required");
    }
}
