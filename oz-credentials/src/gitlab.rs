//! GitLab project access tokens: one per run for the run's one project, expiring as early as GitLab
//! allows, and revoked when the run ends.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use reqwest::header::HeaderValue;
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::GitCredentialProvider;
use crate::error::{Action, CredentialError};
use crate::http::{self, Api, Call, HttpOptions};
use crate::issued::{ActsAs, CredentialScope, Issued, IssuedCredential, ProviderKind, Revocation};
use crate::request::{Access, CredentialRequest};

/// The user name git presents with a project access token (GitLab takes any non-empty one).
pub const GITLAB_TOKEN_USERNAME: &str = "oauth2";

const PROVIDER: ProviderKind = ProviderKind::GitLab;
/// GitLab refuses tokens that live longer than a year.
const MAX_MIN_LIFETIME: Duration = Duration::from_secs(364 * 24 * 3600);

/// A GitLab role, as a project access token's `access_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GitLabAccessLevel {
    /// 10.
    Guest,
    /// 15 (GitLab 17.7 and later).
    Planner,
    /// 20: can clone and fetch.
    Reporter,
    /// 30: can also push to unprotected branches.
    Developer,
    /// 40: can also push to protected branches that allow maintainers.
    Maintainer,
    /// 50.
    Owner,
}

impl GitLabAccessLevel {
    /// The number GitLab's API uses.
    pub fn value(self) -> u8 {
        match self {
            GitLabAccessLevel::Guest => 10,
            GitLabAccessLevel::Planner => 15,
            GitLabAccessLevel::Reporter => 20,
            GitLabAccessLevel::Developer => 30,
            GitLabAccessLevel::Maintainer => 40,
            GitLabAccessLevel::Owner => 50,
        }
    }
}

/// Sets up a [`GitLabProvider`].
#[must_use]
pub struct GitLabProviderBuilder {
    base_url: String,
    token: SecretString,
    git_host: Option<String>,
    read_level: GitLabAccessLevel,
    write_level: GitLabAccessLevel,
    min_lifetime: Duration,
    http: HttpOptions,
}

impl GitLabProviderBuilder {
    /// The git host the tokens are for: the base URL's host by default.
    pub fn git_host(mut self, host: impl Into<String>) -> Self {
        self.git_host = Some(host.into());
        self
    }

    /// The roles of read and of read-write tokens: Reporter and Developer by default (pushing to a
    /// protected branch may need Maintainer).
    pub fn access_levels(mut self, read: GitLabAccessLevel, write: GitLabAccessLevel) -> Self {
        self.read_level = read;
        self.write_level = write;
        self
    }

    /// The shortest life a token may have. GitLab's expiry is a date, and a token stops working at
    /// midnight UTC starting it; a token expires tomorrow unless that is closer than this (one
    /// hour by default), then the day after.
    pub fn min_lifetime(mut self, lifetime: Duration) -> Self {
        self.min_lifetime = lifetime;
        self
    }

    /// Timeouts, user agent and retries.
    pub fn http(mut self, options: HttpOptions) -> Self {
        self.http = options;
        self
    }

    /// Checks the configuration and sets up the HTTP client.
    pub fn build(self) -> Result<GitLabProvider, CredentialError> {
        let trimmed = self.base_url.trim().trim_end_matches('/');
        let api_root = if trimmed.ends_with("/api/v4") { trimmed.to_owned() } else { format!("{trimmed}/api/v4") };
        let api = Api::new(PROVIDER, &api_root, &self.http)?;
        let mut auth = HeaderValue::from_str(self.token.expose_secret())
            .ok()
            .filter(|_| !self.token.expose_secret().is_empty())
            .ok_or_else(|| {
                CredentialError::config(PROVIDER, "the GitLab token is empty or cannot travel in a header")
            })?;
        auth.set_sensitive(true);
        if self.min_lifetime > MAX_MIN_LIFETIME {
            return Err(CredentialError::config(PROVIDER, "the minimum token lifetime is longer than GitLab allows"));
        }
        let git_host = self.git_host.unwrap_or_else(|| http::host_of(api.base()));
        Ok(GitLabProvider {
            api,
            token: self.token,
            auth,
            git_host,
            read_level: self.read_level,
            write_level: self.write_level,
            min_lifetime: self.min_lifetime,
        })
    }
}

impl fmt::Debug for GitLabProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabProviderBuilder")
            .field("base_url", &self.base_url)
            .field("token", &"[REDACTED]")
            .field("git_host", &self.git_host)
            .field("min_lifetime", &self.min_lifetime)
            .finish()
    }
}

/// Creates a GitLab project access token per run.
///
/// The token reaches one project (`owner/repo`, sent URL-encoded as `owner%2Frepo`), with the
/// `read_repository` scope (and `write_repository` to push) and the configured role, and expires
/// on the earliest date GitLab allows (see [`GitLabProviderBuilder::min_lifetime`]).
/// [`revoke`](GitCredentialProvider::revoke) ends it. A request naming several projects is refused
/// ([`CredentialError::Unsupported`]): ask once per project, and let git pick the credential by
/// path.
///
/// The provider's own token must be allowed to create project access tokens on the project: a
/// Maintainer's (or an Owner's, or an administrator's) personal access token with the `api` scope.
/// The identity the run asked for is only recorded: the token is the project's bot user.
pub struct GitLabProvider {
    api: Api,
    token: SecretString,
    auth: HeaderValue,
    git_host: String,
    read_level: GitLabAccessLevel,
    write_level: GitLabAccessLevel,
    min_lifetime: Duration,
}

impl fmt::Debug for GitLabProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabProvider")
            .field("api_base", &self.api.base().as_str())
            .field("token", &"[REDACTED]")
            .field("git_host", &self.git_host)
            .field("read_level", &self.read_level)
            .field("write_level", &self.write_level)
            .field("min_lifetime", &self.min_lifetime)
            .finish()
    }
}

/// `201` of `POST /projects/:id/access_tokens`.
#[derive(Deserialize)]
struct CreatedToken {
    id: u64,
    #[serde(deserialize_with = "http::secret")]
    token: SecretString,
    #[serde(default)]
    expires_at: Option<Date>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    access_level: Option<u8>,
    #[serde(default)]
    user_id: Option<u64>,
}

impl GitLabProvider {
    /// A provider for the GitLab at `base_url` (the instance root, or its `/api/v4`), creating
    /// tokens with `token` (sent as `PRIVATE-TOKEN`).
    pub fn builder(base_url: impl Into<String>, token: SecretString) -> GitLabProviderBuilder {
        GitLabProviderBuilder {
            base_url: base_url.into(),
            token,
            git_host: None,
            read_level: GitLabAccessLevel::Reporter,
            write_level: GitLabAccessLevel::Developer,
            min_lifetime: Duration::from_secs(3600),
            http: HttpOptions::default(),
        }
    }

    /// The git host its tokens are for.
    pub fn git_host(&self) -> &str {
        &self.git_host
    }

    fn authed(&self, builder: RequestBuilder) -> RequestBuilder {
        builder.header("PRIVATE-TOKEN", self.auth.clone())
    }

    async fn revoke_token(&self, project: &str, token_id: u64) -> Result<(), CredentialError> {
        let call = Call {
            action: Action::RevokeProjectToken,
            method: Method::DELETE,
            url: self.api.url(&["projects", project, "access_tokens", &token_id.to_string()]),
            secrets: &[self.token.expose_secret()],
        };
        self.api.send(call, |b| self.authed(b)).await.map(drop)
    }
}

/// The scopes a token needs for `access`.
fn scopes(access: Access) -> &'static [&'static str] {
    match access {
        Access::Read => &["read_repository"],
        Access::ReadWrite => &["read_repository", "write_repository"],
    }
}

/// The earliest expiry date that leaves the token at least `min_lifetime`: tomorrow (UTC), or
/// later when midnight is closer than that.
fn expiry_date(now: Timestamp, min_lifetime: Duration) -> Result<Date, jiff::Error> {
    now.checked_add(min_lifetime)?.to_zoned(TimeZone::UTC).date().tomorrow()
}

/// When a token expiring on `date` stops working: midnight UTC starting that date.
fn expiry_instant(date: Date) -> Result<Timestamp, jiff::Error> {
    date.to_zoned(TimeZone::UTC).map(|z| z.timestamp())
}

#[async_trait]
impl GitCredentialProvider for GitLabProvider {
    fn kind(&self) -> ProviderKind {
        PROVIDER
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, CredentialError> {
        if request.repos.len() > 1 {
            return Err(CredentialError::unsupported(
                PROVIDER,
                format!(
                    "a project access token covers one project and the request names {}; ask once per project",
                    request.repos.len()
                ),
            ));
        }
        let repo = request.check_repos(PROVIDER, 1)?;
        let project = repo.to_string();
        let bad_time = |e: jiff::Error| CredentialError::config(PROVIDER, format!("no expiry date: {e}"));
        let date = expiry_date(Timestamp::now(), self.min_lifetime).map_err(bad_time)?;
        let level = match request.access {
            Access::Read => self.read_level,
            Access::ReadWrite => self.write_level,
        };
        let body = serde_json::json!({
            "name": format!("oz-run-{}", request.run_id),
            "scopes": scopes(request.access),
            "access_level": level.value(),
            "expires_at": date.to_string(),
        });
        let call = Call {
            action: Action::CreateProjectToken,
            method: Method::POST,
            url: self.api.url(&["projects", &project, "access_tokens"]),
            secrets: &[self.token.expose_secret()],
        };
        let answer = self.api.send(call, |b| self.authed(b).json(&body)).await?;
        let created: CreatedToken = self.api.decode(Action::CreateProjectToken, answer)?;

        let granted: BTreeSet<&str> = created.scopes.iter().map(String::as_str).collect();
        let asked: BTreeSet<&str> = scopes(request.access).iter().copied().collect();
        let mismatch = if granted != asked {
            Some(format!("scopes {granted:?} for {asked:?}"))
        } else if created.access_level.is_some_and(|l| l != level.value()) {
            Some(format!("access level {:?} for {}", created.access_level, level.value()))
        } else {
            None
        };
        if let Some(detail) = mismatch {
            let revoke_error = self.revoke_token(&project, created.id).await.err().map(Box::new);
            return Err(CredentialError::ScopeMismatch { provider: PROVIDER, detail, revoke_error });
        }
        let expires_at = expiry_instant(created.expires_at.unwrap_or(date)).map_err(bad_time)?;
        tracing::info!(
            run_id = %request.run_id, project, token_id = created.id, access = ?request.access, %expires_at,
            "created a GitLab project access token"
        );
        let issued = Issued {
            provider: PROVIDER,
            host: self.git_host.clone(),
            username: GITLAB_TOKEN_USERNAME.to_owned(),
            expires_at: Some(expires_at),
            scope: CredentialScope::Repositories { repos: vec![repo.clone()], access: request.access },
            run_id: request.run_id.clone(),
            identity: request.identity.clone(),
            acts_as: ActsAs::GitLabProjectBot { user_id: created.user_id },
            revocation: Revocation::GitLabProjectToken { project, token_id: created.id },
        };
        Ok(issued.with_token(created.token))
    }

    async fn revoke(&self, issued: &IssuedCredential) -> Result<(), CredentialError> {
        let (PROVIDER, Revocation::GitLabProjectToken { project, token_id }) = (issued.provider, &issued.revocation)
        else {
            return Err(CredentialError::WrongProvider { provider: PROVIDER, issued_by: issued.provider });
        };
        self.revoke_token(project, *token_id).await?;
        tracing::info!(run_id = %issued.run_id, project, token_id, "revoked a GitLab project access token");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_tomorrow_unless_midnight_is_too_close() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let date = |s: &str| s.parse::<Date>().unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(expiry_date(at("2026-03-10T12:00:00Z"), hour).unwrap(), date("2026-03-11"));
        assert_eq!(expiry_date(at("2026-03-10T22:59:59Z"), hour).unwrap(), date("2026-03-11"));
        assert_eq!(expiry_date(at("2026-03-10T23:30:00Z"), hour).unwrap(), date("2026-03-12"));
        assert_eq!(expiry_date(at("2026-03-10T23:30:00Z"), Duration::ZERO).unwrap(), date("2026-03-11"));
        assert_eq!(expiry_date(at("2026-12-31T10:00:00Z"), hour).unwrap(), date("2027-01-01"));
        assert_eq!(expiry_instant(date("2026-03-11")).unwrap(), at("2026-03-11T00:00:00Z"));
    }

    #[test]
    fn a_bad_configuration_is_refused_at_construction() {
        let build = |url: &str, token: &str| GitLabProvider::builder(url, SecretString::from(token)).build();
        assert_eq!(
            build("https://gitlab.example.com/", "t").unwrap().api.base().as_str(),
            "https://gitlab.example.com/api/v4"
        );
        assert_eq!(build("https://gitlab.example.com/api/v4", "t").unwrap().git_host(), "gitlab.example.com");
        for (url, token) in [
            ("http://gitlab.example.com", "t"),
            ("https://gitlab.example.com", ""),
            ("https://gitlab.example.com", "a\nb"),
        ] {
            let err = build(url, token).unwrap_err();
            assert!(matches!(err, CredentialError::Config { .. }), "{err}");
        }
    }
}
