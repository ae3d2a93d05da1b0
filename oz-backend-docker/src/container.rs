//! The container a task runs in: its create request (hardening, limits, labels, mounts, network).
//! Pure: no engine calls, so the shape is unit-tested exactly.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use oz_core::image::ImageRef;
use oz_core::sidecar::{DEFAULT_PATH, SidecarLayout};
use oz_core::task::{TaskSpec, labels};

use crate::config::DockerConfig;

/// Label: whether to remove the container after its task (`true`/`false`), for a restarted worker.
pub const CLEANUP_LABEL: &str = "oz.dev/cleanup";
/// Label: the task's deadline as Unix seconds, for a restarted worker.
pub const DEADLINE_LABEL: &str = "oz.dev/deadline";
/// Where the task's working directory lives.
pub use oz_core::task::SANDBOX_WORKSPACE as WORKSPACE;

/// What the task's container is made from besides its spec.
#[derive(Debug, Clone)]
pub struct ContainerInputs<'a> {
    /// The resolved image.
    pub image: &'a ImageRef,
    /// The image's own `PATH`, if it sets one.
    pub image_path: Option<String>,
    /// The sidecar volume to mount read-only at `/agent`, if any.
    pub sidecar_volume: Option<&'a str>,
    /// Whether the sidecar carries a CA bundle.
    pub sidecar_has_ca_bundle: bool,
    /// The network mode (`none`, `bridge`, a network name).
    pub network: String,
    /// The deadline as Unix seconds, if the task has a timeout.
    pub deadline: Option<u64>,
    /// Variables the backend's configuration gives every task (`environment`); they win over the spec's.
    pub configured_env: &'a [(String, String)],
    /// Variables the backend adds (the egress proxy's, in isolated mode); the spec's win.
    pub extra_env: Vec<(String, String)>,
    /// Set for a warm sandbox: labelled with this id, its stdin kept open for the handoff.
    pub warm_id: Option<&'a str>,
}

pub use oz_core::task::SANDBOX_CACHE_DIR as CACHE_MOUNT;

/// The host folder of a sandbox's package cache, when it has a key and the backend a cache root.
pub fn cache_folder(spec: &TaskSpec, config: &DockerConfig) -> Option<std::path::PathBuf> {
    Some(oz_core::task::cache_folder(config.cache_root.as_ref()?, spec.sandbox.cache.as_ref()?))
}

/// The read-only binds of the git mirrors a sandbox may read: each of its spec's that exists on the
/// host, at its place under [`oz_core::task::SANDBOX_GIT_MIRRORS`].
pub fn mirror_binds(spec: &TaskSpec, config: &DockerConfig) -> Vec<String> {
    let Some(root) = &config.git_mirrors_root else { return Vec::new() };
    let inside = std::path::Path::new(oz_core::task::SANDBOX_GIT_MIRRORS);
    spec.sandbox
        .git_mirrors
        .iter()
        .map(|repo| (oz_core::runner::mirror_of(root, repo), oz_core::runner::mirror_of(inside, repo)))
        .filter(|(host, _)| host.is_dir())
        .map(|(host, sandbox)| format!("{}:{}:ro", host.display(), sandbox.display()))
        .collect()
}

/// Makes a sandbox's package cache folder on the host. Mode 0777: the image may run as any user,
/// and the folder is reachable only through the cache root, which is the worker's own (0700).
/// A folder that is there but is not a real folder (a symlink planted to widen another's mode) is
/// refused, never followed.
pub fn ensure_cache_folder(spec: &TaskSpec, config: &DockerConfig) -> std::io::Result<()> {
    let Some(folder) = cache_folder(spec, config) else { return Ok(()) };
    match std::fs::create_dir(&folder) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !std::fs::symlink_metadata(&folder)?.file_type().is_dir() {
        let message = format!("{} is not a folder (a symlink?)", folder.display());
        return Err(std::io::Error::other(message));
    }
    std::fs::set_permissions(&folder, std::os::unix::fs::PermissionsExt::from_mode(0o777))
}

/// Label: the warm sandbox a container is (and, once handed a task, was).
pub const WARM_LABEL: &str = labels::WARM_ID;

/// The name of a task's container.
pub fn container_name(spec: &TaskSpec) -> String {
    execution_name("oz", spec)
}

/// `<prefix>-<task id>[-<execution id>]`: a name of something made for one execution of a task, so
/// that what an execution kept (cleanup off) is never in the way of the next one (a run continued
/// after its end runs again under the same task id).
pub fn execution_name(prefix: &str, spec: &TaskSpec) -> String {
    match &spec.execution_id {
        Some(e) => format!("{prefix}-{}-{e}", spec.task_id),
        None => format!("{prefix}-{}", spec.task_id),
    }
}

/// The name a warm container takes when it is handed a task: it names the run, and a restarted
/// worker reads the ids back from it ([`parse_assigned_name`]); the task id's length comes first
/// because ids may hold `-`. (A container's labels cannot change; its name can, and is out of the
/// task's reach, unlike anything inside the container.)
pub fn assigned_name(task_id: &str, execution_id: Option<&str>) -> String {
    match execution_id {
        Some(e) => format!("oz-run-{}-{task_id}-{e}", task_id.len()),
        None => format!("oz-run-{}-{task_id}", task_id.len()),
    }
}

/// The task id and execution id in an [`assigned_name`] (with or without the engine's leading `/`).
pub fn parse_assigned_name(name: &str) -> Option<(String, Option<String>)> {
    let rest = name.trim_start_matches('/').strip_prefix("oz-run-")?;
    let (length, rest) = rest.split_once('-')?;
    let length: usize = length.parse().ok()?;
    let task_id = rest.get(..length)?;
    let execution_id = match rest.get(length..)? {
        "" => None,
        more => Some(more.strip_prefix('-')?.to_owned()),
    };
    (!task_id.is_empty()).then(|| (task_id.to_owned(), execution_id))
}

/// A task's own variables in its container: the spec's, then the backend's configured ones, which
/// win. A warm sandbox is handed these with its task.
pub fn task_env(spec: &TaskSpec, configured_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = spec.effective_env();
    for (name, value) in configured_env {
        env.retain(|(n, _)| n != name);
        env.push((name.clone(), value.clone()));
    }
    env
}

/// The task's working directory in its container.
pub fn workdir(spec: &TaskSpec) -> String {
    oz_core::task::container_workdir(&spec.sandbox)
}

/// The create request for a task's container.
pub fn container_body(spec: &TaskSpec, config: &DockerConfig, inputs: &ContainerInputs<'_>) -> ContainerCreateBody {
    // The secret input (the workload token) arrives on stdin: only the variable saying so is here.
    // A warm sandbox gets its task (and the task's token) on stdin.
    let has_stdin = spec.stdin.is_some() || spec.secret_input.is_some() || inputs.warm_id.is_some();
    let mut env = task_env(spec, inputs.configured_env);
    if spec.secret_input.is_some() {
        env.push((oz_core::runner::env::SECRET_INPUT.to_owned(), oz_core::runner::env::SECRET_INPUT_STDIN.to_owned()));
    }
    for (name, value) in &inputs.extra_env {
        if !env.iter().any(|(n, _)| n == name) {
            env.push((name.clone(), value.clone()));
        }
    }
    if inputs.sidecar_volume.is_some() {
        let layout = SidecarLayout::default();
        let image_path = inputs.image_path.clone().unwrap_or_else(|| DEFAULT_PATH.to_owned());
        for (name, value) in layout.env(&image_path, !inputs.sidecar_has_ca_bundle) {
            if !env.iter().any(|(n, _)| *n == name) {
                env.push((name, value));
            }
        }
    }
    let mut labels: HashMap<String, String> = spec.labels(&config.worker_id).into_iter().collect();
    labels.insert(CLEANUP_LABEL.into(), (spec.cleanup && config.cleanup).to_string());
    if let Some(deadline) = inputs.deadline {
        labels.insert(DEADLINE_LABEL.into(), deadline.to_string());
    }
    if let Some(warm_id) = inputs.warm_id {
        labels.insert(WARM_LABEL.into(), warm_id.to_owned());
    }
    let mut binds = config.volumes.clone();
    if let Some(folder) = cache_folder(spec, config) {
        binds.push(format!("{}:{CACHE_MOUNT}", folder.display()));
        // The backend's, as on Direct: a setting of the same name cannot point it elsewhere.
        env.retain(|(n, _)| n != oz_core::runner::env::CACHE_DIR);
        env.push((oz_core::runner::env::CACHE_DIR.to_owned(), CACHE_MOUNT.to_owned()));
    }
    binds.extend(mirror_binds(spec, config));
    if let Some(volume) = inputs.sidecar_volume {
        binds.push(format!("{volume}:{}:ro", SidecarLayout::default().mount()));
    }
    let memory = spec.sandbox.resources.memory_bytes.and_then(|m| i64::try_from(m).ok());
    let nano_cpus = spec.sandbox.resources.vcpus.map(|v| (v * 1e9) as i64).filter(|n| *n > 0);
    let pids = spec.sandbox.resources.max_pids.and_then(|p| i64::try_from(p).ok()).unwrap_or(config.pids_limit);
    let workdir = workdir(spec);
    let mut log_opts = HashMap::new();
    log_opts.insert("max-size".to_owned(), config.log_max_size.clone());
    log_opts.insert("max-file".to_owned(), "2".to_owned());
    let (entrypoint, cmd) = match spec.argv.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    ContainerCreateBody {
        image: Some(inputs.image.to_string()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(workdir),
        user: config.user.clone(),
        labels: Some(labels),
        attach_stdin: Some(has_stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(has_stdin),
        stdin_once: Some(has_stdin),
        tty: Some(false),
        network_disabled: Some(inputs.network == "none"),
        host_config: Some(HostConfig {
            // A real init as PID 1: signals reach the agent, zombies are reaped.
            init: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            memory,
            // Swap equal to memory: no swap beyond the limit.
            memory_swap: memory,
            nano_cpus,
            pids_limit: Some(pids),
            network_mode: Some(inputs.network.clone()),
            binds: Some(binds),
            log_config: Some(HostConfigLogConfig { typ: Some("json-file".into()), config: Some(log_opts) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_is_hardened_limited_and_labelled() {
        let mut config = DockerConfig::new("w1");
        config.volumes = vec!["/data:/data:ro".into()];
        config.user = Some("1000:1000".into());
        let mut spec = TaskSpec::new("t1", vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into()])
            .env("A", "1")
            .env("PATH", "/custom");
        spec.execution_id = Some("e1".into());
        spec.sandbox.resources.vcpus = Some(1.5);
        spec.sandbox.resources.memory_bytes = Some(2 << 30);
        let image = ImageRef::parse("debian:bookworm").unwrap();
        let inputs = ContainerInputs {
            image: &image,
            image_path: Some("/usr/bin:/bin".into()),
            sidecar_volume: Some("oz-sidecar-abc"),
            sidecar_has_ca_bundle: true,
            network: "none".into(),
            deadline: Some(1_900_000_000),
            configured_env: &[("FROM_CONFIG".into(), "1".into()), ("A".into(), "configured".into())],
            extra_env: vec![("HTTPS_PROXY".into(), "http://egress:3128".into())],
            warm_id: None,
        };
        let body = container_body(&spec, &config, &inputs);
        let host = body.host_config.clone().unwrap();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
        assert_eq!(host.memory, Some(2 << 30));
        assert_eq!(host.memory_swap, host.memory, "no swap beyond memory");
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.pids_limit, Some(4096));
        assert_eq!(host.init, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.binds.unwrap(), vec!["/data:/data:ro".to_string(), "oz-sidecar-abc:/agent:ro".to_string()]);
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
        assert_eq!(body.entrypoint, Some(vec!["/agent/entrypoint.sh".to_string()]));
        assert_eq!(body.cmd, Some(vec!["agent".to_string(), "run".to_string()]));
        let env = body.env.unwrap();
        assert!(env.contains(&"PATH=/custom".to_string()), "the spec's PATH wins: {env:?}");
        assert!(env.contains(&"SSL_CERT_FILE=/agent/certs/ca-certificates.crt".to_string()));
        assert!(env.contains(&"HTTPS_PROXY=http://egress:3128".to_string()));
        assert!(env.contains(&"FROM_CONFIG=1".to_string()), "{env:?}");
        assert!(env.contains(&"A=configured".to_string()) && !env.contains(&"A=1".to_string()), "{env:?}");
        let labels = body.labels.unwrap();
        assert_eq!(labels["oz.dev/worker-id"], "w1");
        assert_eq!(labels["oz.dev/task-id"], "t1");
        assert_eq!(labels["oz.dev/execution-id"], "e1");
        assert_eq!(labels[DEADLINE_LABEL], "1900000000");
        assert_eq!(container_name(&spec), "oz-t1-e1");
        assert!(!labels.contains_key(WARM_LABEL));
        assert_eq!(body.open_stdin, Some(false));
        let warm = ContainerInputs { warm_id: Some("warm-1"), ..inputs };
        let body = container_body(&spec, &config, &warm);
        assert_eq!(body.labels.unwrap()[WARM_LABEL], "warm-1");
        assert_eq!((body.open_stdin, body.stdin_once), (Some(true), Some(true)), "the handoff comes on stdin");
    }

    #[test]
    fn a_sandbox_is_given_its_own_environments_git_mirrors_only() {
        let root = tempfile::tempdir().unwrap();
        for repo in ["acme/app.git", "acme/infra-private.git"] {
            std::fs::create_dir_all(root.path().join(repo)).unwrap();
        }
        let mut config = DockerConfig::new("w1");
        config.git_mirrors_root = Some(root.path().to_path_buf());
        let mut spec = TaskSpec::new("t1", vec!["oz".into()]);
        spec.sandbox.git_mirrors = vec![
            oz_core::environment::RepoRef::new("acme", "app").unwrap(),
            // No mirror of it yet: nothing to bind (Docker would make an empty folder).
            oz_core::environment::RepoRef::new("acme", "new").unwrap(),
        ];
        let image = ImageRef::parse("debian:bookworm").unwrap();
        let inputs = ContainerInputs {
            image: &image,
            image_path: None,
            sidecar_volume: None,
            sidecar_has_ca_bundle: false,
            network: "none".into(),
            deadline: None,
            configured_env: &[],
            extra_env: Vec::new(),
            warm_id: None,
        };
        let binds = container_body(&spec, &config, &inputs).host_config.unwrap().binds.unwrap();
        assert_eq!(binds, [format!("{}/acme/app.git:/oz-cache/git/acme/app.git:ro", root.path().display())]);
        spec.sandbox.git_mirrors.clear();
        let binds = container_body(&spec, &config, &inputs).host_config.unwrap().binds.unwrap_or_default();
        assert!(binds.is_empty(), "{binds:?}");
    }

    #[test]
    fn an_assigned_name_gives_its_ids_back_whatever_they_hold() {
        for (task, execution) in [("t1", None), ("a-b-c", Some("e-1")), ("x", Some("7")), ("run.1_2-", None)] {
            let name = assigned_name(task, execution);
            assert_eq!(parse_assigned_name(&name), Some((task.to_owned(), execution.map(str::to_owned))), "{name}");
            assert_eq!(parse_assigned_name(&format!("/{name}")).unwrap().0, task);
        }
        for bad in ["oz-warm-1", "oz-run-", "oz-run-x-t", "oz-run-5-abc", "oz-run-2-abX", "oz-run-0-", "oz-t1-e1"] {
            assert_eq!(parse_assigned_name(bad), None, "{bad}");
        }
    }
}
