//! GitHub App installation tokens: minted per run for exactly the run's repositories, with
//! `contents: read` or `write`, and revoked when the run ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use async_trait::async_trait;
use jiff::Timestamp;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oz_core::environment::RepoRef;
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::GitCredentialProvider;
use crate::error::{Action, CredentialError};
use crate::http::{self, Api, Call, HttpOptions};
use crate::issued::{ActsAs, CredentialScope, Issued, IssuedCredential, ProviderKind, Revocation};
use crate::request::{Access, CredentialRequest};

/// GitHub's API root.
pub const GITHUB_API: &str = "https://api.github.com";
/// The user name git presents with an installation token (the token is the password).
pub const GITHUB_TOKEN_USERNAME: &str = "x-access-token";

/// The REST API version every request asks for.
const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";
/// `iat` this far in the past, against clock drift (GitHub's advice).
const JWT_BACKDATE_SECS: i64 = 60;
/// `exp` this far in the future: GitHub refuses more than 10 minutes; 9 leaves room for drift.
const JWT_LIFETIME_SECS: i64 = 9 * 60;
/// GitHub's limit of repositories in one token request.
const MAX_REPOSITORIES: usize = 500;
const PROVIDER: ProviderKind = ProviderKind::GitHubApp;

/// Who the App's JWT says it is (`iss`): the App's client id (GitHub's recommendation) or its
/// numeric app id (sent as a JSON number, as GitHub's own examples do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AppIssuer {
    /// The client id (`Iv23li...`).
    ClientId(String),
    /// The app id.
    AppId(u64),
}

impl AppIssuer {
    /// Digits are an app id; anything else is a client id.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        text.parse().map(AppIssuer::AppId).unwrap_or_else(|_| AppIssuer::ClientId(text.to_owned()))
    }
}

impl fmt::Display for AppIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppIssuer::ClientId(id) => f.write_str(id),
            AppIssuer::AppId(id) => write!(f, "{id}"),
        }
    }
}

#[derive(Serialize)]
struct AppClaims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a AppIssuer,
}

/// Sets up a [`GitHubAppProvider`]; [`build`](Self::build) parses the key.
#[must_use]
pub struct GitHubAppProviderBuilder {
    issuer: AppIssuer,
    private_key_pem: SecretString,
    api_base: String,
    git_host: Option<String>,
    installation_id: Option<u64>,
    http: HttpOptions,
}

impl GitHubAppProviderBuilder {
    /// The API root: [`GITHUB_API`] by default; `https://HOST/api/v3` for GitHub Enterprise Server.
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api_base = url.into();
        self
    }

    /// The git host the tokens are for: `github.com` with the default API root, else the API
    /// root's host.
    pub fn git_host(mut self, host: impl Into<String>) -> Self {
        self.git_host = Some(host.into());
        self
    }

    /// Always this installation, instead of looking up the one of the repositories' owner (an App
    /// installed on one organisation only).
    pub fn installation_id(mut self, id: u64) -> Self {
        self.installation_id = Some(id);
        self
    }

    /// Timeouts, user agent and retries.
    pub fn http(mut self, options: HttpOptions) -> Self {
        self.http = options;
        self
    }

    /// Parses the private key (and signs a JWT with it once, so a key that is PEM but not RSA
    /// fails here rather than on a run) and sets up the HTTP client.
    pub fn build(self) -> Result<GitHubAppProvider, CredentialError> {
        if matches!(&self.issuer, AppIssuer::ClientId(id) if id.is_empty()) {
            return Err(CredentialError::config(PROVIDER, "the App's client id or app id is empty"));
        }
        // jsonwebtoken picks its crypto from its features and panics when it cannot (were another
        // crate to enable aws_lc_rs too): name ours, as the HTTP client names rustls' ring.
        let _ = CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
        let key = EncodingKey::from_rsa_pem(self.private_key_pem.expose_secret().as_bytes())
            .map_err(CredentialError::PrivateKey)?;
        sign(&key, &self.issuer, Timestamp::now()).map_err(CredentialError::PrivateKey)?;
        let api = Api::new(PROVIDER, &self.api_base, &self.http)?;
        let git_host = match self.git_host {
            Some(host) => checked_host(host)?,
            None if api.base().host_str() == Some("api.github.com") => "github.com".to_owned(),
            None => http::host_of(api.base()),
        };
        Ok(GitHubAppProvider { issuer: self.issuer, key, api, git_host, installation_id: self.installation_id })
    }
}

impl fmt::Debug for GitHubAppProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubAppProviderBuilder")
            .field("issuer", &self.issuer)
            .field("private_key_pem", &"[REDACTED]")
            .field("api_base", &self.api_base)
            .field("git_host", &self.git_host)
            .field("installation_id", &self.installation_id)
            .finish()
    }
}

fn checked_host(host: String) -> Result<String, CredentialError> {
    let ok = !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@'));
    if ok { Ok(host) } else { Err(CredentialError::config(PROVIDER, format!("{host:?} is not a git host name"))) }
}

fn sign(key: &EncodingKey, issuer: &AppIssuer, now: Timestamp) -> jsonwebtoken::errors::Result<String> {
    let now = now.as_second();
    let claims = AppClaims { iat: now - JWT_BACKDATE_SECS, exp: now + JWT_LIFETIME_SECS, iss: issuer };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
}

/// Mints GitHub App installation tokens.
///
/// Each token is limited to exactly the request's repositories (by name) and to `contents: read`
/// or `contents: write` (GitHub adds `metadata: read` to every token); the answer is checked
/// against the request, and a token that reaches more is revoked at once and never handed out.
/// The repositories must share one owner: an installation token belongs to one installation, and
/// an installation to one account. Tokens expire after an hour; [`revoke`](GitCredentialProvider::revoke)
/// ends them sooner.
///
/// Whose identity the run asked for changes nothing: the token is the App's installation, and the
/// identity is only recorded in the [`IssuedCredential`].
pub struct GitHubAppProvider {
    issuer: AppIssuer,
    key: EncodingKey,
    api: Api,
    git_host: String,
    installation_id: Option<u64>,
}

impl fmt::Debug for GitHubAppProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubAppProvider")
            .field("issuer", &self.issuer)
            .field("private_key", &"[REDACTED]")
            .field("api_base", &self.api.base().as_str())
            .field("git_host", &self.git_host)
            .field("installation_id", &self.installation_id)
            .finish()
    }
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

/// `201` of `POST /app/installations/{id}/access_tokens`.
#[derive(Deserialize)]
struct MintedToken {
    #[serde(deserialize_with = "http::secret")]
    token: SecretString,
    expires_at: Timestamp,
    #[serde(default)]
    permissions: BTreeMap<String, String>,
    #[serde(default)]
    repository_selection: Option<String>,
    #[serde(default)]
    repositories: Option<Vec<GrantedRepo>>,
}

#[derive(Deserialize)]
struct GrantedRepo {
    name: String,
}

impl GitHubAppProvider {
    /// A provider for the App `issuer` with its private key (the PEM file GitHub hands out).
    pub fn builder(issuer: AppIssuer, private_key_pem: SecretString) -> GitHubAppProviderBuilder {
        GitHubAppProviderBuilder {
            issuer,
            private_key_pem,
            api_base: GITHUB_API.to_owned(),
            git_host: None,
            installation_id: None,
            http: HttpOptions::default(),
        }
    }

    /// The git host its tokens are for.
    pub fn git_host(&self) -> &str {
        &self.git_host
    }

    /// A fresh App JWT (RS256; `iat` a minute ago, `exp` in nine minutes).
    fn jwt(&self) -> Result<SecretString, CredentialError> {
        sign(&self.key, &self.issuer, Timestamp::now()).map(SecretString::from).map_err(CredentialError::Signing)
    }

    fn headers(builder: RequestBuilder, bearer: &str) -> RequestBuilder {
        builder.bearer_auth(bearer).header(reqwest::header::ACCEPT, ACCEPT).header("X-GitHub-Api-Version", API_VERSION)
    }

    async fn find_installation(&self, repo: &RepoRef, jwt: &str) -> Result<u64, CredentialError> {
        let call = Call {
            action: Action::FindInstallation,
            method: Method::GET,
            url: self.api.url(&["repos", &repo.owner, &repo.repo, "installation"]),
            secrets: &[jwt],
        };
        let body = self.api.send(call, |b| Self::headers(b, jwt)).await?;
        Ok(self.api.decode::<Installation>(Action::FindInstallation, body)?.id)
    }

    async fn mint(
        &self,
        installation_id: u64,
        request: &CredentialRequest,
        jwt: &str,
    ) -> Result<MintedToken, CredentialError> {
        let body = serde_json::json!({
            "repositories": request.repos.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>(),
            "permissions": { "contents": contents_level(request.access) },
        });
        let call = Call {
            action: Action::MintInstallationToken,
            method: Method::POST,
            url: self.api.url(&["app", "installations", &installation_id.to_string(), "access_tokens"]),
            secrets: &[jwt],
        };
        let answer = self.api.send(call, |b| Self::headers(b, jwt).json(&body)).await?;
        self.api.decode(Action::MintInstallationToken, answer)
    }

    /// An installation token for one repository of installation `installation_id` with exactly
    /// `permissions` (GitHub's names and levels: `{"issues": "write"}`), for the App's own calls (an
    /// integration commenting on an issue), not for a run: nothing tracks or revokes it; it lives
    /// out its hour. Refused if GitHub grants other permissions than those asked (and
    /// `metadata: read`).
    pub async fn repository_token(
        &self,
        installation_id: u64,
        repo: &str,
        permissions: &BTreeMap<String, String>,
    ) -> Result<(SecretString, Timestamp), CredentialError> {
        let jwt = self.jwt()?;
        let body = serde_json::json!({ "repositories": [repo], "permissions": permissions });
        let call = Call {
            action: Action::MintInstallationToken,
            method: Method::POST,
            url: self.api.url(&["app", "installations", &installation_id.to_string(), "access_tokens"]),
            secrets: &[jwt.expose_secret()],
        };
        let answer = self.api.send(call, |b| Self::headers(b, jwt.expose_secret()).json(&body)).await?;
        let minted: MintedToken = self.api.decode(Action::MintInstallationToken, answer)?;
        let extra: Vec<String> = minted
            .permissions
            .iter()
            .filter(|(name, level)| {
                permissions.get(*name) != Some(*level) && (name.as_str(), level.as_str()) != ("metadata", "read")
            })
            .map(|(name, level)| format!("{name}: {level}"))
            .collect();
        let missing: Vec<&String> = permissions.keys().filter(|name| !minted.permissions.contains_key(*name)).collect();
        if !extra.is_empty() || !missing.is_empty() {
            let revoke_error = self.revoke_token(minted.token.expose_secret()).await.err().map(Box::new);
            let detail = format!("granted {} beyond what was asked; missing {missing:?}", extra.join(", "));
            return Err(CredentialError::ScopeMismatch { provider: PROVIDER, detail, revoke_error });
        }
        Ok((minted.token, minted.expires_at))
    }

    async fn revoke_token(&self, token: &str) -> Result<(), CredentialError> {
        let call = Call {
            action: Action::RevokeInstallationToken,
            method: Method::DELETE,
            url: self.api.url(&["installation", "token"]),
            secrets: &[token],
        };
        match self.api.send(call, |b| Self::headers(b, token)).await {
            Ok(_) => Ok(()),
            // GitHub no longer takes the token as a credential: it is expired or already revoked,
            // so git cannot use it either.
            Err(e) if e.status() == Some(401) => {
                tracing::debug!("the installation token was already invalid");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn contents_level(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::ReadWrite => "write",
    }
}

/// What in GitHub's answer differs from the request, if anything.
fn grant_mismatch(request: &CredentialRequest, minted: &MintedToken) -> Option<String> {
    let wanted = contents_level(request.access);
    let allowed =
        |name: &str, level: &str| (name, level) == ("contents", wanted) || (name, level) == ("metadata", "read");
    let extra: Vec<String> = minted
        .permissions
        .iter()
        .filter(|(name, level)| !allowed(name, level))
        .map(|(name, level)| format!("{name}: {level}"))
        .collect();
    if !extra.is_empty() {
        return Some(format!("permissions beyond contents: {wanted} and metadata: read: {}", extra.join(", ")));
    }
    if !minted.permissions.contains_key("contents") {
        return Some(format!("no contents: {wanted} permission"));
    }
    if minted.repository_selection.as_deref() == Some("all") {
        return Some("all of the installation's repositories".to_owned());
    }
    let asked: BTreeSet<String> = request.repos.iter().map(|r| r.repo.to_ascii_lowercase()).collect();
    let granted: Option<BTreeSet<String>> =
        minted.repositories.as_ref().map(|repos| repos.iter().map(|r| r.name.to_ascii_lowercase()).collect());
    match granted {
        None => Some("the answer names no repositories".to_owned()),
        Some(granted) if granted != asked => Some(format!(
            "repositories {:?} for {:?}",
            granted.into_iter().collect::<Vec<_>>(),
            asked.into_iter().collect::<Vec<_>>()
        )),
        Some(_) => None,
    }
}

#[async_trait]
impl GitCredentialProvider for GitHubAppProvider {
    fn kind(&self) -> ProviderKind {
        PROVIDER
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, CredentialError> {
        let first = request.check_repos(PROVIDER, MAX_REPOSITORIES)?;
        let owners: BTreeSet<String> = request.repos.iter().map(|r| r.owner.to_ascii_lowercase()).collect();
        if owners.len() > 1 {
            return Err(CredentialError::unsupported(
                PROVIDER,
                format!(
                    "the repositories belong to {} owners ({}); an installation token covers one owner's, so ask once per owner",
                    owners.len(),
                    owners.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let jwt = self.jwt()?;
        let installation_id = match self.installation_id {
            Some(id) => id,
            None => self.find_installation(first, jwt.expose_secret()).await?,
        };
        let minted = self.mint(installation_id, request, jwt.expose_secret()).await?;
        if let Some(detail) = grant_mismatch(request, &minted) {
            let revoke_error = self.revoke_token(minted.token.expose_secret()).await.err().map(Box::new);
            return Err(CredentialError::ScopeMismatch { provider: PROVIDER, detail, revoke_error });
        }
        tracing::info!(
            run_id = %request.run_id, installation_id, repos = ?request.repos.iter().map(ToString::to_string).collect::<Vec<_>>(),
            access = ?request.access, expires_at = %minted.expires_at, "minted a GitHub App installation token"
        );
        let issued = Issued {
            provider: PROVIDER,
            host: self.git_host.clone(),
            username: GITHUB_TOKEN_USERNAME.to_owned(),
            expires_at: Some(minted.expires_at),
            scope: CredentialScope::Repositories { repos: request.repos.clone(), access: request.access },
            run_id: request.run_id.clone(),
            identity: request.identity.clone(),
            acts_as: ActsAs::GitHubInstallation { installation_id },
            revocation: Revocation::GitHubInstallationToken,
        };
        Ok(issued.with_token(minted.token))
    }

    async fn revoke(&self, issued: &IssuedCredential) -> Result<(), CredentialError> {
        if issued.provider != PROVIDER || issued.revocation != Revocation::GitHubInstallationToken {
            return Err(CredentialError::WrongProvider { provider: PROVIDER, issued_by: issued.provider });
        }
        self.revoke_token(issued.expose_token()).await?;
        tracing::info!(run_id = %issued.run_id, "revoked a GitHub App installation token");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_parse_and_serialize_as_github_shows_them() {
        assert_eq!(AppIssuer::parse(" 123456 "), AppIssuer::AppId(123456));
        assert_eq!(AppIssuer::parse("Iv23liABC"), AppIssuer::ClientId("Iv23liABC".into()));
        assert_eq!(serde_json::to_string(&AppIssuer::AppId(7)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&AppIssuer::ClientId("Iv1.x".into())).unwrap(), "\"Iv1.x\"");
    }

    #[test]
    fn a_key_that_is_not_pem_fails_at_construction_without_showing_itself() {
        let not_a_key = "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END RSA PRIVATE KEY-----\n";
        for pem in ["not pem at all", not_a_key] {
            let err = GitHubAppProvider::builder(AppIssuer::AppId(1), SecretString::from(pem)).build().unwrap_err();
            assert!(matches!(err, CredentialError::PrivateKey(_)), "{err:?}");
            let shown = format!("{err} {err:?} {}", oz_core::error::error_chain(&err));
            assert!(!shown.contains("bm90IGEga2V5IGF0IGFsbA") && !shown.contains("not pem at all"), "{shown}");
        }
    }
}
