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
/// `OZ_GIT_MIRROR_DIR`): the folder itself on Direct; on Docker, [`SANDBOX_GIT_MIRRORS`], where each
/// sandbox gets its own environment's mirrors bound read-only; on Kubernetes, the claim named by
/// `git_mirror_claim` (mounted at `dir` in the worker's own Pod), of which each task's Pod mounts
/// its environment's mirrors there.
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
            docker.git_mirrors_root = Some(dir.to_path_buf());
            Ok(SANDBOX_GIT_MIRRORS.to_owned())
        }
        #[cfg(feature = "kubernetes")]
        BackendConfig::Kubernetes(kubernetes) => {
            if kubernetes.git_mirror_claim.is_none() {
                return Err(WorkerError::Config(
                    "git_mirrors: on the kubernetes backend, also name the claim that holds it (backend.kubernetes.git_mirror_claim)".into(),
                ));
            }
            // The folder is where the claim is mounted in the worker's own Pod: the preflight Job
            // reads this back through the claim.
            let check = uuid::Uuid::new_v4().simple().to_string();
            std::fs::create_dir_all(dir.join(oz_backend_k8s::config::MIRROR_CHECK_DIR))
                .and_then(|()| std::fs::write(dir.join(oz_backend_k8s::config::MIRROR_CHECK_FILE), &check))
                .map_err(|e| WorkerError::Config(format!("git_mirrors: could not write to {}: {e}", dir.display())))?;
            kubernetes.git_mirror_check = Some(check);
            Ok(SANDBOX_GIT_MIRRORS.to_owned())
        }
        #[allow(unreachable_patterns)]
        _ => Err(WorkerError::Config("git_mirrors: this backend has no git mirrors".into())),
    }
}

/// Gives the backend `config` describes the folder of package caches (`package_caches:`), made
/// with mode 0700: one folder per environment in it, which its sandboxes get at `OZ_CACHE_DIR`.
/// Refused: a relative path, a symlink, a folder another user owns, a path Docker's bind syntax
/// cannot carry, and a folder inside (or around) the git mirrors.
pub fn mount_package_caches(
    config: &mut BackendConfig,
    dir: &std::path::Path,
    git_mirrors: Option<&std::path::Path>,
) -> Result<(), WorkerError> {
    let invalid = |why: String| WorkerError::Config(format!("package_caches: {why}"));
    if !dir.is_absolute() {
        return Err(invalid(format!("{} must be an absolute path", dir.display())));
    }
    if let Some(mirrors) = git_mirrors
        && (dir.starts_with(mirrors) || mirrors.starts_with(dir))
    {
        return Err(invalid(format!("{} must be apart from git_mirrors ({})", dir.display(), mirrors.display())));
    }
    match config {
        #[cfg(feature = "direct")]
        BackendConfig::Direct(direct) => {
            if dir.starts_with(&direct.workspace_root) || direct.workspace_root.starts_with(dir) {
                return Err(invalid(format!("{} must be apart from the workspace_root", dir.display())));
            }
            make_private_folder(dir).map_err(invalid)?;
            direct.cache_root = Some(dir.to_path_buf());
            Ok(())
        }
        #[cfg(feature = "docker")]
        BackendConfig::Docker(docker) => {
            if dir.to_string_lossy().contains([':', ',']) {
                return Err(invalid(format!("{} must not contain ':' or ',' (a Docker bind)", dir.display())));
            }
            make_private_folder(dir).map_err(invalid)?;
            docker.cache_root = Some(dir.to_path_buf());
            Ok(())
        }
        #[allow(unreachable_patterns)]
        _ => Err(invalid(
            "on the kubernetes backend, name a PersistentVolumeClaim instead (backend.kubernetes.package_cache_claim)"
                .into(),
        )),
    }
}

/// Refuses a Kubernetes `git_mirror_claim` without `git_mirrors:` (the claim would be mounted in
/// every Pod while the worker keeps no mirrors in it).
pub fn check_mirror_claim(config: &BackendConfig, git_mirrors: Option<&std::path::Path>) -> Result<(), WorkerError> {
    match config {
        #[cfg(feature = "kubernetes")]
        BackendConfig::Kubernetes(kubernetes) if kubernetes.git_mirror_claim.is_some() && git_mirrors.is_none() => {
            Err(WorkerError::Config(
                "backend.kubernetes.git_mirror_claim needs git_mirrors: (where the worker's Pod mounts the claim)"
                    .into(),
            ))
        }
        _ => {
            let _ = git_mirrors;
            Ok(())
        }
    }
}

/// Whether the backend `config` describes keeps package caches of its own (a Kubernetes claim),
/// with no `package_caches:` folder on the worker's host.
pub fn has_package_cache_claim(config: &BackendConfig) -> bool {
    match config {
        #[cfg(feature = "kubernetes")]
        BackendConfig::Kubernetes(kubernetes) => kubernetes.package_cache_claim.is_some(),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Makes `dir` (mode 0700) or checks the one there: a real folder (not a symlink) of this user's.
#[cfg(any(feature = "direct", feature = "docker"))]
fn make_private_folder(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    let found = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !found.file_type().is_dir() {
        return Err(format!("{} is not a folder (a symlink?)", dir.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if found.uid() != me {
        return Err(format!("{} belongs to uid {}, not to this worker's user ({me})", dir.display(), found.uid()));
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("could not make {} private: {e}", dir.display()))
}

pub use oz_core::task::SANDBOX_GIT_MIRRORS;

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

#[cfg(all(test, feature = "direct", feature = "docker"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn direct(root: &std::path::Path) -> BackendConfig {
        BackendConfig::Direct(Box::new(oz_backend_direct::DirectConfig::new("w", root.join("ws"))))
    }

    #[test]
    fn package_caches_are_a_private_folder_of_this_user_apart_from_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let caches = tmp.path().join("caches");
        let mut config = direct(tmp.path());
        mount_package_caches(&mut config, &caches, Some(&tmp.path().join("mirrors"))).unwrap();
        let BackendConfig::Direct(d) = &config else { unreachable!() };
        assert_eq!(d.cache_root.as_deref(), Some(caches.as_path()));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&caches).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        let refused = |dir: &std::path::Path, mirrors: Option<&std::path::Path>, config: &mut BackendConfig| {
            mount_package_caches(config, dir, mirrors).unwrap_err().to_string()
        };
        assert!(refused(std::path::Path::new("caches"), None, &mut direct(tmp.path())).contains("absolute"));
        let inside_mirrors =
            refused(&tmp.path().join("m/caches"), Some(&tmp.path().join("m")), &mut direct(tmp.path()));
        assert!(inside_mirrors.contains("apart from git_mirrors"), "{inside_mirrors}");
        let in_workspaces = refused(&tmp.path().join("ws/caches"), None, &mut direct(tmp.path()));
        assert!(in_workspaces.contains("workspace_root"), "{in_workspaces}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&caches, &link).unwrap();
        assert!(refused(&link, None, &mut direct(tmp.path())).contains("symlink"));
        let mut docker = BackendConfig::Docker(Box::new(oz_backend_docker::DockerConfig::new("w")));
        assert!(refused(&tmp.path().join("a:b"), None, &mut docker).contains("':'"));
    }
}
