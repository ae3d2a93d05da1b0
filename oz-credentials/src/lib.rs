//! Short-lived, scoped git credentials for agent runs.
//!
//! A [`GitCredentialProvider`] issues a credential for a run ([`CredentialRequest`]: its
//! repositories, the access it needs, whose identity it acts for) and revokes it when the run ends.
//! Three providers, from the strongest guarantees to the weakest:
//!
//! - [`GitHubAppProvider`]: a GitHub App installation token limited to exactly the run's
//!   repositories, with `contents: read` or `write`, for an hour at most; revoked at the end.
//! - [`GitLabProvider`]: a GitLab project access token for the run's one project, with
//!   `read_repository` (and `write_repository`), expiring tomorrow; revoked at the end.
//! - [`StaticProvider`]: a stored personal access token, handed out as is, scoped to nothing and
//!   never revoked by us.
//!
//! What comes back ([`IssuedCredential`]) carries the host, user name and token git needs (the
//! token as a [`secrecy::SecretString`]; `Debug` never shows it), its expiry, what it reaches
//! ([`CredentialScope`]), whom it acts as ([`ActsAs`]) and what revoking it takes
//! ([`Revocation`]). No error ([`CredentialError`]) shows a token, a JWT or the App's private key.
//!
//! ```
//! use oz_core::environment::RepoRef;
//! use oz_core::run::RunId;
//! use oz_credentials::{Access, CredentialRequest, CredentialScope, GitCredentialProvider, StaticProvider};
//! use secrecy::SecretString;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = StaticProvider::new("github.com", "x-access-token")
//!     .with_team_token(SecretString::from("ghp_team_secret"));
//! let request = CredentialRequest::new(RunId::parse("run-1")?, [RepoRef::parse("acme/api")?], Access::Read);
//!
//! let issued = provider.issue(&request).await?;
//! assert_eq!((issued.host.as_str(), issued.username.as_str()), ("github.com", "x-access-token"));
//! assert_eq!(issued.scope, CredentialScope::Unscoped); // the weakest guarantees
//! assert!(!format!("{issued:?}").contains("ghp_team_secret"));
//! let for_git = issued.git_credential(); // what the runner's credential helper serves
//! provider.revoke(&issued).await?; // nothing to do for a static secret
//! # Ok(()) }
//! ```
//!
//! A GitHub App (the private key is parsed once, here; a bad PEM is an error of `build`):
//!
//! ```no_run
//! # use oz_core::{environment::RepoRef, run::RunId};
//! # use oz_credentials::*;
//! # use secrecy::SecretString;
//! # async fn run(pem: String) -> Result<(), CredentialError> {
//! let github = GitHubAppProvider::builder(AppIssuer::parse("Iv23liExampleClientId"), SecretString::from(pem)).build()?;
//! let repos = [RepoRef::new("acme", "api").unwrap(), RepoRef::new("acme", "web").unwrap()];
//! let request = CredentialRequest::new(RunId::new_random(), repos, Access::ReadWrite);
//! let issued = github.issue(&request).await?; // a token for acme/api and acme/web only
//! // ... the run ...
//! github.revoke(&issued).await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/git-credentials.md` for what each provider needs configured.

mod error;
mod github;
mod gitlab;
mod http;
mod issued;
mod request;
mod static_token;

use async_trait::async_trait;

pub use error::{Action, CredentialError, ProviderAnswer};
pub use github::{AppIssuer, GITHUB_API, GITHUB_TOKEN_USERNAME, GitHubAppProvider, GitHubAppProviderBuilder};
pub use gitlab::{GITLAB_TOKEN_USERNAME, GitLabAccessLevel, GitLabProvider, GitLabProviderBuilder};
pub use http::HttpOptions;
pub use issued::{ActsAs, CredentialScope, IssuedCredential, ProviderKind, Revocation};
pub use request::{Access, CredentialRequest, CredentialStrategy, RunIdentity, RunUser, UnknownStrategy};
pub use static_token::StaticProvider;

/// Issues git credentials for runs and revokes them.
#[async_trait]
pub trait GitCredentialProvider: Send + Sync {
    /// Which provider this is (also [`IssuedCredential::provider`] of what it issues).
    fn kind(&self) -> ProviderKind;

    /// A credential for `request`'s repositories and access, or an error saying why not. A
    /// provider that scopes its tokens refuses a request it cannot scope exactly (no repositories,
    /// two GitHub owners, several GitLab projects) rather than issue something wider.
    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, CredentialError>;

    /// Ends a credential this provider issued, before its expiry; call it when the run ends. A
    /// credential of another provider is refused ([`CredentialError::WrongProvider`]).
    async fn revoke(&self, issued: &IssuedCredential) -> Result<(), CredentialError>;
}
