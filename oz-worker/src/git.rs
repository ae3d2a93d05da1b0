//! The git the worker runs itself (its mirrors, its pools' HEAD checks), on behalf of environments
//! its team configures. It runs on the host, outside any sandbox, so it gets nothing of the host: no
//! environment but `PATH`, no home (no `~/.netrc`, `~/.ssh`, `~/.gitconfig`), no system or global
//! configuration, no credential helper, no hooks, no password prompt, and only the protocols
//! [`GitAccess`] allows (https and http; `file` only when the worker's configuration says so). Every
//! call has a time limit. It never has a credential: what it cannot read without one, it does not read.

use std::path::Path;
use std::time::Duration;

use oz_core::environment::EnvironmentConfig;
use tokio::process::Command;

/// What the worker's own git may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GitAccess {
    /// Also `file://` remotes (a local folder): off by default, since any repo the worker's user can
    /// read would then be mirrored into its sandboxes (`local_git_remotes: true` in the YAML file).
    pub local_remotes: bool,
}

/// How long a HEAD check may take.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mirror's clone or fetch may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl GitAccess {
    /// Runs git in `dir` for at most `limit`; its stdout, or what it said on stderr.
    pub(crate) async fn git(&self, dir: &Path, args: &[&str], limit: Duration) -> Result<Vec<u8>, String> {
        let mut command = Command::new("git");
        command.args([
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.http.allow=always",
        ]);
        if self.local_remotes {
            command.args(["-c", "protocol.file.allow=always"]);
        }
        command
            .args(["-c", "credential.helper=", "-c", "core.askPass=", "-c", "core.hooksPath=/dev/null"])
            // A remote that stalls is given up instead of holding the pools.
            .args(["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60"])
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", "/nonexistent")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .kill_on_drop(true);
        let output = tokio::time::timeout(limit, command.output())
            .await
            .map_err(|_| format!("git {} took longer than {}s", args.first().copied().unwrap_or(""), limit.as_secs()))?
            .map_err(|e| format!("could not run git: {e}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!("git {} failed: {}", args.first().copied().unwrap_or(""), stderr.trim()))
        }
    }

    /// The commit each repo of `environment` has at its remote's HEAD now, in the environment's
    /// order; `None` for one that cannot be read without credentials, or at all.
    pub(crate) async fn remote_heads(&self, environment: &EnvironmentConfig) -> Vec<Option<String>> {
        let base = oz_core::runner::git_base_url(environment);
        if oz_core::runner::validate_base_url(base).is_err() {
            return vec![None; environment.github_repos.len()];
        }
        let checks = environment.github_repos.iter().map(|repo| {
            let url = oz_core::runner::clone_url(base, repo);
            async move {
                let out =
                    self.git(&std::env::temp_dir(), &["ls-remote", "--", &url, "HEAD"], CHECK_TIMEOUT).await.ok()?;
                let text = String::from_utf8_lossy(&out);
                text.split_whitespace().next().map(str::to_owned)
            }
        });
        futures::future::join_all(checks).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn local_remotes_are_refused_unless_allowed_and_the_hosts_configuration_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        std::process::Command::new("git").args(["init", "-q", "--bare"]).arg(&repo).status().unwrap();
        let url = format!("file://{}", repo.display());
        let refused = GitAccess::default().git(dir.path(), &["ls-remote", "--", &url], CHECK_TIMEOUT).await;
        assert!(refused.unwrap_err().contains("not allowed"), "file:// is refused by default");
        let allowed =
            GitAccess { local_remotes: true }.git(dir.path(), &["ls-remote", "--", &url], CHECK_TIMEOUT).await;
        assert!(allowed.is_ok(), "{allowed:?}");
        for url in ["ssh://git@example.invalid/x", "ext::sh -c id"] {
            let refused =
                GitAccess { local_remotes: true }.git(dir.path(), &["ls-remote", "--", url], CHECK_TIMEOUT).await;
            assert!(refused.is_err(), "{url}");
        }
        let home = GitAccess::default().git(dir.path(), &["config", "--show-origin", "--list"], CHECK_TIMEOUT).await;
        let listed = String::from_utf8_lossy(&home.unwrap_or_default()).into_owned();
        assert!(!listed.contains("file:"), "no configuration file of the host is read: {listed}");
    }
}
