//! Short-lived git credentials for runs: the team's git provider for the environment's git host
//! (`oz-credentials`: a GitHub App installation token or a GitLab project token per run, scoped to
//! the environment's repositories; or a static team secret) is asked once, when the run's runner
//! fetches its resolved configuration, and what it issued is revoked when the run ends.
//!
//! Issued credentials are held in memory until their run ends: after a control-plane restart, the
//! ones issued before it are no longer revoked by us and live out their expiry (GitHub: one hour).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oz_core::environment::EnvironmentConfig;
use oz_core::run::RunId;
use oz_core::wire::admin::GitProvider;
use oz_core::wire::callbacks::ResolvedGitCredential;
use oz_credentials::{
    Access, AppIssuer, CredentialRequest, CredentialStrategy, GitCredentialProvider, GitHubAppProvider, GitLabProvider,
    IssuedCredential, RunIdentity, RunUser, StaticProvider,
};
use secrecy::SecretString;

use crate::error::ApiError;
use crate::store::{RunRecord, Store};
use crate::vault::{self, Keyring};

/// The git host runs of an environment clone from: the host of its `OZ_GIT_BASE_URL`, else
/// `github.com` (the runner's default).
pub fn git_host(environment: &EnvironmentConfig) -> Option<String> {
    let base = environment
        .env_vars
        .get(oz_core::runner::env::GIT_BASE_URL)
        .map(String::as_str)
        .unwrap_or("https://github.com");
    let rest = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://"))?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(authority.rsplit('@').next().unwrap_or(authority).to_ascii_lowercase())
}

type Issued = (Arc<dyn GitCredentialProvider>, IssuedCredential);

/// Issues credentials for runs and revokes them when the runs end. Cheap to clone.
#[derive(Clone, Default)]
pub struct GitCredentialBroker {
    issued: Arc<Mutex<HashMap<String, Vec<Issued>>>>,
    /// The workers' preparation credentials, by (team, environment).
    prepared: Arc<Mutex<HashMap<(String, String), Prepared>>>,
}

/// A preparation credential and what it was issued for (the repositories, the host and the
/// provider's configuration, serialized).
struct Prepared {
    scope: String,
    issued: Issued,
}

/// A shared preparation credential is replaced this long before it expires: longer than the
/// worker's own margin (`oz-worker`'s `RENEW_BEFORE`, 10 minutes), so a worker that renews gets a
/// new one instead of the one about to end.
const PREPARATION_RENEWAL: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);

/// Whether a preparation credential that expires at `expires_at` is good beyond the renewal margin.
fn renewed_after(expires_at: Option<jiff::Timestamp>) -> bool {
    let Ok(limit) = jiff::Timestamp::now().checked_add(PREPARATION_RENEWAL) else { return false };
    expires_at.is_some_and(|at| at > limit)
}

/// Revokes one credential issued for `owner` (a run, or an environment's preparation); a failure is
/// logged.
async fn revoke_one(owner: &str, (provider, credential): Issued) {
    if let Err(e) = provider.revoke(&credential).await {
        tracing::warn!(owner, "could not revoke a git credential: {}", oz_core::error::error_chain(&e));
    } else {
        tracing::debug!(owner, host = %credential.host, "revoked a git credential");
    }
}

impl std::fmt::Debug for GitCredentialBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentialBroker").finish_non_exhaustive()
    }
}

async fn team_secret(
    store: &dyn Store,
    keyring: &Keyring,
    team_id: &str,
    name: &str,
) -> Result<SecretString, ApiError> {
    let record = store.secret(team_id, name).await?.ok_or_else(|| {
        ApiError::invalid(format!("the git provider names the secret {name:?}, which the team does not have"))
    })?;
    keyring.open(&vault::secret_place(team_id, name), &record.sealed).map_err(ApiError::internal)
}

fn provider_error(e: oz_credentials::CredentialError) -> ApiError {
    // Its message names the provider's answer, never a token or a key.
    ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        oz_core::failure::ErrorCode::ExternalAuthenticationRequired,
        format!("the git provider refused a credential for this run: {}", oz_core::error::error_chain(&e)),
    )
}

/// The provider that `configured` describes, for `host`, with its team's secret opened.
async fn build_provider(
    store: &dyn Store,
    keyring: &Keyring,
    team_id: &str,
    host: &str,
    configured: GitProvider,
) -> Result<Arc<dyn GitCredentialProvider>, ApiError> {
    Ok(match configured {
        GitProvider::GithubApp { app, private_key_secret, installation_id, api_url } => {
            let key = team_secret(store, keyring, team_id, &private_key_secret).await?;
            let mut builder = GitHubAppProvider::builder(AppIssuer::parse(&app), key).git_host(host);
            if let Some(url) = api_url {
                builder = builder.api_base(url);
            }
            if let Some(id) = installation_id {
                builder = builder.installation_id(id);
            }
            Arc::new(builder.build().map_err(provider_error)?)
        }
        GitProvider::Gitlab { url, token_secret } => {
            let token = team_secret(store, keyring, team_id, &token_secret).await?;
            Arc::new(GitLabProvider::builder(url, token).git_host(host).build().map_err(provider_error)?)
        }
        GitProvider::Static { token_secret, username } => {
            let token = team_secret(store, keyring, team_id, &token_secret).await?;
            let username = username.unwrap_or_else(|| oz_credentials::GITHUB_TOKEN_USERNAME.to_owned());
            Arc::new(StaticProvider::new(host, username).with_team_token(token))
        }
    })
}

fn resolved(issued: &IssuedCredential) -> ResolvedGitCredential {
    ResolvedGitCredential {
        host: issued.host.clone(),
        username: issued.username.clone(),
        token: issued.expose_token().to_owned(),
        expires_at: issued.expires_at,
    }
}

/// Whether a credential that expires at `expires_at` is good for a few more minutes.
fn good_for_a_while(expires_at: Option<jiff::Timestamp>) -> bool {
    let Ok(soon) = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_mins(5)) else { return false };
    expires_at.is_none_or(|at| at > soon)
}

impl GitCredentialBroker {
    fn issued(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Issued>>> {
        self.issued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Prepared>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The credentials run `run` gets for its environment's repositories, from the team's provider
    /// for the environment's git host (none when the team has no provider for it).
    pub async fn issue(
        &self,
        store: &dyn Store,
        keyring: &Keyring,
        run: &RunRecord,
        environment: &EnvironmentConfig,
    ) -> Result<Vec<ResolvedGitCredential>, ApiError> {
        let Some(host) = git_host(environment) else { return Ok(Vec::new()) };
        if environment.github_repos.is_empty() {
            return Ok(Vec::new());
        }
        let Some((_, provider)) = store.git_providers(&run.team_id).await?.into_iter().find(|(h, _)| *h == host) else {
            return Ok(Vec::new());
        };
        // The runner's retries get what was issued already, not one more token each.
        if let Some(credential) = self.still_valid(&run.id, &host) {
            return Ok(vec![credential]);
        }
        let provider = build_provider(store, keyring, &run.team_id, &host, provider).await?;
        let strategy = run
            .config
            .as_ref()
            .and_then(|c| c.credential_strategy.as_deref())
            .map(str::parse::<CredentialStrategy>)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("config.credential_strategy: {e}")))?
            .unwrap_or_default();
        let creator = run.creator_id.clone().map(RunUser::new);
        // A run continued after its end runs for whoever continued it.
        let executor = match run.continuation.as_ref() {
            Some(c) => c.followup.by.clone().map(RunUser::new),
            None => creator.clone(),
        };
        let identity = RunIdentity { strategy, creator, executor };
        let run_id = RunId::parse(&run.id).map_err(|e| ApiError::invalid(e.to_string()))?;
        let request =
            CredentialRequest::new(run_id, environment.github_repos.clone(), Access::ReadWrite).with_identity(identity);
        let issued = provider.issue(&request).await.map_err(provider_error)?;
        let credential = resolved(&issued);
        self.issued().entry(run.id.clone()).or_default().push((provider, issued));
        // The run may have ended (or gone back to the queue) while the provider was asked, after its
        // credentials were revoked: revoke this one too rather than let it outlive the run.
        let current = store.run_by_id(&run.id).await?;
        if current.is_none_or(|r| r.state.is_terminal() || r.state == oz_core::run::RunState::Queued) {
            self.revoke(&run.id).await;
            return Err(ApiError::conflict("the run ended while its git credential was being issued").retryable(false));
        }
        Ok(vec![credential])
    }

    /// What run `run_id` was issued for `host`, if it is good for a few more minutes.
    fn still_valid(&self, run_id: &str, host: &str) -> Option<ResolvedGitCredential> {
        let issued = self.issued();
        let (_, credential) =
            issued.get(run_id)?.iter().find(|(_, c)| c.host == host && good_for_a_while(c.expires_at))?;
        Some(resolved(credential))
    }

    /// The read-only credential a worker of team `team_id` prepares environment `environment_id`
    /// with (its git mirrors, its warm pools' HEAD checks), from the team's provider for the
    /// environment's git host; none when the team has none. One per environment: the workers of the
    /// team share it until it is within 15 minutes of its expiry (a new one is issued, the old one
    /// left to expire, as workers may be using it), or until the environment or the team's git
    /// providers change or the environment is deleted (revoked then). A static secret is not kept. The provider is asked for
    /// read access only (a GitHub App token with `contents: read`, a GitLab `read_repository`
    /// token); a static provider's secret cannot be narrowed and is handed as it is.
    pub async fn issue_for_preparation(
        &self,
        store: &dyn Store,
        keyring: &Keyring,
        team_id: &str,
        environment_id: &str,
        environment: &EnvironmentConfig,
    ) -> Result<Vec<ResolvedGitCredential>, ApiError> {
        let provider = match git_host(environment).filter(|_| !environment.github_repos.is_empty()) {
            Some(host) => store.git_providers(team_id).await?.into_iter().find(|(h, _)| *h == host),
            None => None,
        };
        let Some((host, configured)) = provider else {
            // Nothing to issue any more (no repos, another host, the provider removed): what was
            // issued for it goes.
            self.forget_environment(team_id, environment_id).await;
            return Ok(Vec::new());
        };
        let key = (team_id.to_owned(), environment_id.to_owned());
        // What a shared credential must still be for: these repositories, from this provider.
        let scope = serde_json::to_string(&(&environment.github_repos, &host, &configured)).unwrap_or_default();
        let usable = |p: &Prepared| p.scope == scope && renewed_after(p.issued.1.expires_at);
        let rescoped = {
            let mut prepared = self.prepared();
            match prepared.get(&key) {
                Some(p) if usable(p) => return Ok(vec![resolved(&p.issued.1)]),
                // Near its expiry: left to expire, since workers may be using it right now.
                Some(p) if p.scope == scope => {
                    prepared.remove(&key);
                    None
                }
                // For other repositories or another provider: it must not go on working.
                Some(_) => prepared.remove(&key),
                None => None,
            }
        };
        if let Some(old) = rescoped {
            revoke_one(environment_id, old.issued).await;
        }
        let provider = build_provider(store, keyring, team_id, &host, configured).await?;
        // Named for the token's record at the provider (a GitLab token is `oz-run-prepare-<id>`).
        let purpose =
            RunId::parse(&format!("prepare-{environment_id}")).map_err(|e| ApiError::invalid(e.to_string()))?;
        let request = CredentialRequest::new(purpose, environment.github_repos.clone(), Access::Read);
        let issued = provider.issue(&request).await.map_err(provider_error)?;
        let credential = resolved(&issued);
        // A static secret never expires and costs nothing to hand out again: not kept, so a rotated
        // secret is what the next ask gets.
        if issued.expires_at.is_none() {
            return Ok(vec![credential]);
        }
        // Two workers asked at once: the first one's stays (it may be in use already), ours goes.
        let mut ours = Some((provider, issued));
        let (theirs, replaced) = {
            let mut prepared = self.prepared();
            match prepared.get(&key).filter(|p| usable(p)).map(|p| resolved(&p.issued.1)) {
                Some(theirs) => (Some(theirs), None),
                None => {
                    let replaced =
                        ours.take().and_then(|issued| prepared.insert(key, Prepared { scope: scope.clone(), issued }));
                    (None, replaced)
                }
            }
        };
        // One for another scope, issued meanwhile: it must not go on working.
        if let Some(replaced) = replaced.filter(|r| r.scope != scope) {
            revoke_one(environment_id, replaced.issued).await;
        }
        match (theirs, ours) {
            (Some(theirs), Some(ours)) => {
                revoke_one(environment_id, ours).await;
                Ok(vec![theirs])
            }
            _ => Ok(vec![credential]),
        }
    }

    /// Revokes the preparation credential of environment `environment_id` of team `team_id` (the
    /// environment was changed or deleted), if one is held; the next ask gets a new one.
    pub async fn forget_environment(&self, team_id: &str, environment_id: &str) {
        let held = self.prepared().remove(&(team_id.to_owned(), environment_id.to_owned()));
        if let Some(held) = held {
            revoke_one(environment_id, held.issued).await;
        }
    }

    /// Revokes every preparation credential of team `team_id` (one of its git providers changed).
    pub async fn forget_team(&self, team_id: &str) {
        let held: Vec<Prepared> = {
            let mut prepared = self.prepared();
            let keys: Vec<_> = prepared.keys().filter(|(team, _)| team == team_id).cloned().collect();
            keys.iter().filter_map(|k| prepared.remove(k)).collect()
        };
        for one in held {
            revoke_one(team_id, one.issued).await;
        }
    }

    /// Revokes what run `run_id` was issued (its run ended); failures are logged, not returned.
    pub async fn revoke(&self, run_id: &str) {
        let issued = self.issued().remove(run_id).unwrap_or_default();
        for one in issued {
            revoke_one(run_id, one).await;
        }
    }

    /// How many runs hold credentials now.
    pub fn runs_holding(&self) -> usize {
        self.issued().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_git_host_comes_from_the_base_url() {
        let mut env = EnvironmentConfig { name: "e".into(), ..Default::default() };
        assert_eq!(git_host(&env).as_deref(), Some("github.com"));
        env.env_vars.insert("OZ_GIT_BASE_URL".into(), "http://127.0.0.1:9418/repos".into());
        assert_eq!(git_host(&env).as_deref(), Some("127.0.0.1:9418"));
        env.env_vars.insert("OZ_GIT_BASE_URL".into(), "file:///srv/git".into());
        assert_eq!(git_host(&env), None);
    }
}
