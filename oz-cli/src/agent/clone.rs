//! Cloning the environment's repos, in parallel, as partial clones (`--filter=tree:0`), each into
//! `<workdir>/<repo>`. Credentials reach git only through the credential helper.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use oz_core::environment::RepoRef;
use oz_core::wire::callbacks::RunnerEvent;
use tokio::process::Command;

use crate::agent::log::EventLog;

/// Checks a git base URL: a known scheme and no credentials in it.
pub fn validate_base_url(base: &str) -> Result<(), String> {
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(format!(
            "the git base URL {base:?} must start with https://, http://, ssh:// or file://"
        ));
    };
    if !matches!(scheme, "https" | "http" | "ssh" | "file") {
        return Err(format!(
            "the git base URL scheme {scheme:?} is not one of https, http, ssh, file"
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') && scheme != "ssh" {
        return Err("the git base URL must not carry credentials; they are handed to git through the credential helper".into());
    }
    if base.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the git base URL must not contain spaces or control characters".into());
    }
    Ok(())
}

/// The clone URL of `repo` under `base`.
pub fn clone_url(base: &str, repo: &RepoRef) -> String {
    format!(
        "{}/{}/{}",
        base.trim_end_matches('/'),
        repo.owner,
        repo.repo
    )
}

/// Finds a git binary: on `PATH`, else the sidecar's own (`/agent/bin/git`).
pub fn find_git(path_var: Option<&str>) -> Option<PathBuf> {
    let from_path = path_var
        .into_iter()
        .flat_map(|p| p.split(':'))
        .map(|d| Path::new(d).join("git"))
        .find(|p| p.is_file());
    from_path.or_else(|| Some(PathBuf::from("/agent/bin/git")).filter(|p| p.is_file()))
}

/// The result of one clone.
#[derive(Debug)]
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

/// Clones every repo at once; returns them in the given order.
pub async fn clone_all(
    repos: &[RepoRef],
    base: &str,
    workdir: &Path,
    git: &Path,
    env: &[(String, String)],
    log: Arc<EventLog>,
) -> Vec<Cloned> {
    let jobs = repos.iter().cloned().map(|repo| {
        let log = log.clone();
        let url = clone_url(base, &repo);
        let dir = workdir.join(&repo.repo);
        let git = git.to_path_buf();
        let env = env.to_vec();
        async move {
            log.emit(RunnerEvent::CloneStarted {
                repo: repo.to_string(),
            })
            .await;
            let started = Instant::now();
            let error = if dir.join(".git").exists() {
                log.note(&format!(
                    "{repo} is already present in {}; not cloned again",
                    dir.display()
                ));
                None
            } else {
                clone_one(&git, &url, &dir, &env).await.err()
            };
            let error = error.map(|e| log.redact(&e));
            let head = if error.is_none() {
                rev_parse_head(&git, &dir, &env).await
            } else {
                None
            };
            log.emit(RunnerEvent::CloneFinished {
                repo: repo.to_string(),
                millis: started.elapsed().as_millis() as u64,
                ok: error.is_none(),
                error: error.clone(),
            })
            .await;
            Cloned {
                repo,
                dir,
                head,
                error,
            }
        }
    });
    futures::future::join_all(jobs).await
}

async fn clone_one(
    git: &Path,
    url: &str,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(), String> {
    let output = Command::new(git)
        .args(["clone", "--quiet", "--filter=tree:0", "--", url])
        .arg(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", git.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("git clone failed")
            .trim()
            .to_owned())
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
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commits on `HEAD` since `since`, newest first: `(sha, subject)`.
pub async fn commits_since(
    git: &Path,
    dir: &Path,
    since: &str,
    env: &[(String, String)],
) -> Vec<(String, String)> {
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
        for ok in [
            "https://github.com",
            "file:///srv/git",
            "http://127.0.0.1:8080/git",
            "ssh://git@github.com",
        ] {
            validate_base_url(ok).unwrap();
        }
        for bad in [
            "github.com",
            "ftp://x",
            "https://user:tok@github.com",
            "https://tok@github.com/x",
            "https://a b",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
        let repo = RepoRef::new("acme", "api").unwrap();
        assert_eq!(
            clone_url("https://github.com/", &repo),
            "https://github.com/acme/api"
        );
    }
}
