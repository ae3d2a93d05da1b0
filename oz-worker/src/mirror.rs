//! The worker's git mirrors (`git_mirrors:` in its YAML file): a bare mirror of each repo of the
//! environments it serves, `<dir>/<owner>/<repo>.git` ([`oz_core::runner::mirror_of`]), that every
//! clone in its sandboxes references (read-only; `OZ_GIT_MIRROR_DIR`), so a cold clone fetches only
//! what the mirror lacks.
//!
//! The worker keeps them itself: a mirror is cloned the first time an environment needs it and
//! fetched again when the environment is used (a task assigned, a warm sandbox prepared), at most once
//! per [`REFRESH_INTERVAL`]. Sandboxes never write to it, so a task cannot plant objects another task
//! would borrow, and every object in it came through git's own checks (`index-pack`).
//!
//! The worker fetches with nothing of its host ([`crate::git`]) and, for a private repo, with the
//! read-only credential the control plane issues it for the environment: no sandbox holds one to
//! read the mirror. A repo it cannot read at all gets no mirror, and its clones go to the remote in
//! full. A sandbox is given the mirrors of its own environment's repos only
//! ([`GitMirrors::for_environment`]): one environment's private repo is not readable from another's
//! sandbox. Only branches and tags are mirrored. A mirror is never pruned of objects
//! (`gc.auto=0`, `maintenance.auto=false`), since clones that borrow from it need them for as long as
//! they live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oz_core::environment::{EnvironmentConfig, RepoRef};
use tracing::{debug, warn};

use crate::git::{FETCH_TIMEOUT, GitAccess};

/// A mirror is fetched at most this often.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// An environment's repos as last read, and its git base URL.
type Seen = (Vec<RepoRef>, String);

/// The mirrors in one folder.
pub struct GitMirrors {
    root: PathBuf,
    /// When each mirror was last refreshed, and the ones being refreshed now (`None`).
    refreshed: Mutex<HashMap<PathBuf, Option<Instant>>>,
    /// When each environment was last read for a refresh, and its repos then: a task of it within
    /// [`REFRESH_INTERVAL`] asks the control plane nothing.
    environments: Mutex<HashMap<String, (Instant, Seen)>>,
    access: GitAccess,
    /// Where environments are read from, by id (the worker's credential).
    control_plane: Option<oz_sdk::Client>,
}

impl std::fmt::Debug for GitMirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitMirrors").field("root", &self.root).finish_non_exhaustive()
    }
}

impl GitMirrors {
    /// Mirrors kept in `root` (created if missing), fetched with `access`; `control_plane` reads
    /// environments by id. Half-made mirrors an earlier process left (it was killed while cloning)
    /// are removed.
    pub fn new(root: PathBuf, control_plane: Option<oz_sdk::Client>, access: GitAccess) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        for owner in std::fs::read_dir(&root)?.flatten() {
            for entry in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().contains(".partial-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(Self {
            root,
            refreshed: Mutex::new(HashMap::new()),
            environments: Mutex::new(HashMap::new()),
            access,
            control_plane,
        })
    }

    /// Makes the mirrors of `repos` due for a fetch at their next use (they were pushed to).
    pub fn expire(&self, repos: &[RepoRef]) {
        for (at, _) in self.environments.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
            *at = Instant::now().checked_sub(REFRESH_INTERVAL).unwrap_or(*at);
        }
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        for repo in repos {
            let path = oz_core::runner::mirror_of(&self.root, repo);
            // One being refreshed stays so: its refresh may have begun before the push.
            if refreshed.get(&path).is_some_and(Option::is_some) {
                refreshed.remove(&path);
            }
        }
    }

    /// [`GitMirrors::refresh`] for the environment with this id, read from the control plane.
    pub async fn refresh_environment(&self, environment_id: &str) {
        let Some(client) = &self.control_plane else { return };
        {
            let mut read = self.environments.lock().unwrap_or_else(|p| p.into_inner());
            let seen = match read.get(environment_id) {
                Some((at, _)) if at.elapsed() < REFRESH_INTERVAL => return,
                Some((_, seen)) => seen.clone(),
                None => (Vec::new(), String::new()),
            };
            read.insert(environment_id.to_owned(), (Instant::now(), seen));
        }
        match client.environments().get_for_worker(environment_id).await {
            Ok(found) => self.refresh(environment_id, &found.config).await,
            Err(e) => debug!(environment_id, "no git mirror refresh: could not read the environment: {e}"),
        }
    }

    /// The mirrors a sandbox of environment `environment_id` may read: those of the repos the
    /// environment had when last refreshed that exist and mirror the environment's own URL for the
    /// repo ([`oz_core::runner::mirror_serves`]). Empty for an environment not refreshed yet (its
    /// first task's clones fetch in full).
    pub fn for_environment(&self, environment_id: &str) -> Vec<RepoRef> {
        let (repos, base) = match self.environments.lock().unwrap_or_else(|p| p.into_inner()).get(environment_id) {
            Some((_, seen)) => seen.clone(),
            None => return Vec::new(),
        };
        repos
            .into_iter()
            .filter(|r| {
                let mirror = oz_core::runner::mirror_of(&self.root, r);
                mirror.join("HEAD").is_file()
                    && oz_core::runner::mirror_serves(&mirror, &oz_core::runner::clone_url(&base, r))
            })
            .collect()
    }

    /// The commit the mirror of `repo` has at its HEAD, if it has one.
    pub async fn head_of(&self, repo: &RepoRef) -> Option<String> {
        let path = oz_core::runner::mirror_of(&self.root, repo);
        let out = self.access.git(&path, &["rev-parse", "--verify", "HEAD^{commit}"], FETCH_TIMEOUT, &[]).await.ok()?;
        Some(String::from_utf8_lossy(&out).trim().to_owned()).filter(|h| !h.is_empty())
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Clones or fetches the mirror of each repo of environment `environment_id` (configured as
    /// `environment`) that was not refreshed within [`REFRESH_INTERVAL`], with the environment's
    /// preparation credentials. Failures are logged: a clone without a mirror still works.
    pub async fn refresh(&self, environment_id: &str, environment: &EnvironmentConfig) {
        {
            let mut read = self.environments.lock().unwrap_or_else(|p| p.into_inner());
            let at = read.get(environment_id).map(|(at, _)| *at).unwrap_or_else(Instant::now);
            let base = oz_core::runner::git_base_url(environment).to_owned();
            read.insert(environment_id.to_owned(), (at, (environment.github_repos.clone(), base)));
        }
        let base = oz_core::runner::git_base_url(environment);
        if let Err(e) = oz_core::runner::validate_base_url(base) {
            warn!("no git mirror for environment {:?}: {e}", environment.name);
            return;
        }
        for repo in &environment.github_repos {
            let path = oz_core::runner::mirror_of(&self.root, repo);
            {
                let mut refreshed = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
                match refreshed.get(&path) {
                    // Being refreshed by another caller, or refreshed lately.
                    Some(None) => continue,
                    Some(Some(at)) if at.elapsed() < REFRESH_INTERVAL => continue,
                    _ => {}
                }
                refreshed.insert(path.clone(), None);
            }
            let url = oz_core::runner::clone_url(base, repo);
            if path.join("HEAD").is_file() && !oz_core::runner::mirror_serves(&path, &url) {
                warn!(%repo, "the git mirror {} is of another host's {repo}: not used for {url}", path.display());
                self.refreshed.lock().unwrap_or_else(|p| p.into_inner()).insert(path, Some(Instant::now()));
                continue;
            }
            let started = Instant::now();
            // Per repo (a cache hit but for the first): a long clone must not leave the next one
            // with an expired credential.
            let credentials = self.access.credentials_for(environment_id, environment).await;
            match refresh_one(&self.access, &url, &path, &credentials).await {
                Ok(()) => debug!(%repo, millis = started.elapsed().as_millis() as u64, "git mirror refreshed"),
                Err(e) => warn!(%repo, "could not refresh the git mirror ({e}); clones fetch everything from {url}"),
            }
            self.refreshed.lock().unwrap_or_else(|p| p.into_inner()).insert(path, Some(Instant::now()));
        }
    }
}

/// Branches and tags only (not `refs/pull/*` and the like): what a clone of the repo's HEAD borrows.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

async fn refresh_one(
    access: &GitAccess,
    url: &str,
    path: &Path,
    credentials: &[oz_core::wire::callbacks::ResolvedGitCredential],
) -> Result<(), String> {
    if path.join("HEAD").is_file() {
        let mut args = vec!["fetch", "--quiet", "--prune", "--", url];
        args.extend(REFSPECS);
        access.git(path, &args, FETCH_TIMEOUT, credentials).await?;
        // A fetch never moves a mirror's HEAD: it follows the remote's (its default branch changed).
        let listed =
            access.git(path, &["ls-remote", "--symref", "--", url, "HEAD"], FETCH_TIMEOUT, credentials).await?;
        let text = String::from_utf8_lossy(&listed);
        let branch = text.lines().find_map(|l| l.strip_prefix("ref: ")?.strip_suffix("\tHEAD"));
        if let Some(branch) = branch.filter(|b| b.starts_with("refs/heads/"))
            && access.git(path, &["rev-parse", "--verify", "--quiet", branch], FETCH_TIMEOUT, &[]).await.is_ok()
        {
            access.git(path, &["symbolic-ref", "HEAD", branch], FETCH_TIMEOUT, &[]).await?;
        }
        return Ok(());
    }
    let parent = path.parent().ok_or("a mirror path has a parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("could not create {}: {e}", parent.display()))?;
    // Cloned beside its place and moved in whole: a clone never sees half a mirror.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let partial_text = partial.display().to_string();
    let args =
        ["clone", "--bare", "--quiet", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "--", url, &partial_text];
    if let Err(e) = access.git(parent, &args, FETCH_TIMEOUT, credentials).await {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(|e| {
        let _ = std::fs::remove_dir_all(&partial);
        format!("could not move the mirror into {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use oz_core::environment::RepoRef;

    fn git_sync(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn head_of(dir: &Path) -> String {
        let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn a_mirror_is_cloned_once_fetched_later_and_a_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        git_sync(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("a"), "a").unwrap();
        git_sync(&src, &["add", "."]);
        git_sync(&src, &["commit", "-q", "-m", "a"]);
        let remote = dir.path().join("git/acme/app");
        git_sync(dir.path(), &["clone", "-q", "--bare", src.to_str().unwrap(), remote.to_str().unwrap()]);
        let mut environment = EnvironmentConfig {
            name: "e".into(),
            github_repos: vec![RepoRef::new("acme", "app").unwrap(), RepoRef::new("acme", "missing").unwrap()],
            ..Default::default()
        };
        environment
            .env_vars
            .insert(oz_core::runner::env::GIT_BASE_URL.into(), format!("file://{}", dir.path().join("git").display()));
        // A half-made mirror a killed worker left is swept at start.
        let stale = dir.path().join("mirrors/acme/app.partial-1");
        std::fs::create_dir_all(&stale).unwrap();
        let mirrors =
            GitMirrors::new(dir.path().join("mirrors"), None, GitAccess { local_remotes: true, credentials: None })
                .unwrap();
        assert!(!stale.exists());
        mirrors.refresh("env", &environment).await;
        let mirror = oz_core::runner::mirror_of(mirrors.root(), &environment.github_repos[0]);
        assert_eq!(head_of(&mirror), head_of(&src));
        let config = std::fs::read_to_string(mirror.join("config")).unwrap();
        assert!(config.contains("auto = 0") && config.contains("auto = false"), "never pruned: {config}");
        // A repo it cannot clone: no mirror, and no half of one.
        let owner = mirrors.root().join("acme");
        let names: Vec<String> =
            std::fs::read_dir(&owner).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["app.git"]);

        // A push: within the interval the mirror is left alone, after it the mirror catches up.
        std::fs::write(src.join("b"), "b").unwrap();
        git_sync(&src, &["add", "."]);
        git_sync(&src, &["commit", "-q", "-m", "b"]);
        git_sync(&src, &["push", "-q", remote.to_str().unwrap(), "HEAD:main"]);
        mirrors.refresh("env", &environment).await;
        assert_ne!(head_of(&mirror), head_of(&src), "refreshed at most once per interval");
        mirrors.refreshed.lock().unwrap().clear();
        mirrors.refresh("env", &environment).await;
        assert_eq!(head_of(&mirror), head_of(&src));
    }
}
