//! [`DockerConfig`]: how the backend talks to the engine and how it shapes containers.

use std::path::PathBuf;
use std::time::Duration;

use oz_core::image::ImageRef;

/// When to pull a task's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull before every task (the registry is asked each time; layers already present are reused).
    Always,
    /// Pull only when the image is not present (the default).
    #[default]
    IfNotPresent,
    /// Never pull: a missing image fails the task as `invalid_image`.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" | "Always" => Ok(Self::Always),
            "if-not-present" | "IfNotPresent" | "if_not_present" => Ok(Self::IfNotPresent),
            "never" | "Never" => Ok(Self::Never),
            other => Err(format!("unknown pull policy {other:?}: expected always, if-not-present or never")),
        }
    }
}

/// The network a task's container gets by default (a task's `NetworkMode` can ask for less).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DefaultNetwork {
    /// No network at all (the default): the agent cannot reach anything, not even the control plane.
    #[default]
    None,
    /// Docker's default bridge: outbound access like any container.
    Bridge,
    /// A named network that already exists (made by the operator).
    Named(String),
    /// An internal network per task whose only way out is an egress proxy allowing these domains.
    Isolated {
        /// `example.com`, or `*.example.com` for its subdomains.
        allowed_domains: Vec<String>,
    },
}

/// How the Docker backend behaves.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// This worker's id; every container, volume and network is labelled with it.
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
    /// The default network.
    pub network: DefaultNetwork,
    /// Run as this user (`1000`, `1000:1000`, `nobody`); default: the image's user.
    pub user: Option<String>,
    /// The most processes a task may have (default 4096).
    pub pids_limit: i64,
    /// How long a task has to stop after SIGTERM before SIGKILL (default 10 s).
    pub stop_grace: Duration,
    /// Remove containers after their task (default true; a task's `cleanup: false` keeps its own).
    pub cleanup: bool,
    /// Largest size of a container's log file before Docker rotates it (default `16m`).
    pub log_max_size: String,
    /// Isolated mode: the network the egress proxy reaches the world through (default `bridge`).
    pub isolated_egress_network: String,
    /// Isolated mode: non-public ranges the proxy allows nonetheless (`10.20.0.0/16`), e.g. a
    /// control plane on a private address. Loopback, private and metadata addresses are refused otherwise.
    pub isolated_allowed_ranges: Vec<String>,
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
            network: DefaultNetwork::default(),
            user: None,
            pids_limit: 4096,
            stop_grace: Duration::from_secs(10),
            cleanup: true,
            log_max_size: "16m".into(),
            isolated_egress_network: "bridge".into(),
            isolated_allowed_ranges: Vec::new(),
        }
    }
}
