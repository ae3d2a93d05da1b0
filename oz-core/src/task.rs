//! [`TaskSpec`]: everything a backend needs to run one task, with no backend-specific field.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::image::ImageRef;
use crate::run::validate_id;
use crate::validate;

/// Label keys every backend puts on what it creates, so a restarted worker can find it.
pub mod labels {
    /// Marks everything this project made.
    pub const MANAGED_BY: &str = "oz.dev/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "oz";
    /// The worker that made it.
    pub const WORKER_ID: &str = "oz.dev/worker-id";
    /// The task (run) id.
    pub const TASK_ID: &str = "oz.dev/task-id";
    /// The execution id, when the server sent one.
    pub const EXECUTION_ID: &str = "oz.dev/execution-id";
    /// A warm sandbox's id (`warm-...`), on what was made for it; it stays when the sandbox is
    /// handed a task (whose id then labels it where labels can change).
    pub const WARM_ID: &str = "oz.dev/warm-id";
}

/// A variable a backend's configuration gives every task (Oz's `environment: [{name, value}]`):
/// without a value, the task gets the worker process's own value of `name`.
/// Its `Debug` shows names, never values (an inherited value may be a token).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvEntry {
    /// The name.
    pub name: String,
    /// The value; absent = the worker's own value of `name`.
    #[serde(default)]
    pub value: Option<String>,
}

impl std::fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.value.is_some() { "[set]" } else { "[inherited]" };
        f.debug_struct("EnvEntry").field("name", &self.name).field("value", &value).finish()
    }
}

impl EnvEntry {
    /// A variable with a value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: Some(value.into()) }
    }

    /// The name and value, taking an absent value from `lookup` (the worker's environment); an
    /// invalid name or value, or an inherited variable the worker does not have, is an error naming
    /// `field` (`environment[2]`).
    pub fn resolve(&self, field: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, String), Error> {
        validate::env_name(field, &self.name)?;
        let value = match &self.value {
            Some(v) => v.clone(),
            None => lookup(&self.name).ok_or_else(|| {
                Error::invalid(
                    format!("{field}.value"),
                    format!("absent, and the worker has no variable {} to pass on", self.name),
                )
            })?,
        };
        validate::env_value(&format!("{field}.{}", self.name), &value)?;
        Ok((self.name.clone(), value))
    }

    /// [`EnvEntry::resolve`] for a list (`field[i]`).
    pub fn resolve_all(
        entries: &[EnvEntry],
        field: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, Error> {
        entries.iter().enumerate().map(|(i, e)| e.resolve(&format!("{field}[{i}]"), &lookup)).collect()
    }
}

/// A secret for a task's first process that must not appear in its environment, its argv or the
/// sandbox's own description (`docker inspect`, the Pod spec): the run's workload token. A backend
/// delivers it on the process's stdin (Direct, Docker) or in a file of an in-memory volume
/// (Kubernetes: a Secret object, referenced by name, removed with the task), and tells the process
/// which in `OZ_SECRET_INPUT` (`stdin`, or the file's path). `Debug` never shows it.
#[derive(Clone)]
pub struct SecretInput(secrecy::SecretString);

impl SecretInput {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(secrecy::SecretString::from(value.into()))
    }
    /// The value, for the one place that delivers it.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretInput([REDACTED])")
    }
}

impl PartialEq for SecretInput {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// See [`TaskSpec::stdin_delivery`]. Its `Debug` never shows the bytes (they may be a secret).
pub struct StdinDelivery {
    /// The bytes to write on the task's stdin, then close it.
    pub stdin: Option<Bytes>,
    /// The variable (name, value) to add to the task's environment.
    pub variable: Option<(String, String)>,
}

impl std::fmt::Debug for StdinDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinDelivery")
            .field("stdin", &self.stdin.as_ref().map(|b| format!("[{} bytes]", b.len())))
            .field("variable", &self.variable)
            .finish()
    }
}

/// How much of the machine a task may use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// CPUs (fractions allowed); `None` = no limit.
    pub vcpus: Option<f64>,
    /// Memory in bytes; `None` = no limit.
    pub memory_bytes: Option<u64>,
    /// The most processes/threads; `None` = the backend's default.
    pub max_pids: Option<u64>,
    /// The most open files; `None` = the backend's default.
    pub max_open_files: Option<u64>,
}

/// The network a sandbox gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// No network at all (loopback only).
    None,
    /// The backend's ordinary network (the host's, for the Direct backend).
    #[default]
    Default,
    /// An isolated network whose only way out is an egress proxy allowing these domains.
    Isolated {
        /// Domains reachable through the proxy (`github.com`, `*.crates.io`).
        allowed_domains: Vec<String>,
    },
}

/// A content to mount into the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SidecarSource {
    /// The content of an image.
    Image(ImageRef),
    /// A folder on the worker's host.
    HostPath(std::path::PathBuf),
}

/// A sidecar to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarMount {
    /// Where the content comes from.
    pub source: SidecarSource,
    /// Where it is mounted (absolute).
    pub mount_path: String,
    /// Whether the task may write to it.
    pub read_write: bool,
}

/// What is known about a sandbox before the task is: enough to prepare one ahead of time (a warm pool).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxSpec {
    /// The image; `None` = the backend's default (ignored by the Direct backend).
    pub image: Option<ImageRef>,
    /// Sidecars to mount; the first at `/agent` is the runner's.
    pub sidecars: Vec<SidecarMount>,
    /// The working directory, relative to the sandbox's workspace; `None` = the workspace itself.
    pub workdir: Option<String>,
    /// Limits.
    pub resources: Resources,
    /// Network.
    pub network: NetworkMode,
    /// Labels added to everything the backend creates (on top of the [`labels`] it always sets).
    pub labels: BTreeMap<String, String>,
    /// A package cache this sandbox shares with every later sandbox of the same key (the worker
    /// keys it by environment): a folder that outlives the sandbox, named to the task by
    /// `OZ_CACHE_DIR` ([`crate::runner::env::CACHE_DIR`]). `None`: no cache. A backend without a
    /// cache root configured gives none.
    pub cache: Option<String>,
    /// The worker's git mirrors ([`crate::runner::mirror_of`]) this sandbox may read, read-only:
    /// its environment's repos that have one. The container backends mount these alone, so one
    /// environment's private repo is not readable from another's sandbox; Direct, which isolates
    /// nothing, points at the whole folder.
    pub git_mirrors: Vec<crate::environment::RepoRef>,
}

impl SandboxSpec {
    /// Whether a sandbox prepared as `self` serves a task that asks for `wanted`: the same in all but
    /// the git mirrors, which are the environment's own either way, only taken at different times (a
    /// mirror made in between is not in the older one).
    pub fn serves(&self, wanted: &SandboxSpec) -> bool {
        let without_mirrors = |s: &SandboxSpec| SandboxSpec { git_mirrors: Vec::new(), ..s.clone() };
        without_mirrors(self) == without_mirrors(wanted)
    }
}

/// The workspace of a container's task (Docker, Kubernetes): the repos are cloned here.
pub const SANDBOX_WORKSPACE: &str = "/workspace";

/// A container task's working directory: [`SANDBOX_WORKSPACE`], or the sandbox's `workdir` in it.
pub fn container_workdir(sandbox: &SandboxSpec) -> String {
    match &sandbox.workdir {
        Some(w) => format!("{SANDBOX_WORKSPACE}/{}", w.trim_start_matches("./")),
        None => SANDBOX_WORKSPACE.to_owned(),
    }
}

/// Where a container finds its package cache (`OZ_CACHE_DIR`), on the backends with containers.
pub const SANDBOX_CACHE_DIR: &str = "/oz-cache/env";
/// Where a container finds the worker's git mirrors (`OZ_GIT_MIRROR_DIR`), read-only.
pub const SANDBOX_GIT_MIRRORS: &str = "/oz-cache/git";

/// The folder of a package cache under a backend's cache root: `<root>/<key>`.
pub fn cache_folder(root: &std::path::Path, key: &str) -> std::path::PathBuf {
    root.join(key)
}

/// One task for a backend to run.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The task (run) id; names the workspace, container or Job.
    pub task_id: String,
    /// The execution id, when the server sent one (a retried run has several).
    pub execution_id: Option<String>,
    /// The sandbox to run in.
    pub sandbox: SandboxSpec,
    /// The command: `argv[0]` and its arguments. Never carries a secret.
    pub argv: Vec<String>,
    /// The task's environment, in order; a later entry with the same name wins. The backend adds only
    /// what it documents (for example `HOME`, `TMPDIR`, `PATH`).
    pub env: Vec<(String, String)>,
    /// Bytes written to the task's stdin, which is then closed; `None` = an empty stdin.
    pub stdin: Option<Bytes>,
    /// A secret delivered outside the environment (see [`SecretInput`]); not with `stdin`.
    pub secret_input: Option<SecretInput>,
    /// Killed (SIGTERM, grace, SIGKILL) and failed with `task_timeout` after this long.
    pub timeout: Option<Duration>,
    /// Remove everything made for the task once it ends (the default); `false` keeps it for debugging.
    pub cleanup: bool,
}

impl TaskSpec {
    /// A spec with defaults: default sandbox, empty env, no timeout, cleanup on.
    pub fn new(task_id: impl Into<String>, argv: Vec<String>) -> Self {
        Self {
            task_id: task_id.into(),
            execution_id: None,
            sandbox: SandboxSpec::default(),
            argv,
            env: Vec::new(),
            stdin: None,
            secret_input: None,
            timeout: None,
            cleanup: true,
        }
    }

    /// What a backend that hands the secret input over on stdin writes there: the secret input, or the
    /// task's own stdin (a task cannot have both), and the variable that tells the task which.
    pub fn stdin_delivery(&self) -> Result<StdinDelivery, Error> {
        match (&self.secret_input, &self.stdin) {
            (Some(_), Some(_)) => {
                Err(Error::invalid("stdin", "a task with a secret input takes it on stdin; it cannot have stdin too"))
            }
            (Some(secret), None) => Ok(StdinDelivery {
                stdin: Some(Bytes::copy_from_slice(secret.expose().as_bytes())),
                variable: Some((
                    crate::runner::env::SECRET_INPUT.to_owned(),
                    crate::runner::env::SECRET_INPUT_STDIN.to_owned(),
                )),
            }),
            (None, stdin) => Ok(StdinDelivery { stdin: stdin.clone(), variable: None }),
        }
    }

    /// Adds a variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets whether to clean up.
    pub fn cleanup(mut self, cleanup: bool) -> Self {
        self.cleanup = cleanup;
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, stdin: impl Into<Bytes>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// The environment with later entries winning, in first-appearance order.
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(self.env.len());
        for (name, value) in &self.env {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => out.push((name.clone(), value.clone())),
            }
        }
        out
    }

    /// The labels every backend puts on what it creates for this task.
    pub fn labels(&self, worker_id: &str) -> BTreeMap<String, String> {
        let mut l = self.sandbox.labels.clone();
        l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        l.insert(labels::WORKER_ID.into(), worker_id.into());
        l.insert(labels::TASK_ID.into(), self.task_id.clone());
        if let Some(e) = &self.execution_id {
            l.insert(labels::EXECUTION_ID.into(), e.clone());
        }
        l
    }

    /// Checks ids, argv, env, workdir and limits.
    pub fn validate(&self) -> Result<(), Error> {
        validate_id("task_id", &self.task_id)?;
        if let Some(e) = &self.execution_id {
            validate_id("execution_id", e)?;
        }
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::invalid("argv", "must name a command"));
        }
        for (i, arg) in self.argv.iter().enumerate() {
            if arg.contains('\0') {
                return Err(Error::invalid(format!("argv[{i}]"), "must not contain a NUL byte"));
            }
        }
        for (name, value) in &self.env {
            validate::env_name("env", name)?;
            validate::env_value(&format!("env.{name}"), value)?;
        }
        if let Some(w) = &self.sandbox.workdir {
            validate::relative_path("workdir", w)?;
        }
        if let Some(key) = &self.sandbox.cache {
            // A folder name under the cache root: an id, never a path.
            validate_id("cache", key)?;
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("timeout", "must be more than zero"));
        }
        if let Some(cpus) = self.sandbox.resources.vcpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(Error::invalid("resources.vcpus", format!("{cpus} is not in (0, 1024]")));
        }
        if self.sandbox.resources.memory_bytes.is_some_and(|m| m < 4 * 1024 * 1024) {
            return Err(Error::invalid("resources.memory_bytes", "must be at least 4 MiB"));
        }
        for (i, s) in self.sandbox.sidecars.iter().enumerate() {
            validate::absolute_path(&format!("sidecars[{i}].mount_path"), &s.mount_path)?;
        }
        for (k, v) in &self.sandbox.labels {
            validate::text("labels", k, 253, false)?;
            validate::text(&format!("labels.{k}"), v, 1024, false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_env_later_wins_in_first_order() {
        let spec = TaskSpec::new("t1", vec!["true".into()]).env("A", "1").env("B", "2").env("A", "3");
        assert_eq!(spec.effective_env(), vec![("A".into(), "3".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn validation_refuses_bad_specs() {
        let ok = TaskSpec::new("t1", vec!["true".into()]);
        ok.validate().unwrap();
        let mut bad = vec![
            TaskSpec::new("../t", vec!["true".into()]),
            TaskSpec::new("t", vec![]),
            TaskSpec::new("t", vec!["a\0".into()]),
            ok.clone().env("BAD NAME", "x"),
            ok.clone().timeout(Duration::ZERO),
        ];
        let mut w = ok.clone();
        w.sandbox.workdir = Some("../../etc".into());
        bad.push(w);
        let mut m = ok.clone();
        m.sandbox.resources.memory_bytes = Some(1);
        bad.push(m);
        let mut c = ok.clone();
        c.sandbox.resources.vcpus = Some(f64::NAN);
        bad.push(c);
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    #[test]
    fn labels_identify_worker_task_and_execution() {
        let mut spec = TaskSpec::new("t1", vec!["true".into()]);
        spec.execution_id = Some("e1".into());
        let l = spec.labels("w1");
        assert_eq!(l[labels::WORKER_ID], "w1");
        assert_eq!(l[labels::TASK_ID], "t1");
        assert_eq!(l[labels::EXECUTION_ID], "e1");
        assert_eq!(l[labels::MANAGED_BY], "oz");
    }
}
