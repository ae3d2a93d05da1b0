//! Making a backend from its configuration: the one place that does it, for `oz-agent-worker` and for
//! `oz local`.

use std::sync::Arc;

use oz_core::backend::Backend;

use crate::config::BackendConfig;
use crate::error::WorkerError;

/// A backend ready to take tasks, and the program its tasks run as the runner.
pub struct BuiltBackend {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The head of every task's argv (`/agent/entrypoint.sh` with a sidecar, else the `oz` binary).
    pub runner_entrypoint: String,
}

impl std::fmt::Debug for BuiltBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltBackend")
            .field("backend", &self.backend.name())
            .field("runner_entrypoint", &self.runner_entrypoint)
            .finish()
    }
}

/// Where the sandboxes of `config`'s backend find the worker's git mirrors kept in `dir` (for
/// `OZ_GIT_MIRROR_DIR`): the folder itself on Direct; a read-only bind mount at
/// [`SANDBOX_GIT_MIRRORS`] on Docker, added to `config`. Kubernetes has none yet.
pub fn mount_git_mirrors(config: &mut BackendConfig, dir: &std::path::Path) -> Result<String, WorkerError> {
    if !dir.is_absolute() {
        return Err(WorkerError::Config(format!("git_mirrors: {} must be an absolute path", dir.display())));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| WorkerError::Config(format!("git_mirrors: could not create {}: {e}", dir.display())))?;
    match config {
        #[cfg(feature = "direct")]
        BackendConfig::Direct(_) => Ok(dir.display().to_string()),
        #[cfg(feature = "docker")]
        BackendConfig::Docker(docker) => {
            docker.volumes.push(format!("{}:{SANDBOX_GIT_MIRRORS}:ro", dir.display()));
            Ok(SANDBOX_GIT_MIRRORS.to_owned())
        }
        #[allow(unreachable_patterns)]
        _ => Err(WorkerError::Config("git_mirrors: the kubernetes backend has no git mirrors yet".into())),
    }
}

/// Gives the backend `config` describes the folder of package caches (`package_caches:`), made
/// with mode 0700: one folder per environment in it, which its sandboxes get at `OZ_CACHE_DIR`.
pub fn mount_package_caches(config: &mut BackendConfig, dir: &std::path::Path) -> Result<(), WorkerError> {
    let invalid = |why: String| WorkerError::Config(format!("package_caches: {why}"));
    if !dir.is_absolute() {
        return Err(invalid(format!("{} must be an absolute path", dir.display())));
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
        .map_err(|e| invalid(format!("could not create {}: {e}", dir.display())))?;
    match config {
        #[cfg(feature = "direct")]
        BackendConfig::Direct(direct) => {
            direct.cache_root = Some(dir.to_path_buf());
            Ok(())
        }
        #[cfg(feature = "docker")]
        BackendConfig::Docker(docker) => {
            docker.cache_root = Some(dir.to_path_buf());
            Ok(())
        }
        #[allow(unreachable_patterns)]
        _ => Err(invalid("the kubernetes backend has no package caches yet".into())),
    }
}

/// Where a container finds the worker's git mirrors.
pub const SANDBOX_GIT_MIRRORS: &str = "/oz-cache/git";

/// Makes the backend `config` describes, for worker `worker_id`, removing what tasks leave when
/// `cleanup` is on. Connects to the engine or cluster and, for Kubernetes, runs the preflight Job.
pub async fn build(config: BackendConfig, worker_id: &str, cleanup: bool) -> Result<BuiltBackend, WorkerError> {
    let sidecar_entrypoint = oz_core::sidecar::SidecarLayout::default().entrypoint();
    match config {
        #[cfg(feature = "direct")]
        BackendConfig::Direct(mut direct) => {
            direct.worker_id = worker_id.to_owned();
            direct.cleanup = cleanup;
            let runner_entrypoint =
                direct.oz_path.as_ref().map_or_else(|| "oz".to_owned(), |p| p.display().to_string());
            let backend = oz_backend_direct::DirectBackend::new(*direct).map_err(WorkerError::backend)?;
            Ok(BuiltBackend { backend: Arc::new(backend), runner_entrypoint })
        }
        #[cfg(feature = "docker")]
        BackendConfig::Docker(mut docker) => {
            docker.worker_id = worker_id.to_owned();
            docker.cleanup = cleanup;
            let runner_entrypoint = if docker.sidecar_binary.is_some() { sidecar_entrypoint } else { "oz".to_owned() };
            let backend = oz_backend_docker::DockerBackend::connect(*docker).await.map_err(WorkerError::backend)?;
            Ok(BuiltBackend { backend: Arc::new(backend), runner_entrypoint })
        }
        #[cfg(feature = "kubernetes")]
        BackendConfig::Kubernetes(mut k8s) => {
            k8s.worker_id = worker_id.to_owned();
            k8s.cleanup = cleanup;
            let backend = oz_backend_k8s::KubernetesBackend::connect(*k8s).await.map_err(WorkerError::backend)?;
            tracing::info!("running the Kubernetes preflight Job");
            backend.preflight().await.map_err(WorkerError::backend)?;
            Ok(BuiltBackend { backend: Arc::new(backend), runner_entrypoint: sidecar_entrypoint })
        }
    }
}
