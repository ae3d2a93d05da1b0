//! A team's stored secret (a personal access token), handed out as is: the fallback with the
//! weakest guarantees.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::GitCredentialProvider;
use crate::error::CredentialError;
use crate::issued::{ActsAs, CredentialScope, Issued, IssuedCredential, ProviderKind, Revocation};
use crate::request::CredentialRequest;

const PROVIDER: ProviderKind = ProviderKind::Static;

/// Hands out a stored secret for one git host.
///
/// It guarantees nothing about scope: the token reaches whatever its owner can, for as long as its
/// owner lets it live, whichever repositories and access the request names
/// ([`CredentialScope::Unscoped`]). It is never revoked by us ([`revoke`](GitCredentialProvider::revoke)
/// does nothing). Prefer [`GitHubAppProvider`](crate::GitHubAppProvider) or
/// [`GitLabProvider`](crate::GitLabProvider) wherever the host allows.
///
/// With per-user secrets configured, the request's acting user (by its
/// [`credential_strategy`](crate::CredentialStrategy)) gets their own; anyone else, and a run whose
/// acting user is unknown, gets the team's.
#[derive(Clone)]
pub struct StaticProvider {
    host: String,
    username: String,
    team: Option<SecretString>,
    users: BTreeMap<String, SecretString>,
}

impl StaticProvider {
    /// A provider for `host` (git's credential `host`, `github.com`), presenting `username` (for a
    /// GitHub personal access token any non-empty name works, `x-access-token` among them).
    pub fn new(host: impl Into<String>, username: impl Into<String>) -> Self {
        Self { host: host.into(), username: username.into(), team: None, users: BTreeMap::new() }
    }

    /// With the team's secret.
    #[must_use]
    pub fn with_team_token(mut self, token: SecretString) -> Self {
        self.team = Some(token);
        self
    }

    /// With a user's own secret, keyed by the control plane's user id.
    #[must_use]
    pub fn with_user_token(mut self, user_id: impl Into<String>, token: SecretString) -> Self {
        self.users.insert(user_id.into(), token);
        self
    }

    /// The git host.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Debug for StaticProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticProvider")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("team_token", &self.team.as_ref().map(|_| "[REDACTED]"))
            .field("user_tokens", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[async_trait]
impl GitCredentialProvider for StaticProvider {
    fn kind(&self) -> ProviderKind {
        PROVIDER
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, CredentialError> {
        let user = request.identity.acting_user();
        let own = user.and_then(|u| self.users.get(&u.id).map(|token| (u, token)));
        let (acts_as, token) = match (own, &self.team) {
            (Some((user, token)), _) => (ActsAs::UserSecret { user_id: user.id.clone() }, token.clone()),
            (None, Some(team)) => (ActsAs::TeamSecret, team.clone()),
            (None, None) => {
                let user = user.map_or_else(|| "none".to_owned(), |u| u.id.clone());
                return Err(CredentialError::NoSecret { host: self.host.clone(), user });
            }
        };
        tracing::info!(run_id = %request.run_id, host = self.host, ?acts_as, "handed out a static git secret (unscoped)");
        let issued = Issued {
            provider: PROVIDER,
            host: self.host.clone(),
            username: self.username.clone(),
            expires_at: None,
            scope: CredentialScope::Unscoped,
            run_id: request.run_id.clone(),
            identity: request.identity.clone(),
            acts_as,
            revocation: Revocation::NotRevocable,
        };
        Ok(issued.with_token(token))
    }

    /// Does nothing for its own credentials: the secret is the team's (or the user's) to keep.
    async fn revoke(&self, issued: &IssuedCredential) -> Result<(), CredentialError> {
        match issued.provider {
            PROVIDER => Ok(()),
            other => Err(CredentialError::WrongProvider { provider: PROVIDER, issued_by: other }),
        }
    }
}
