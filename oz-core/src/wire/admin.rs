//! The admin API (`/api/v1/admin/...`, our extension): teams, users and service accounts, their
//! roles, and credentials (API keys and worker credentials). A credential's secret appears once, in
//! the answer that creates or rotates it; nothing else ever returns it.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a principal may do in its team. Ordered: every role may do what the ones below it may.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the team's runs, environments, schedules and workers (never secret values).
    Viewer,
    /// And create, steer and cancel runs; manage environments and schedules.
    Member,
    /// And manage users, credentials, secrets, integrations and workers.
    Admin,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(crate::Error::invalid("role", format!("{other:?} is not one of viewer, member, admin"))),
        }
    }
}

/// A person, or a service account (a principal for automation, with keys but no person behind it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    #[default]
    User,
    /// Automation.
    ServiceAccount,
}

/// `POST /admin/users`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// A display name.
    pub name: String,
    /// Its role in the team.
    pub role: Role,
    /// A person (default) or a service account.
    #[serde(default)]
    pub kind: PrincipalKind,
}

/// `PUT /admin/users/{id}`: what changes (absent fields stay).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// A new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Disable (every key of the user is refused) or enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// A user or service account.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserItem {
    /// Its id.
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// Person or service account.
    pub kind: PrincipalKind,
    /// Its role.
    pub role: Role,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When it was made.
    pub created_at: Timestamp,
}

/// `{"users": [...]}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// The team's users, oldest first.
    pub users: Vec<UserItem>,
}

/// What a credential is for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The REST API (and the CLI, the SDK), as its user with its role.
    #[default]
    Api,
    /// A worker: opens the worker WebSocket as one of its worker ids, and nothing else.
    Worker,
}

/// `POST /admin/keys`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A name to recognize it by (`ci`, `laptop`, `worker-eu-1`).
    #[serde(default)]
    pub name: String,
    /// API key (default) or worker credential.
    #[serde(default)]
    pub kind: KeyKind,
    /// The user it acts as (API keys; default: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// At most this role (API keys; default and ceiling: the user's role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The worker ids it may connect as (worker credentials; at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_ids: Vec<String>,
    /// Seconds until it expires (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A credential, without its secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyItem {
    /// Its public id (the part of the key before the secret).
    pub id: String,
    /// Its team.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// API key or worker credential.
    pub kind: KeyKind,
    /// The user it acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Its role ceiling, if narrower than its user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The worker ids it may connect as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_ids: Vec<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// `{"keys": [...]}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The team's credentials, oldest first.
    pub keys: Vec<KeyItem>,
}

/// The answer to creating or rotating a credential: the only time its secret is shown.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The whole credential (`oz_<id>.<secret>`): store it now, it is not shown again.
    pub key: String,
    /// What it is.
    pub item: KeyItem,
}

impl fmt::Debug for KeyCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCreated").field("key", &"[REDACTED]").field("item", &self.item).finish()
    }
}

/// `POST /admin/teams` (a server admin's key only).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    /// Its name.
    pub name: String,
}

/// A new team with its first admin and that admin's key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamCreated {
    /// The team's id.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// Its first admin.
    pub admin: UserItem,
    /// The admin's API key (shown once).
    pub key: KeyCreated,
}

/// How a team's runs get git credentials for one git host (`PUT /admin/git-providers/{host}`):
/// minted per run, scoped to the run's repositories and revoked when it ends (GitHub App, GitLab), or
/// a team secret used as is (static, the weakest). Secrets are named, never given here.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GitProvider {
    /// A GitHub App: an installation token per run, for exactly the run's repositories.
    GithubApp {
        /// The App's client id (`Iv1...`) or numeric app id.
        app: String,
        /// The team secret holding the App's private key (PEM).
        private_key_secret: String,
        /// The installation to use; default: the one installed on the repositories' owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installation_id: Option<u64>,
        /// The API root (default `https://api.github.com`; GitHub Enterprise: `https://host/api/v3`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_url: Option<String>,
    },
    /// GitLab: a project access token per run.
    Gitlab {
        /// The instance (`https://gitlab.com`).
        url: String,
        /// The team secret holding a token that may create project access tokens.
        token_secret: String,
    },
    /// A team secret (a personal access token) used as is: not scoped, not revoked by us.
    Static {
        /// The team secret holding the token.
        token_secret: String,
        /// The user name git presents (default `x-access-token`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
    },
}

impl GitProvider {
    /// The team secrets it names.
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            GitProvider::GithubApp { private_key_secret, .. } => vec![private_key_secret],
            GitProvider::Gitlab { token_secret, .. } | GitProvider::Static { token_secret, .. } => vec![token_secret],
        }
    }
}

/// A configured git provider.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitProviderItem {
    /// The git host it serves (`github.com`, `gitlab.example.com:8443`).
    pub host: String,
    /// How.
    pub provider: GitProvider,
}

/// `{"git_providers": [...]}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitProviderList {
    /// The team's providers, by host.
    pub git_providers: Vec<GitProviderItem>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_are_ordered_and_read_by_name() {
        assert!(Role::Viewer < Role::Member && Role::Member < Role::Admin);
        assert_eq!("Member".parse::<Role>().unwrap(), Role::Member);
        assert!("owner".parse::<Role>().unwrap_err().to_string().contains("viewer, member, admin"));
        assert_eq!(serde_json::to_string(&Role::Admin).unwrap(), "\"admin\"");
    }

    #[test]
    fn a_created_key_hides_its_secret_from_debug() {
        let created = KeyCreated {
            key: "oz_0123456789abcdef.s3cr3t".into(),
            item: KeyItem {
                id: "0123456789abcdef".into(),
                team_id: "t".into(),
                name: "ci".into(),
                kind: KeyKind::Api,
                user_id: None,
                role: None,
                worker_ids: vec![],
                created_at: Timestamp::UNIX_EPOCH,
                expires_at: None,
                revoked_at: None,
            },
        };
        assert!(!format!("{created:?}").contains("s3cr3t"));
    }
}
