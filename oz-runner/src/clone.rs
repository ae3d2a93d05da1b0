//! Cloning the environment's repos, in parallel, each into `<workdir>/<repo>`.
//!
//! With a `git` binary (on `PATH`, or the sidecar's `/agent/bin/git`): partial clones
//! (`--filter=tree:0`), credentials through the credential helper. Without one: the built-in git
//! (gitoxide), shallow clones (depth 1; it cannot make partial clones), credentials handed over in
//! memory. Either way a credential is never in a URL, argv or `.git/config`.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use oz_core::credentials::GitCredential;
use oz_core::environment::RepoRef;
use oz_core::wire::callbacks::RunnerEvent;
use tokio::process::Command;

use crate::log::EventLog;

pub use oz_core::runner::{clone_url, validate_base_url};

/// Finds a git binary: on `PATH`, else the sidecar's own (`/agent/bin/git`).
pub fn find_git(path_var: Option<&str>) -> Option<PathBuf> {
    let from_path =
        path_var.into_iter().flat_map(|p| p.split(':')).map(|d| Path::new(d).join("git")).find(|p| p.is_file());
    from_path.or_else(|| Some(PathBuf::from("/agent/bin/git")).filter(|p| p.is_file()))
}

/// The result of one clone.
#[derive(Clone, Debug)]
pub struct Cloned {
    /// The repo.
    pub repo: RepoRef,
    /// Where it is.
    pub dir: PathBuf,
    /// `HEAD` after cloning, to tell later what the agent committed.
    pub head: Option<String>,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// How repos are cloned.
#[derive(Clone, Debug)]
pub enum Cloner {
    /// The git binary at this path, configured through the environment given.
    Binary {
        /// The binary.
        git: PathBuf,
        /// Its environment (with the credential helper configured).
        env: Vec<(String, String)>,
        /// The worker's folder of mirrors (`OZ_GIT_MIRROR_DIR`), if any: a clone references its
        /// repo's mirror there.
        mirrors: Option<PathBuf>,
        /// Clone from the repo's mirror alone when it has one, without reaching the remote (a warm
        /// sandbox, which holds no credential: the repo may be private). The clone's `origin` is
        /// still the remote, and the handoff brings it to the remote's HEAD with the run's
        /// credentials.
        from_mirror: bool,
    },
    /// The built-in git, with these credentials.
    Builtin(Arc<Vec<GitCredential>>),
}

/// Clones every repo at once; returns them in the given order.
pub async fn clone_all(
    repos: &[RepoRef],
    base: &str,
    workdir: &Path,
    cloner: &Cloner,
    log: Arc<EventLog>,
) -> Vec<Cloned> {
    let jobs = repos.iter().cloned().map(|repo| {
        let log = log.clone();
        let url = clone_url(base, &repo);
        let dir = workdir.join(&repo.repo);
        let cloner = cloner.clone();
        async move {
            log.emit(RunnerEvent::CloneStarted { repo: repo.to_string() }).await;
            let started = Instant::now();
            let result = if dir.join(".git").exists() {
                log.note(&format!("{repo} is already present in {}; not cloned again", dir.display()));
                Ok(())
            } else {
                match &cloner {
                    Cloner::Binary { git, env, mirrors, from_mirror } => {
                        let mirror = mirrors
                            .as_deref()
                            .map(|m| oz_core::runner::mirror_of(m, &repo))
                            .filter(|m| oz_core::runner::mirror_serves(m, &url));
                        match &mirror {
                            Some(mirror) if *from_mirror => {
                                let text = format!("{repo}: cloning from the worker's mirror {}", mirror.display());
                                log.announce(&text).await;
                                match clone_from_mirror(git, mirror, &url, &dir, env).await {
                                    Ok(()) => Ok(()),
                                    Err(e) => {
                                        let text = format!(
                                            "{repo}: the mirror could not be used ({e}); cloning from the remote"
                                        );
                                        log.announce(&text).await;
                                        clone_one(git, &url, &dir, env, Some(mirror)).await
                                    }
                                }
                            }
                            Some(mirror) => {
                                let text = format!("{repo}: referencing the worker's mirror {}", mirror.display());
                                log.announce(&text).await;
                                clone_one(git, &url, &dir, env, Some(mirror)).await
                            }
                            None => clone_one(git, &url, &dir, env, None).await,
                        }
                    }
                    Cloner::Builtin(credentials) => {
                        let (url, dir, credentials) = (url.clone(), dir.clone(), credentials.clone());
                        // A clone given up (the run cancelled) stops the built-in git too.
                        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
                        let interrupt = stop.0.clone();
                        tokio::task::spawn_blocking(move || builtin_clone(&url, &dir, credentials, &interrupt))
                            .await
                            .unwrap_or_else(|e| Err(format!("the built-in git stopped: {e}")))
                    }
                }
            };
            let error = result.err().map(|e| log.redact(&e));
            let head = match (&error, &cloner) {
                (None, Cloner::Binary { git, env, .. }) => rev_parse_head(git, &dir, env).await,
                (None, Cloner::Builtin(_)) => builtin_head(&dir),
                (Some(_), _) => None,
            };
            log.emit(RunnerEvent::CloneFinished {
                repo: repo.to_string(),
                millis: started.elapsed().as_millis() as u64,
                ok: error.is_none(),
                error: error.clone(),
            })
            .await;
            Cloned { repo, dir, head, error }
        }
    });
    futures::future::join_all(jobs).await
}

/// Clones `url` into `dir`; with a mirror, its objects are borrowed (git alternates) and only what
/// the mirror lacks is fetched. (The mirror must outlive the clone: the worker never prunes one.)
async fn clone_one(
    git: &Path,
    url: &str,
    dir: &Path,
    env: &[(String, String)],
    mirror: Option<&Path>,
) -> Result<(), String> {
    // Run beside the target (the workdir, which exists), naming it by its last component.
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{} is not a folder to clone into", dir.display()));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let name = name.to_string_lossy();
    let mirror = mirror.map(|m| m.display().to_string());
    let mut args = vec!["clone", "--quiet", "--filter=tree:0"];
    if let Some(mirror) = &mirror {
        args.extend(["--reference-if-able", mirror.as_str()]);
    }
    args.extend(["--", url, &name]);
    git_in(git, parent, env, &args).await.map(drop)
}

/// Makes in `dir` the clone of `url` that the mirror `mirror` holds, reaching no remote: a new
/// repository borrowing the mirror's objects (git alternates), at the mirror's HEAD, on its branch,
/// with `origin` set to `url` and tracking that branch.
///
/// Not `git clone` of the mirror: git refuses to read a repository owned by another user (the
/// worker's, mounted in a container that runs as someone else), and borrowing objects is exempt.
/// Only the mirror's HEAD is read as a repository, with an explicit `--git-dir`, which git allows.
async fn clone_from_mirror(
    git: &Path,
    mirror: &Path,
    url: &str,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(), String> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{} is not a folder to clone into", dir.display()));
    };
    let here = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let git_dir = format!("--git-dir={}", mirror.display());
    let head_of = |args: &'static [&'static str]| {
        let mut all = vec![git_dir.as_str()];
        all.extend(args);
        async move { git_in(git, here, env, &all).await.map(|out| String::from_utf8_lossy(&out).trim().to_owned()) }
    };
    let head = head_of(&["rev-parse", "--verify", "HEAD^{commit}"]).await?;
    let branch = head_of(&["symbolic-ref", "HEAD"]).await?;
    let branch = branch
        .strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("the mirror's HEAD is {branch}, not a branch"))?
        .to_owned();
    let made = async {
        let name = name.to_string_lossy();
        git_in(git, here, env, &["init", "--quiet", "--", &name]).await?;
        git_in(git, dir, env, &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")]).await?;
        let alternates = dir.join(".git/objects/info/alternates");
        std::fs::write(&alternates, format!("{}\n", mirror.join("objects").display()))
            .map_err(|e| format!("could not write {}: {e}", alternates.display()))?;
        git_in(git, dir, env, &["remote", "add", "origin", "--", url]).await?;
        git_in(git, dir, env, &["update-ref", &format!("refs/remotes/origin/{branch}"), &head]).await?;
        git_in(git, dir, env, &["symbolic-ref", "refs/remotes/origin/HEAD", &format!("refs/remotes/origin/{branch}")])
            .await?;
        git_in(git, dir, env, &["reset", "--quiet", "--hard", &head]).await?;
        git_in(git, dir, env, &["branch", "--quiet", &format!("--set-upstream-to=origin/{branch}")]).await?;
        Ok::<_, String>(())
    }
    .await;
    if made.is_err() {
        // Half a clone would be taken for a clone ("already present") by a retry.
        let _ = std::fs::remove_dir_all(dir);
    }
    made
}

/// Clones with the built-in git: shallow (depth 1), isolated from any git configuration on the host,
/// credentials answered in memory (same rules as the helper: https or loopback http, unexpired).
pub fn builtin_clone(
    url: &str,
    dir: &Path,
    credentials: Arc<Vec<GitCredential>>,
    interrupt: &AtomicBool,
) -> Result<(), String> {
    let mut prepare = gix::clone::PrepareFetch::new(
        url,
        dir,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| format!("could not prepare the clone: {e}"))?
    .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN))
    .configure_connection(move |connection| {
        connection.set_credentials(credential_answers(credentials.clone()));
        Ok(())
    });
    let (mut checkout, _) =
        prepare.fetch_then_checkout(gix::progress::Discard, interrupt).map_err(|e| oz_core::error::error_chain(&e))?;
    checkout.main_worktree(gix::progress::Discard, interrupt).map_err(|e| oz_core::error::error_chain(&e))?;
    Ok(())
}

/// How the built-in git answers a remote that asks for credentials: from `credentials`, by the same
/// rules as the runner's helper (https or loopback http, unexpired), in memory.
pub(crate) fn credential_answers(
    credentials: Arc<Vec<GitCredential>>,
) -> impl FnMut(gix::credentials::helper::Action) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
+ Send
+ Sync
+ 'static {
    use gix::credentials::helper::Action;
    use gix::credentials::protocol::Outcome;
    move |action| match action {
        Action::Get(mut context) => {
            context.destructure_url_in_place(false)?;
            let protocol = context.protocol.clone().unwrap_or_default();
            let host = context.host.clone().unwrap_or_default();
            Ok(crate::credentials::lookup(&credentials, &protocol, &host).map(|(username, password)| Outcome {
                identity: gix::sec::identity::Account {
                    username: username.to_owned(),
                    password: password.to_owned(),
                    oauth_refresh_token: None,
                },
                next: context.into(),
            }))
        }
        Action::Store(_) | Action::Erase(_) => Ok(None),
    }
}

fn builtin_head(dir: &Path) -> Option<String> {
    let repo = gix::open(dir).ok()?;
    repo.head_id().ok().map(|id| id.to_string())
}

/// Sets its flag when dropped: what a blocking clone polls to stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `git rev-parse HEAD` in `dir`.
pub async fn rev_parse_head(git: &Path, dir: &Path, env: &[(String, String)]) -> Option<String> {
    let output = Command::new(git)
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Brings the clone in `dir`, at `head`, to its remote's `HEAD` if that is elsewhere: one question
/// to the remote when it has not moved (on `open`, the connection the warm sandbox held, if it has
/// one), then a fetch of its branches and a hard reset when it has. `Some(new head)` when it moved.
/// Git reaches the remote through the credential helper configured in `env`.
pub async fn reset_to_remote_head(
    git: &Path,
    dir: &Path,
    head: Option<&str>,
    env: &[(String, String)],
    credentials: &Arc<Vec<GitCredential>>,
    open: Option<crate::remote_head::OpenRemote>,
) -> Result<Option<String>, String> {
    // In this process (no git process to start: this is on a warm task's critical path), on the
    // held connection first; then on a new one with the run's credentials; then `git ls-remote` if
    // the built-in git cannot (a transport it lacks, say).
    let held = match open {
        Some(open) => crate::remote_head::ask_held(open).await.unwrap_or_else(|e| {
            tracing::debug!("the held connection could not answer ({e}); asking on a new one");
            None
        }),
        None => None,
    };
    let asked = match held {
        Some(remote) => Ok(Some(remote)),
        None => {
            let (in_dir, answers) = (dir.to_path_buf(), credentials.clone());
            tokio::task::spawn_blocking(move || crate::remote_head::builtin_remote_head(&in_dir, answers))
                .await
                .unwrap_or_else(|e| Err(format!("the built-in git stopped: {e}")))
        }
    };
    let remote = match asked {
        Ok(Some(remote)) => remote,
        Ok(None) | Err(_) => {
            if let Err(e) = &asked {
                tracing::debug!("the built-in git could not ask for the remote's HEAD ({e}); asking git");
            }
            let listed = git_in(git, dir, env, &["ls-remote", "origin", "HEAD"]).await?;
            String::from_utf8_lossy(&listed).split_whitespace().next().unwrap_or_default().to_owned()
        }
    };
    if remote.is_empty() || Some(remote.as_str()) == head {
        return Ok(None);
    }
    // Every branch, so the clone's `origin/*` are current too (an agent compares with them); then
    // HEAD by name if the remote's HEAD is on no branch.
    let fetched = git_in(git, dir, env, &["fetch", "--quiet", "--prune", "origin"]).await.is_ok();
    if !fetched || git_in(git, dir, env, &["reset", "--hard", "--quiet", &remote]).await.is_err() {
        git_in(git, dir, env, &["fetch", "--quiet", "origin", "HEAD"]).await?;
        git_in(git, dir, env, &["reset", "--hard", "--quiet", "FETCH_HEAD"]).await?;
    }
    Ok(rev_parse_head(git, dir, env).await)
}

/// Runs git with `args` in `dir`; its stdout, or the last line it printed on stderr (git's own
/// summary of what went wrong).
async fn git_in(git: &Path, dir: &Path, env: &[(String, String)], args: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new(git)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        // A clone given up (the run cancelled) stops its git.
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", git.display()))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("git failed").trim().to_owned())
    }
}

/// The commits on `HEAD` since `since`, newest first: `(sha, subject)`.
pub async fn commits_since(git: &Path, dir: &Path, since: &str, env: &[(String, String)]) -> Vec<(String, String)> {
    let Ok(output) = Command::new(git)
        .args(["log", "--format=%H %s", &format!("{since}..HEAD")])
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(h, s)| (h.to_owned(), s.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_never_carry_credentials() {
        for ok in ["https://github.com", "file:///srv/git", "http://127.0.0.1:8080/git", "ssh://git@github.com"] {
            validate_base_url(ok).unwrap();
        }
        for bad in ["github.com", "ftp://x", "https://user:tok@github.com", "https://tok@github.com/x", "https://a b"] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
        let repo = RepoRef::new("acme", "api").unwrap();
        assert_eq!(clone_url("https://github.com/", &repo), "https://github.com/acme/api");
    }
}
