//! The Direct backend's configuration. It is also the `backend.direct` section of the worker's YAML
//! file (unknown keys are errors); `worker_id` and `cleanup` come from the worker, not the section.

use std::path::PathBuf;
use std::time::Duration;

use oz_core::task::EnvEntry;
use serde::Deserialize;

use crate::error::DirectError;

/// How the Direct backend runs tasks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectConfig {
    /// The worker's id; recorded in every workspace so a restarted worker finds only its own.
    #[serde(skip)]
    pub worker_id: String,
    /// Where per-task workspaces are made (`<root>/<task_id>`, mode 0700). Created if missing.
    /// Default: `oz-workspaces` in the system's temporary folder.
    pub workspace_root: PathBuf,
    /// The `oz` binary tasks run as their runner (default: `oz` on `PATH`). The backend runs whatever
    /// argv a task has; the worker puts this at its head.
    pub oz_path: Option<PathBuf>,
    /// Run every task in this existing folder instead of a fresh workspace (it is never removed).
    /// HOME, TMPDIR and the git config still live in the per-task folder.
    pub target_dir: Option<PathBuf>,
    /// A shell command run before each task, in its workspace, with its environment. It may write
    /// `KEY=VALUE` lines to `$OZ_ENVIRONMENT_FILE`; they are added to the task's environment.
    pub setup_command: Option<String>,
    /// A shell command run after each task, whatever its outcome.
    pub teardown_command: Option<String>,
    /// Variables every task gets from the backend's configuration (after the task's own). Entries
    /// without a value take the worker's own when the backend is made.
    pub environment: Vec<EnvEntry>,
    /// The `PATH` tasks get. Defaults to the worker's own `PATH`.
    pub path: String,
    /// How long a stopping task has between SIGTERM and SIGKILL (`10s` in the YAML).
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// The most open files per task process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
    /// Remove workspaces after their task (a task's `cleanup: false` also keeps its workspace).
    #[serde(skip)]
    pub cleanup: bool,
    /// Where package caches live (`<cache_root>/<key>`, one per environment; from the worker's
    /// `package_caches:`). `None`: tasks get no cache.
    #[serde(skip)]
    pub cache_root: Option<PathBuf>,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self::new("", std::env::temp_dir().join("oz-workspaces"))
    }
}

impl DirectConfig {
    /// Defaults for a worker: grace 10 s, 65536 open files, cleanup on, the worker's `PATH`.
    pub fn new(worker_id: impl Into<String>, workspace_root: impl Into<PathBuf>) -> Self {
        Self {
            worker_id: worker_id.into(),
            workspace_root: workspace_root.into(),
            oz_path: None,
            target_dir: None,
            setup_command: None,
            teardown_command: None,
            environment: Vec::new(),
            path: std::env::var("PATH").unwrap_or_else(|_| oz_core::sidecar::DEFAULT_PATH.to_owned()),
            stop_grace: Duration::from_secs(10),
            max_open_files: 65536,
            cleanup: true,
            cache_root: None,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), DirectError> {
        oz_core::run::validate_id("worker_id", &self.worker_id)?;
        if !self.workspace_root.is_absolute() {
            return Err(DirectError::Config(format!(
                "workspace_root {:?} must be an absolute path",
                self.workspace_root
            )));
        }
        if let Some(t) = &self.target_dir
            && (!t.is_absolute() || !t.is_dir())
        {
            return Err(DirectError::Config(format!("target_dir {t:?} must be an existing absolute folder")));
        }
        EnvEntry::resolve_all(&self.environment, "environment", |k| std::env::var(k).ok())?;
        Ok(())
    }

    /// The configured variables, each with its value (inherited ones resolved now).
    pub(crate) fn resolved_environment(&self) -> Result<Vec<EnvEntry>, DirectError> {
        let resolved = EnvEntry::resolve_all(&self.environment, "environment", |k| std::env::var(k).ok())?;
        Ok(resolved.into_iter().map(|(name, value)| EnvEntry::new(name, value)).collect())
    }
}
