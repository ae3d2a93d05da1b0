//! The git the worker runs itself (its mirrors, its pools' HEAD checks), on behalf of environments
//! its team configures. It runs on the host, outside any sandbox, so it gets nothing of the host: no
//! environment but `PATH`, no home (no `~/.netrc`, `~/.ssh`, `~/.gitconfig`), no system or global
//! configuration, no credential helper, no hooks, no password prompt, and only the protocols
//! [`GitAccess`] allows (https and http; `file` only when the worker's configuration says so). Every
//! call has a time limit.
//!
//! Its only credentials are the read-only ones the control plane issues it for an environment's
//! repositories ([`PreparationCredentials`]), so that a private repository can be mirrored and
//! HEAD-checked without any sandbox holding one. Git gets them as an `Authorization` header
//! configured through its environment (`GIT_CONFIG_COUNT`), scoped to the credential's host, over
//! https (plain http only to a loopback host): never in its argv, a URL or a file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use oz_core::environment::EnvironmentConfig;
use oz_core::wire::callbacks::ResolvedGitCredential;
use tokio::process::Command;
use tracing::warn;

/// What the worker's own git may reach.
#[derive(Clone, Debug, Default)]
pub struct GitAccess {
    /// Also `file://` remotes (a local folder): off by default, since any repo the worker's user can
    /// read would then be mirrored into its sandboxes (`local_git_remotes: true` in the YAML file).
    pub local_remotes: bool,
    /// Where credentials for private repositories come from; `None`: public ones only.
    pub credentials: Option<Arc<PreparationCredentials>>,
}

/// An answer without credentials (the team has no git provider for the host) is asked again after
/// this long, so a provider configured later is picked up.
const NONE_CACHED_FOR: Duration = Duration::from_secs(60);
/// A credential is asked for again this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 60);
/// A credential without an expiry (a static secret, which may be rotated) is asked for again after
/// this long.
const KEPT_AT_MOST: Duration = Duration::from_secs(5 * 60);

/// The read-only git credentials of the environments the worker prepares, from the control plane
/// (`POST /selfhosted/worker/environments/{id}/git-credentials`), cached until shortly before they
/// expire.
pub struct PreparationCredentials {
    client: oz_sdk::Client,
    cached: Mutex<HashMap<String, (Instant, Vec<ResolvedGitCredential>)>>,
}

impl std::fmt::Debug for PreparationCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparationCredentials").finish_non_exhaustive()
    }
}

impl PreparationCredentials {
    /// Asks the control plane that `client` (with the worker's credential) reaches.
    pub fn new(client: oz_sdk::Client) -> Self {
        Self { client, cached: Mutex::new(HashMap::new()) }
    }

    /// The credentials for environment `environment_id`'s repositories; none when the team has no
    /// provider for their host or the control plane cannot be asked (logged: the repos are then
    /// read without, as public ones).
    ///
    /// Cached by the environment's id, repos and git base URL: once the worker reads the
    /// environment with other repos, it asks again (a GitHub App token covers the repos it was
    /// issued for only).
    pub async fn for_environment(
        &self,
        environment_id: &str,
        environment: &EnvironmentConfig,
    ) -> Vec<ResolvedGitCredential> {
        let key = serde_json::to_string(&(
            environment_id,
            &environment.github_repos,
            oz_core::runner::git_base_url(environment),
        ))
        .unwrap_or_default();
        if let Some((until, credentials)) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && Instant::now() < *until
        {
            return credentials.clone();
        }
        match self.client.environments().preparation_credentials(environment_id).await {
            Ok(answer) => {
                let credentials = answer.git_credentials;
                let until = Instant::now() + cache_for(&credentials);
                let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
                cached.retain(|_, (until, _)| Instant::now() < *until);
                cached.insert(key, (until, credentials.clone()));
                credentials
            }
            Err(e) => {
                match &e {
                    // An answer that could not be read may hold a token: not quoted.
                    oz_sdk::Error::Decode { .. } => {
                        warn!(
                            environment_id,
                            "no preparation credentials: the control plane's answer could not be read"
                        )
                    }
                    other => warn!(environment_id, "no preparation credentials: {other}"),
                }
                // Asked again after a while, not on every git call meanwhile; a good answer another
                // caller got in between is kept (and used).
                let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
                match cached.get(&key) {
                    Some((until, credentials)) if Instant::now() < *until => credentials.clone(),
                    _ => {
                        cached.insert(key, (Instant::now() + NONE_CACHED_FOR, Vec::new()));
                        Vec::new()
                    }
                }
            }
        }
    }
}

/// How long `credentials` may be used before they are asked for again.
fn cache_for(credentials: &[ResolvedGitCredential]) -> Duration {
    let now = jiff::Timestamp::now();
    credentials
        .iter()
        .map(|c| match c.expires_at {
            Some(at) => Duration::try_from(at.duration_since(now)).unwrap_or_default().saturating_sub(RENEW_BEFORE),
            None => KEPT_AT_MOST,
        })
        .min()
        .unwrap_or(NONE_CACHED_FOR)
}

/// Git configuration, as `GIT_CONFIG_*` variables, that sends each of `credentials` to its host.
fn credential_env(credentials: &[ResolvedGitCredential]) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for c in credentials.iter().filter(|c| c.expires_at.is_none_or(|at| at > jiff::Timestamp::now())) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.token));
        for scheme in ["https", "http"] {
            if oz_core::credentials::may_send_git_credential(scheme, &c.host) {
                entries.push((
                    format!("http.{scheme}://{}/.extraHeader", c.host),
                    format!("Authorization: Basic {basic}"),
                ));
            }
        }
    }
    let mut env = vec![("GIT_CONFIG_COUNT".to_owned(), entries.len().to_string())];
    for (i, (key, value)) in entries.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), key));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
    }
    env
}

/// How long a HEAD check may take.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mirror's clone or fetch may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl GitAccess {
    /// The credentials for environment `environment_id`'s repositories (configured as
    /// `environment`), if this access has a source.
    pub(crate) async fn credentials_for(
        &self,
        environment_id: &str,
        environment: &EnvironmentConfig,
    ) -> Vec<ResolvedGitCredential> {
        match &self.credentials {
            Some(source) => source.for_environment(environment_id, environment).await,
            None => Vec::new(),
        }
    }

    /// Runs git in `dir` for at most `limit`, sending `credentials` to their hosts; its stdout, or
    /// what it said on stderr.
    pub(crate) async fn git(
        &self,
        dir: &Path,
        args: &[&str],
        limit: Duration,
        credentials: &[ResolvedGitCredential],
    ) -> Result<Vec<u8>, String> {
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
            // A credential's header is scoped by the URL first asked: a redirect elsewhere is refused.
            .args(if credentials.is_empty() { &[][..] } else { &["-c", "http.followRedirects=false"][..] })
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", "/nonexistent")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .envs(credential_env(credentials))
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

    /// The commit each repo of environment `environment_id` (configured as `environment`) has at
    /// its remote's HEAD now, in the environment's order, read with its preparation credentials;
    /// `None` for one that cannot be read.
    pub(crate) async fn remote_heads(
        &self,
        environment_id: &str,
        environment: &EnvironmentConfig,
    ) -> Vec<Option<String>> {
        let base = oz_core::runner::git_base_url(environment);
        if oz_core::runner::validate_base_url(base).is_err() {
            return vec![None; environment.github_repos.len()];
        }
        let credentials = self.credentials_for(environment_id, environment).await;
        let credentials = &credentials;
        let checks = environment.github_repos.iter().map(|repo| {
            let url = oz_core::runner::clone_url(base, repo);
            async move {
                let out = self
                    .git(&std::env::temp_dir(), &["ls-remote", "--", &url, "HEAD"], CHECK_TIMEOUT, credentials)
                    .await
                    .ok()?;
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
        let refused = GitAccess::default().git(dir.path(), &["ls-remote", "--", &url], CHECK_TIMEOUT, &[]).await;
        assert!(refused.unwrap_err().contains("not allowed"), "file:// is refused by default");
        let allowed = GitAccess { local_remotes: true, credentials: None }
            .git(dir.path(), &["ls-remote", "--", &url], CHECK_TIMEOUT, &[])
            .await;
        assert!(allowed.is_ok(), "{allowed:?}");
        for url in ["ssh://git@example.invalid/x", "ext::sh -c id"] {
            let refused = GitAccess { local_remotes: true, credentials: None }
                .git(dir.path(), &["ls-remote", "--", url], CHECK_TIMEOUT, &[])
                .await;
            assert!(refused.is_err(), "{url}");
        }
        let home =
            GitAccess::default().git(dir.path(), &["config", "--show-origin", "--list"], CHECK_TIMEOUT, &[]).await;
        let listed = String::from_utf8_lossy(&home.unwrap_or_default()).into_owned();
        assert!(!listed.contains("file:"), "no configuration file of the host is read: {listed}");
    }

    #[test]
    fn a_credential_goes_to_its_own_host_over_https_or_loopback_http_only() {
        let credential = |host: &str| ResolvedGitCredential {
            host: host.into(),
            username: "x-access-token".into(),
            token: "tok".into(),
            expires_at: None,
        };
        let env =
            credential_env(&[credential("github.com"), credential("127.0.0.1:8080"), credential("git.example.com:80")]);
        let keys: Vec<&str> =
            env.iter().filter(|(k, _)| k.starts_with("GIT_CONFIG_KEY_")).map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.https://github.com/.extraHeader",
                "http.https://127.0.0.1:8080/.extraHeader",
                "http.http://127.0.0.1:8080/.extraHeader",
                "http.https://git.example.com:80/.extraHeader",
            ],
            "never plain http to a host that is not loopback"
        );
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".to_owned(), "4".to_owned()));
        let basic = base64::engine::general_purpose::STANDARD.encode("x-access-token:tok");
        assert!(env.iter().any(|(_, v)| *v == format!("Authorization: Basic {basic}")));
        assert_eq!(credential_env(&[]), [("GIT_CONFIG_COUNT".to_owned(), "0".to_owned())]);
    }
}
