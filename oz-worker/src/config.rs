//! The worker's configuration: Oz's YAML file and flags, merged with flags over file over defaults.
//!
//! The file is strict: unknown keys are errors that name the key, and `backend:` holds exactly one
//! backend (an externally tagged enum). Each backend's section is that backend's own configuration
//! type ([`oz_backend_direct::DirectConfig`], [`oz_backend_docker::DockerConfig`],
//! [`oz_backend_k8s::KubernetesConfig`]), deserialized where it is defined; [`crate::backends::build`]
//! makes the backend from it.

use serde::Deserialize;

use crate::error::WorkerError;

/// The YAML file.
#[derive(Clone, Debug, Default, Deserialize)]
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
    pub backend: Option<BackendConfig>,
    /// Our extension: warm pools, per environment (see [`crate::pool`]).
    #[serde(default)]
    pub warm_pools: Vec<crate::pool::WarmPoolConfig>,
    /// Our extension: a folder (absolute, on the host) where the worker keeps bare mirrors of its
    /// environments' repos, which its sandboxes' clones reference (see [`crate::mirror`]).
    pub git_mirrors: Option<std::path::PathBuf>,
    /// Our extension: a folder (absolute, on the host) holding a package cache per environment,
    /// which every sandbox of that environment gets at `OZ_CACHE_DIR` (Direct, Docker).
    pub package_caches: Option<std::path::PathBuf>,
    /// Our extension: let the worker's own git (mirrors, warm pools' HEAD checks) read `file://`
    /// remotes, a local folder (default false: any repo its user can read would reach its sandboxes).
    pub local_git_remotes: Option<bool>,
}

/// `backend:`: exactly one of its keys, each the configuration of that backend (an externally
/// tagged enum, whose deserializer names the keys when there is more than one).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BackendConfig {
    /// `direct:`: processes on this host.
    #[cfg(feature = "direct")]
    Direct(Box<oz_backend_direct::DirectConfig>),
    /// `docker:`: containers on a Docker engine.
    #[cfg(feature = "docker")]
    Docker(Box<oz_backend_docker::DockerConfig>),
    /// `kubernetes:`: a Job per task.
    #[cfg(feature = "kubernetes")]
    Kubernetes(Box<oz_backend_k8s::KubernetesConfig>),
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneBackend;
        impl<'de> serde::de::Visitor<'de> for OneBackend {
            type Value = BackendConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping with one key: direct, docker or kubernetes")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let kind: BackendKind = map
                    .next_key()?
                    .ok_or_else(|| A::Error::custom("`backend` is empty; set one of direct, docker or kubernetes"))?;
                // A bare key (`docker:` with nothing under it) means that backend's defaults.
                let config = match kind {
                    #[cfg(feature = "direct")]
                    BackendKind::Direct => BackendConfig::Direct(map.next_value::<Option<_>>()?.unwrap_or_default()),
                    #[cfg(feature = "docker")]
                    BackendKind::Docker => BackendConfig::Docker(map.next_value::<Option<_>>()?.unwrap_or_default()),
                    #[cfg(feature = "kubernetes")]
                    BackendKind::Kubernetes => {
                        BackendConfig::Kubernetes(map.next_value::<Option<_>>()?.unwrap_or_default())
                    }
                    #[allow(unreachable_patterns)]
                    other => {
                        return Err(A::Error::custom(format!(
                            "this worker was built without the {} backend",
                            other.name()
                        )));
                    }
                };
                if let Some(second) = map.next_key::<BackendKind>()? {
                    return Err(A::Error::custom(format!(
                        "`backend` sets more than one backend ({}, {}); keep exactly one",
                        kind.name(),
                        second.name()
                    )));
                }
                Ok(config)
            }
        }
        deserializer.deserialize_map(OneBackend)
    }
}

/// Which backend (the `--backend` flag, and `oz local --backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Containers on a Docker engine.
    Docker,
    /// Processes on this host.
    Direct,
    /// A Job per task on a Kubernetes cluster.
    Kubernetes,
}

impl BackendConfig {
    /// Which backend this configures.
    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(feature = "direct")]
            BackendConfig::Direct(_) => BackendKind::Direct,
            #[cfg(feature = "docker")]
            BackendConfig::Docker(_) => BackendKind::Docker,
            #[cfg(feature = "kubernetes")]
            BackendConfig::Kubernetes(_) => BackendKind::Kubernetes,
        }
    }

    /// The variables every task of this backend gets (its section's `environment`).
    pub fn environment_mut(&mut self) -> &mut Vec<oz_core::task::EnvEntry> {
        match self {
            #[cfg(feature = "direct")]
            BackendConfig::Direct(c) => &mut c.environment,
            #[cfg(feature = "docker")]
            BackendConfig::Docker(c) => &mut c.environment,
            #[cfg(feature = "kubernetes")]
            BackendConfig::Kubernetes(c) => &mut c.environment,
        }
    }

    /// Adds the `-e` flags' variables after the file's, so a flag wins over the file for the same name.
    pub fn add_flag_environment(&mut self, vars: Vec<(String, String)>) {
        self.environment_mut().extend(vars.into_iter().map(|(name, value)| oz_core::task::EnvEntry::new(name, value)));
    }

    /// The defaults of `kind` (a flag naming a backend the file does not configure).
    pub fn defaults(kind: BackendKind) -> Result<Self, WorkerError> {
        match kind {
            #[cfg(feature = "direct")]
            BackendKind::Direct => Ok(BackendConfig::Direct(Default::default())),
            #[cfg(feature = "docker")]
            BackendKind::Docker => Ok(BackendConfig::Docker(Default::default())),
            #[cfg(feature = "kubernetes")]
            BackendKind::Kubernetes => Ok(BackendConfig::Kubernetes(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(WorkerError::Config(format!(
                "this worker was built without the {} backend (cargo feature {0:?})",
                other.name()
            ))),
        }
    }
}

impl BackendKind {
    /// `docker`, `direct`, `kubernetes`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Direct => "direct",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

/// Parses the YAML file's text; errors name the offending key.
pub fn parse_file(text: &str) -> Result<FileConfig, WorkerError> {
    serde_saphyr::from_str(text).map_err(|e| WorkerError::ConfigFile(Box::new(e)))
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

/// The backend to use: the flag's (with the file's section for it, if the file has that backend;
/// else its defaults), else the file's backend, else docker's defaults (as Oz).
pub fn backend_config(flag: Option<BackendKind>, file: Option<BackendConfig>) -> Result<BackendConfig, WorkerError> {
    match (flag, file) {
        (Some(kind), Some(config)) if config.kind() == kind => Ok(config),
        (Some(kind), _) => BackendConfig::defaults(kind),
        (None, Some(config)) => Ok(config),
        (None, None) => BackendConfig::defaults(BackendKind::Docker),
    }
}

#[cfg(all(test, feature = "direct", feature = "docker", feature = "kubernetes"))]
mod tests {
    use super::*;
    use oz_core::task::EnvEntry;

    #[test]
    fn parses_the_oz_shape() {
        let c = parse_file(
            "worker_id: my-worker\ncleanup: false\nmax_concurrent_tasks: 3\nbackend:\n  direct:\n    workspace_root: /var/lib/oz\n    oz_path: /usr/local/bin/oz\n    environment:\n      - name: A\n        value: b\n      - name: HOME_INHERITED\n",
        )
        .unwrap();
        assert_eq!(c.worker_id.as_deref(), Some("my-worker"));
        assert_eq!(c.max_concurrent_tasks, Some(3));
        let Some(BackendConfig::Direct(d)) = c.backend.clone() else { panic!("{:?}", c.backend) };
        assert_eq!(d.environment[1], EnvEntry { name: "HOME_INHERITED".into(), value: None });
        assert_eq!(d.oz_path.as_deref(), Some(std::path::Path::new("/usr/local/bin/oz")));
        assert_eq!(backend_config(None, c.backend.clone()).unwrap().kind(), BackendKind::Direct);
        assert_eq!(backend_config(Some(BackendKind::Docker), c.backend).unwrap().kind(), BackendKind::Docker);
        assert_eq!(backend_config(None, None).unwrap().kind(), BackendKind::Docker);
        let k8s = parse_file(
            "backend:\n  kubernetes:\n    namespace: agents\n    unschedulable_timeout: 30s\n    pod_template: {spec: {}}\n    preflight_image: busybox:1.36\n    preflight_resources: {cpu: 100m, memory: 64Mi}\n    egress_policy: {allowed_cidrs: [10.0.0.0/8], ports: [443]}\n    environment: [{name: FROM_FILE, value: k8s}]\n",
        )
        .unwrap();
        let Some(BackendConfig::Kubernetes(section)) = k8s.backend else { panic!() };
        assert_eq!(section.preflight_resources.memory_bytes, Some(64 << 20));
        assert_eq!(section.egress_policy.unwrap().ports, vec![443]);
        assert_eq!(section.environment, vec![EnvEntry::new("FROM_FILE", "k8s")], "kubernetes.environment is read");
        let docker = parse_file(
            "backend:\n  docker:\n    pull_policy: never\n    network: isolated\n    allowed_domains: [github.com]\n    allowed_ranges: [10.20.0.0/16]\n",
        )
        .unwrap();
        let Some(BackendConfig::Docker(section)) = docker.backend else { panic!() };
        assert_eq!(section.pull_policy, oz_core::image::PullPolicy::Never);
        assert_eq!(section.network, oz_backend_docker::DefaultNetwork::Isolated);
    }

    #[test]
    fn a_bare_backend_key_means_its_defaults() {
        for (yaml, kind) in [
            ("backend:\n  direct:\n", BackendKind::Direct),
            ("backend:\n  docker:\n", BackendKind::Docker),
            ("backend:\n  kubernetes: {}\n", BackendKind::Kubernetes),
        ] {
            let c = parse_file(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(c.backend.unwrap().kind(), kind, "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_and_two_backends_are_errors_naming_the_key() {
        let e = parse_file("worker_id: w\nmax_concurent_tasks: 3\n").unwrap_err().to_string();
        assert!(e.contains("max_concurent_tasks"), "{e}");
        let e = parse_file("backend:\n  direct:\n    workspace_rot: /x\n").unwrap_err().to_string();
        assert!(e.contains("workspace_rot"), "{e}");
        let e = parse_file("backend:\n  direct: {}\n  docker: {}\n").unwrap_err().to_string();
        assert!(e.contains("more than one backend") && e.contains("docker") && e.contains("direct"), "{e}");
        let e = parse_file("backend:\n  docker:\n    pull_policy: sometimes\n").unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = parse_file("backend:\n  lambda: {}\n").unwrap_err().to_string();
        assert!(e.contains("lambda"), "{e}");
        assert!(parse_file("worker_id: [unclosed").is_err());
    }

    /// `-e FOO=1` over `environment: [{name: FOO, value: "2"}]`: the flag comes later, and every
    /// backend lets a later entry win.
    #[test]
    fn flag_variables_come_after_the_files() {
        let c = parse_file("backend:\n  direct:\n    environment: [{name: FOO, value: \"2\"}]\n").unwrap();
        let mut config = c.backend.unwrap();
        config.add_flag_environment(vec![("FOO".into(), "1".into())]);
        assert_eq!(*config.environment_mut(), vec![EnvEntry::new("FOO", "2"), EnvEntry::new("FOO", "1")]);
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
