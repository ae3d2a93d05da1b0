//! What a provider hands out: a credential for one git host, what it reaches, whom it acts as and
//! what revoking it takes.

use std::fmt;

use jiff::Timestamp;
use oz_core::credentials::GitCredential;
use oz_core::environment::RepoRef;
use oz_core::run::RunId;
use secrecy::{ExposeSecret, SecretString};

use crate::request::{Access, RunIdentity};

/// Which provider issued a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// [`GitHubAppProvider`](crate::GitHubAppProvider).
    GitHubApp,
    /// [`GitLabProvider`](crate::GitLabProvider).
    GitLab,
    /// [`StaticProvider`](crate::StaticProvider).
    Static,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::GitHubApp => "GitHub",
            ProviderKind::GitLab => "GitLab",
            ProviderKind::Static => "the static provider",
        })
    }
}

/// What a credential reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialScope {
    /// These repositories only, with this access, as the provider confirmed in its answer.
    Repositories {
        /// The repositories, as the request spelled them.
        repos: Vec<RepoRef>,
        /// The access granted.
        access: Access,
    },
    /// Whatever the secret's owner can reach: the request's repositories and access were not
    /// enforced by anyone.
    Unscoped,
}

/// Whom the credential acts as on the git host (for auditing).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActsAs {
    /// The GitHub App's installation: commits pushed with it are the App's (`name[bot]`).
    GitHubInstallation {
        /// The installation's id.
        installation_id: u64,
    },
    /// The GitLab project's bot user that GitLab made for the token.
    GitLabProjectBot {
        /// The bot user's id, when GitLab said it.
        user_id: Option<u64>,
    },
    /// The team's static secret.
    TeamSecret,
    /// The acting user's own static secret.
    UserSecret {
        /// The control plane's user id.
        user_id: String,
    },
}

/// What revoking a credential takes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revocation {
    /// `DELETE /installation/token`, authenticated with the installation token itself.
    GitHubInstallationToken,
    /// `DELETE /projects/:id/access_tokens/:token_id`, with the provider's own token.
    GitLabProjectToken {
        /// The project's path (`group/project`), as it was created for.
        project: String,
        /// The token's id.
        token_id: u64,
    },
    /// Nothing: a static secret is the team's, and never revoked by us.
    NotRevocable,
}

/// A credential issued for one run: a user name and token for one git host, for the run's credential
/// helper. `Debug` never shows the token; it is zeroized on drop.
///
/// Hand it back to the provider's [`revoke`](crate::GitCredentialProvider::revoke) when the run ends;
/// until then it lives until [`expires_at`](Self::expires_at).
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedCredential {
    /// Who issued it.
    pub provider: ProviderKind,
    /// The git host it is for (`github.com`; with `:port` when not the scheme's default).
    pub host: String,
    /// The user name git presents (`x-access-token` for GitHub App tokens).
    pub username: String,
    token: SecretString,
    /// When it stops being valid; `None` for a static secret.
    pub expires_at: Option<Timestamp>,
    /// What it reaches.
    pub scope: CredentialScope,
    /// The run it was issued for.
    pub run_id: RunId,
    /// The identity the run asked for, as asked (whatever the provider could do with it).
    pub identity: RunIdentity,
    /// Whom it acts as on the host.
    pub acts_as: ActsAs,
    /// What revoking it takes.
    pub revocation: Revocation,
}

/// The parts of an [`IssuedCredential`] besides its token (the crate's providers build it).
pub(crate) struct Issued {
    pub(crate) provider: ProviderKind,
    pub(crate) host: String,
    pub(crate) username: String,
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) scope: CredentialScope,
    pub(crate) run_id: RunId,
    pub(crate) identity: RunIdentity,
    pub(crate) acts_as: ActsAs,
    pub(crate) revocation: Revocation,
}

impl Issued {
    pub(crate) fn with_token(self, token: SecretString) -> IssuedCredential {
        let Issued { provider, host, username, expires_at, scope, run_id, identity, acts_as, revocation } = self;
        IssuedCredential { provider, host, username, token, expires_at, scope, run_id, identity, acts_as, revocation }
    }
}

impl IssuedCredential {
    /// The token, for the one place that hands it to git.
    pub fn expose_token(&self) -> &str {
        self.token.expose_secret()
    }

    /// The token, still wrapped.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// The credential as the runner's credential helper takes it.
    pub fn git_credential(&self) -> GitCredential {
        GitCredential::new(&self.host, &self.username, self.token.expose_secret(), self.expires_at)
    }

    /// Whether it has expired at `now` (a static secret never does, as far as we know).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

impl fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("provider", &self.provider)
            .field("host", &self.host)
            .field("username", &self.username)
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("run_id", &self.run_id)
            .field("identity", &self.identity)
            .field("acts_as", &self.acts_as)
            .field("revocation", &self.revocation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token_and_the_git_credential_carries_it() {
        let secret = "ghs_unit_test_secret_0123456789";
        let issued = Issued {
            provider: ProviderKind::GitHubApp,
            host: "github.com".into(),
            username: "x-access-token".into(),
            expires_at: Some(Timestamp::from_second(2_000_000_000).unwrap()),
            scope: CredentialScope::Unscoped,
            run_id: RunId::parse("run-1").unwrap(),
            identity: RunIdentity::default(),
            acts_as: ActsAs::TeamSecret,
            revocation: Revocation::GitHubInstallationToken,
        }
        .with_token(SecretString::from(secret));
        for shown in [format!("{issued:?}"), format!("{issued:#?}")] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("[REDACTED]"), "{shown}");
        }
        let git = issued.git_credential();
        assert_eq!((git.host.as_str(), git.username.as_str(), git.expose()), ("github.com", "x-access-token", secret));
        assert!(!issued.is_expired(Timestamp::from_second(1_999_999_999).unwrap()));
        assert!(issued.is_expired(Timestamp::from_second(2_000_000_000).unwrap()));
    }
}
