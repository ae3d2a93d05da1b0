//! Which team secrets a run gets, under which variables: those its environment names (`secrets`) and
//! its agent config's `harness_auth_secrets`. Checked where runs and environments are made and again
//! when a run resolves, since members choose the names: a secret must exist, and a secret a git
//! provider names (a GitHub App's private key, a GitLab token that mints tokens) is never handed to a
//! run, whatever names it; runs get what the provider mints from it instead.

use oz_core::environment::EnvironmentConfig;
use oz_core::wire::api::AgentConfig;

use crate::error::ApiError;
use crate::store::{Store, StoreError};

/// The variables `harness_auth_secrets` fills for a harness: `{claude_auth_secret_name: ...}` is
/// `ANTHROPIC_API_KEY`, `{codex_auth_secret_name: ...}` is `OPENAI_API_KEY`.
const HARNESS_AUTH_VARIABLES: [(&str, &str); 2] =
    [("claude_auth_secret_name", "ANTHROPIC_API_KEY"), ("codex_auth_secret_name", "OPENAI_API_KEY")];

/// One secret a run gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Where the name was given, for messages (`secrets.NPM_TOKEN`).
    pub field: String,
    /// The variable it sets.
    pub variable: String,
    /// The team secret's name.
    pub name: String,
}

/// The environment's references.
pub fn of_environment(environment: &EnvironmentConfig) -> Vec<SecretReference> {
    environment
        .secrets
        .iter()
        .map(|(variable, name)| SecretReference {
            field: format!("secrets.{variable}"),
            variable: variable.clone(),
            name: name.clone(),
        })
        .collect()
}

/// The agent config's references (`harness_auth_secrets`).
pub fn of_config(config: &AgentConfig) -> Vec<SecretReference> {
    let Some(auth) = config.harness_auth_secrets.as_ref().and_then(|a| a.as_object()) else { return Vec::new() };
    HARNESS_AUTH_VARIABLES
        .iter()
        .filter_map(|(field, variable)| {
            auth.get(*field).and_then(|n| n.as_str()).map(|name| SecretReference {
                field: format!("config.harness_auth_secrets.{field}"),
                variable: (*variable).to_owned(),
                name: name.to_owned(),
            })
        })
        .collect()
}

/// Every reference must name a secret of the team that no git provider and no integration names.
pub async fn check(store: &dyn Store, team_id: &str, references: &[SecretReference]) -> Result<(), Refused> {
    if references.is_empty() {
        return Ok(());
    }
    let providers = store.git_providers(team_id).await?;
    let integrations = store.integrations(team_id).await?;
    for reference in references {
        if let Some((host, _)) = providers.iter().find(|(_, p)| p.secret_names().contains(&reference.name.as_str())) {
            return Err(Refused::ProviderSecret {
                field: reference.field.clone(),
                name: reference.name.clone(),
                host: host.clone(),
            });
        }
        if let Some(integration) = integrations
            .iter()
            .find(|i| i.provider.as_ref().is_some_and(|p| p.secret_names().iter().any(|(_, n)| *n == reference.name)))
        {
            return Err(Refused::IntegrationSecret {
                field: reference.field.clone(),
                name: reference.name.clone(),
                integration: integration.name.clone(),
            });
        }
        if store.secret(team_id, &reference.name).await?.is_none() {
            return Err(Refused::Missing { field: reference.field.clone(), name: reference.name.clone() });
        }
    }
    Ok(())
}

/// Why a reference is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The team has no such secret.
    #[error("{field}: the team has no secret {name:?} (an admin sets it with PUT /secrets/{name})")]
    Missing {
        /// Where it was named.
        field: String,
        /// The name.
        name: String,
    },
    /// A git provider's secret.
    #[error("{field}: the secret {name:?} belongs to the git provider of {host}; it is never handed to a run")]
    ProviderSecret {
        /// Where it was named.
        field: String,
        /// The name.
        name: String,
        /// The provider's git host.
        host: String,
    },
    /// An integration's credential (a Slack token, a Linear key, a GitHub App's key).
    #[error("{field}: the secret {name:?} belongs to the integration {integration:?}; it is never handed to a run")]
    IntegrationSecret {
        /// Where it was named.
        field: String,
        /// The name.
        name: String,
        /// The integration's name.
        integration: String,
    },
    /// The store failed.
    #[error("the store failed while checking secret references: {0}")]
    Store(#[from] StoreError),
}

impl From<Refused> for ApiError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Store(e) => e.into(),
            refused => ApiError::invalid(refused.to_string()),
        }
    }
}
