//! The git the worker runs itself (its mirrors, its pools' HEAD checks): the host's `git` binary,
//! away from any configuration of the host and with no way to ask for a password. It never has a
//! credential: what it cannot read without one, it does not read.

use std::path::Path;

use oz_core::environment::EnvironmentConfig;
use tokio::process::Command;

/// Runs git in `dir`; its stdout, or what it said on stderr.
pub(crate) async fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new("git")
        .args(["-c", "credential.helper=", "-c", "core.askPass="])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("could not run git: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("git {} failed: {}", args.first().copied().unwrap_or(""), stderr.trim()))
    }
}

/// The commit each repo of `environment` has at its remote's HEAD now, in the environment's order;
/// `None` for one that cannot be read without credentials, or at all.
pub(crate) async fn remote_heads(environment: &EnvironmentConfig) -> Vec<Option<String>> {
    let base = oz_core::runner::git_base_url(environment);
    if oz_core::runner::validate_base_url(base).is_err() {
        return vec![None; environment.github_repos.len()];
    }
    let checks = environment.github_repos.iter().map(|repo| {
        let url = oz_core::runner::clone_url(base, repo);
        async move {
            let out = git(&std::env::temp_dir(), &["ls-remote", "--", &url, "HEAD"]).await.ok()?;
            let text = String::from_utf8_lossy(&out);
            text.split_whitespace().next().map(str::to_owned)
        }
    });
    futures::future::join_all(checks).await
}
