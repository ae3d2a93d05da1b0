//! The crate's one error type. No variant's message, `Debug` or source holds a token, the App's JWT
//! or its private key: HTTP errors are kept without their URL, a provider's message is cut short and
//! has the request's own credentials masked, and a body that could not be decoded is described by
//! where it broke, never by what it said.

use std::fmt;

use crate::issued::ProviderKind;

/// What a provider was asked to do when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `GET /repos/{owner}/{repo}/installation`.
    FindInstallation,
    /// `POST /app/installations/{id}/access_tokens`.
    MintInstallationToken,
    /// `DELETE /installation/token`.
    RevokeInstallationToken,
    /// `POST /projects/:id/access_tokens`.
    CreateProjectToken,
    /// `DELETE /projects/:id/access_tokens/:token_id`.
    RevokeProjectToken,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::FindInstallation => "find the App's installation",
            Action::MintInstallationToken => "mint an installation token",
            Action::RevokeInstallationToken => "revoke an installation token",
            Action::CreateProjectToken => "create a project access token",
            Action::RevokeProjectToken => "revoke a project access token",
        })
    }
}

/// An error answer of a provider: its status and its own message (GitHub's and GitLab's `message`,
/// or the start of the body), at most [`ProviderAnswer::MAX_MESSAGE`] characters, with the
/// credentials of the request that drew it masked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct ProviderAnswer {
    /// The HTTP status.
    pub status: u16,
    /// What the provider said.
    pub message: String,
}

impl ProviderAnswer {
    /// The longest message kept, in characters.
    pub const MAX_MESSAGE: usize = 300;
}

/// What issuing or revoking a credential can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The provider's configuration is unusable (a base URL that is not `https://`, a token that
    /// cannot travel in a header).
    #[error("invalid {provider} configuration: {reason}")]
    Config {
        /// Whose configuration.
        provider: ProviderKind,
        /// What is wrong with it.
        reason: String,
    },
    /// The GitHub App's private key is not an RSA key in PEM form (PKCS#1, as GitHub hands it out,
    /// or PKCS#8).
    #[error("the GitHub App private key is not a usable RSA private key in PEM form")]
    PrivateKey(#[source] jsonwebtoken::errors::Error),
    /// The HTTP client could not be set up (for one, no CA certificates to verify TLS with).
    #[error("the HTTP client could not be set up")]
    HttpSetup(#[source] reqwest::Error),
    /// The request is not one this provider serves: no repositories, repositories of two owners
    /// for one GitHub installation token, several GitLab projects.
    #[error("{provider} cannot serve this request: {reason}")]
    Unsupported {
        /// The provider asked.
        provider: ProviderKind,
        /// Why not.
        reason: String,
    },
    /// The App's JWT could not be signed.
    #[error("could not sign the GitHub App's JWT")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The provider did not answer (connection refused, timeout, a dropped connection).
    #[error("{provider} did not answer the request to {action}")]
    Transport {
        /// The provider asked.
        provider: ProviderKind,
        /// What it was asked.
        action: Action,
        /// Why (without the URL).
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an error status.
    #[error("{provider} refused to {action}")]
    Refused {
        /// The provider asked.
        provider: ProviderKind,
        /// What it was asked.
        action: Action,
        /// Its answer.
        #[source]
        answer: ProviderAnswer,
    },
    /// The provider's answer was not what its API documents. `detail` says where the body broke,
    /// never what it held (it may hold the token), so there is no source error.
    #[error("{provider}'s answer to the request to {action} could not be read: {detail}")]
    Decode {
        /// The provider asked.
        provider: ProviderKind,
        /// What it was asked.
        action: Action,
        /// Where and how the body broke.
        detail: String,
    },
    /// The provider granted something other than what was asked (other repositories, wider
    /// permissions). The token was not handed out; `revoke_error` says whether revoking it failed.
    #[error("{provider} granted a token other than the one asked for ({detail}); it was not handed out")]
    ScopeMismatch {
        /// The provider asked.
        provider: ProviderKind,
        /// What differed.
        detail: String,
        /// Why the token could not be revoked, if it could not.
        #[source]
        revoke_error: Option<Box<CredentialError>>,
    },
    /// The static provider has neither a secret of the acting user nor the team's.
    #[error("no secret is configured for {host}: neither the team's nor one of the acting user ({user})")]
    NoSecret {
        /// The host.
        host: String,
        /// The acting user's id, or `none` when the request names none.
        user: String,
    },
    /// A credential handed to the provider that did not issue it.
    #[error("this credential was issued by {issued_by}; {provider} cannot revoke it")]
    WrongProvider {
        /// The provider asked to revoke.
        provider: ProviderKind,
        /// The provider that issued it.
        issued_by: ProviderKind,
    },
}

impl CredentialError {
    /// The provider's HTTP status, for [`CredentialError::Refused`].
    pub fn status(&self) -> Option<u16> {
        match self {
            CredentialError::Refused { answer, .. } => Some(answer.status),
            _ => None,
        }
    }

    pub(crate) fn config(provider: ProviderKind, reason: impl Into<String>) -> Self {
        CredentialError::Config { provider, reason: reason.into() }
    }

    pub(crate) fn unsupported(provider: ProviderKind, reason: impl Into<String>) -> Self {
        CredentialError::Unsupported { provider, reason: reason.into() }
    }
}
