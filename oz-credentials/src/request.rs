//! What a run asks for: its repositories, the access it needs and whose identity it acts for.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use oz_core::environment::RepoRef;
use oz_core::run::RunId;
use serde::{Deserialize, Serialize};

use crate::error::CredentialError;
use crate::issued::ProviderKind;

/// What the run does with its repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Clone and fetch.
    Read,
    /// Clone, fetch and push.
    ReadWrite,
}

/// Whose identity a run's credentials carry: the Oz API's `credential_strategy` (`CREATOR` or
/// `EXECUTOR`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CredentialStrategy {
    /// The user who created the run (or its schedule, or its integration).
    #[default]
    Creator,
    /// The user the run executes for.
    Executor,
}

impl CredentialStrategy {
    /// The wire spelling, `CREATOR` or `EXECUTOR`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStrategy::Creator => "CREATOR",
            CredentialStrategy::Executor => "EXECUTOR",
        }
    }
}

impl fmt::Display for CredentialStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`CredentialStrategy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a credential strategy (CREATOR or EXECUTOR)")]
pub struct UnknownStrategy(pub String);

impl FromStr for CredentialStrategy {
    type Err = UnknownStrategy;
    /// Any case, as the API's other enums.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("CREATOR") {
            Ok(CredentialStrategy::Creator)
        } else if s.eq_ignore_ascii_case("EXECUTOR") {
            Ok(CredentialStrategy::Executor)
        } else {
            Err(UnknownStrategy(s.to_owned()))
        }
    }
}

/// A user of the team, as the control plane knows them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunUser {
    /// The control plane's user id (the key of a per-user secret).
    pub id: String,
    /// Their login on the git host, when known (recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
}

impl RunUser {
    /// A user known by id only.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into(), login: None }
    }

    /// With their login on the git host.
    pub fn with_login(mut self, login: impl Into<String>) -> Self {
        self.login = Some(login.into());
        self
    }
}

/// Whose identity the run acts for: the strategy and the users it picks from.
///
/// How each provider uses it: a GitHub App token is always the App's installation, whoever asks,
/// so the identity is only recorded; a GitLab project access token is the project's bot user, so
/// likewise; the static provider picks the acting user's own secret when the team has configured
/// one for them, the team's otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Which of the two users acts.
    pub strategy: CredentialStrategy,
    /// The run's creator, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<RunUser>,
    /// The run's executor, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<RunUser>,
}

impl RunIdentity {
    /// The user the strategy picks; `None` when that user is not known (a run made by a schedule
    /// with no executor, say), in which case only team-wide secrets apply.
    pub fn acting_user(&self) -> Option<&RunUser> {
        match self.strategy {
            CredentialStrategy::Creator => self.creator.as_ref(),
            CredentialStrategy::Executor => self.executor.as_ref(),
        }
    }
}

/// What a run asks a provider for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The run, for the token's name (GitLab) and for auditing.
    pub run_id: RunId,
    /// The repositories the credential must reach, and only those: the environment's
    /// `github_repos`.
    pub repos: Vec<RepoRef>,
    /// Read, or read and write (to push).
    pub access: Access,
    /// Whose identity the run acts for.
    pub identity: RunIdentity,
}

impl CredentialRequest {
    /// A request with the default identity (`CREATOR`, no user known).
    pub fn new(run_id: RunId, repos: impl IntoIterator<Item = RepoRef>, access: Access) -> Self {
        Self { run_id, repos: repos.into_iter().collect(), access, identity: RunIdentity::default() }
    }

    /// With the identity the run acts for.
    pub fn with_identity(mut self, identity: RunIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// Checks the repositories for a provider that scopes its tokens: at least one, at most `max`,
    /// each valid, none twice (names compared as GitHub and GitLab do, without case). Returns the
    /// first.
    pub(crate) fn check_repos(&self, provider: ProviderKind, max: usize) -> Result<&RepoRef, CredentialError> {
        let Some(first) = self.repos.first() else {
            return Err(CredentialError::unsupported(
                provider,
                "the request names no repositories, and a token for no repository in particular would reach them all",
            ));
        };
        if self.repos.len() > max {
            return Err(CredentialError::unsupported(
                provider,
                format!("the request names {} repositories; one token covers at most {max}", self.repos.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for repo in &self.repos {
            repo.validate().map_err(|e| CredentialError::unsupported(provider, format!("{repo}: {e}")))?;
            if !seen.insert((repo.owner.to_ascii_lowercase(), repo.repo.to_ascii_lowercase())) {
                return Err(CredentialError::unsupported(provider, format!("{repo} is named twice")));
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strategy_picks_its_user_and_parses_in_any_case() {
        let mut identity = RunIdentity {
            strategy: "executor".parse().unwrap(),
            creator: Some(RunUser::new("u-creator")),
            executor: Some(RunUser::new("u-exec").with_login("octocat")),
        };
        assert_eq!(identity.acting_user().map(|u| u.id.as_str()), Some("u-exec"));
        identity.strategy = CredentialStrategy::Creator;
        assert_eq!(identity.acting_user().map(|u| u.id.as_str()), Some("u-creator"));
        identity.creator = None;
        assert_eq!(identity.acting_user(), None);
        assert!("OWNER".parse::<CredentialStrategy>().is_err());
        assert_eq!(serde_json::to_string(&CredentialStrategy::Executor).unwrap(), "\"EXECUTOR\"");
        assert_eq!(CredentialStrategy::Creator.to_string(), "CREATOR");
    }

    #[test]
    fn scoped_requests_need_distinct_valid_repos() {
        let run = RunId::parse("run-1").unwrap();
        let repo = |s: &str| RepoRef::parse(s).unwrap();
        let check = |repos: Vec<RepoRef>| {
            CredentialRequest::new(run.clone(), repos, Access::Read).check_repos(ProviderKind::GitHubApp, 2).map(drop)
        };
        check(vec![repo("acme/api"), repo("acme/web")]).unwrap();
        for (repos, expected) in [
            (vec![], "names no repositories"),
            (vec![repo("acme/a"), repo("acme/b"), repo("acme/c")], "at most 2"),
            (vec![repo("acme/api"), repo("ACME/Api")], "named twice"),
            (vec![RepoRef { owner: "acme".into(), repo: "..".into() }], "acme/.."),
        ] {
            let err = check(repos).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
