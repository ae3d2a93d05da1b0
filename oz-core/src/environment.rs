//! Environments: the reusable recipe of a sandbox (image, repos, setup commands, variables) and its validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::image::ImageRef;
use crate::validate;

/// At most this many repos per environment.
pub const MAX_REPOS: usize = 50;
/// At most this many setup commands per environment.
pub const MAX_SETUP_COMMANDS: usize = 100;
/// The longest single setup command, in bytes.
pub const MAX_SETUP_COMMAND_LEN: usize = 16 * 1024;
/// At most this many environment variables.
pub const MAX_ENV_VARS: usize = 200;
/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// A GitHub-style repository: `{owner, repo}` on the wire, `owner/repo` in text.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepoRef {
    /// The user or organisation.
    pub owner: String,
    /// The repository name; also the directory it is cloned into.
    pub repo: String,
}

impl RepoRef {
    /// Builds and validates a repo reference.
    pub fn new(owner: impl Into<String>, repo: impl Into<String>) -> Result<Self, Error> {
        let r = RepoRef { owner: owner.into(), repo: repo.into() };
        r.validate()?;
        Ok(r)
    }

    /// Parses `owner/repo`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text.split_once('/') {
            Some((owner, repo)) => Self::new(owner, repo),
            None => Err(Error::invalid("repo", format!("{text:?} must look like owner/name"))),
        }
    }

    /// Checks the owner (GitHub's rule: 1-39 letters, digits and single inner hyphens) and the name
    /// (1-100 of letters, digits, `.`, `_`, `-`; not `.` or `..`; no `.git` suffix), which rules out
    /// any path traversal when the name becomes a directory.
    pub fn validate(&self) -> Result<(), Error> {
        let owner = &self.owner;
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !owner.starts_with('-')
            && !owner.ends_with('-')
            && !owner.contains("--");
        if !owner_ok {
            return Err(Error::invalid(
                "owner",
                format!("{owner:?} must be 1-39 letters, digits or single inner hyphens"),
            ));
        }
        let repo = &self.repo;
        let repo_ok = !repo.is_empty()
            && repo.len() <= 100
            && repo.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && repo != "."
            && repo != ".."
            && !repo.ends_with(".git");
        if !repo_ok {
            return Err(Error::invalid(
                "repo",
                format!(
                    "{repo:?} must be 1-100 of letters, digits, '.', '_', '-', not '.' or '..', without a .git suffix"
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.repo)
    }
}

/// The configuration of an environment, as the Oz API's `CloudEnvironment.config`, plus `env_vars`
/// (our extension; omitted from JSON when empty so Oz clients see the shape they know).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentConfig {
    /// A short human name.
    pub name: String,
    /// What the environment is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The base image; absent means the backend default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    /// Repos cloned into the sandbox, each into a directory named after the repo.
    #[serde(default)]
    pub github_repos: Vec<RepoRef>,
    /// Shell commands run in order after cloning, before the agent starts.
    #[serde(default)]
    pub setup_commands: Vec<String>,
    /// Variables added to the agent's environment: settings, visible to every member (secrets go in
    /// [`EnvironmentConfig::secrets`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Our extension: variables whose values are team secrets, `{"NPM_TOKEN": "npm-token"}` (the
    /// variable, the secret's name). A run's runner fetches the values with its workload token; they
    /// never appear in the environment's config, the assignment or the sandbox's spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl EnvironmentConfig {
    /// Validates every field, returning the first problem with its field path
    /// (`github_repos[1].owner`, `setup_commands[0]`, ...).
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        validate::text("name", &self.name, MAX_NAME_LEN, false)?;
        if let Some(description) = &self.description {
            validate::text("description", description, MAX_DESCRIPTION_LEN, true)?;
        }
        if let Some(image) = self.docker_image.as_deref().filter(|s| !s.trim().is_empty()) {
            ImageRef::parse(image)?;
        }
        if self.github_repos.len() > MAX_REPOS {
            return Err(Error::invalid(
                "github_repos",
                format!("has {} entries; the limit is {MAX_REPOS}", self.github_repos.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, repo) in self.github_repos.iter().enumerate() {
            repo.validate().map_err(|e| e.within(&format!("github_repos[{i}]")))?;
            if !seen.insert(repo.repo.to_ascii_lowercase()) {
                return Err(Error::invalid(
                    format!("github_repos[{i}]"),
                    format!("another repo is also named {:?}; each is cloned into a directory of that name", repo.repo),
                ));
            }
        }
        if self.setup_commands.len() > MAX_SETUP_COMMANDS {
            return Err(Error::invalid(
                "setup_commands",
                format!("has {} entries; the limit is {MAX_SETUP_COMMANDS}", self.setup_commands.len()),
            ));
        }
        for (i, command) in self.setup_commands.iter().enumerate() {
            let field = format!("setup_commands[{i}]");
            if command.trim().is_empty() {
                return Err(Error::invalid(field, "must not be empty"));
            }
            validate::text(&field, command, MAX_SETUP_COMMAND_LEN, true)?;
        }
        if self.env_vars.len() > MAX_ENV_VARS {
            return Err(Error::invalid(
                "env_vars",
                format!("has {} entries; the limit is {MAX_ENV_VARS}", self.env_vars.len()),
            ));
        }
        for (name, value) in &self.env_vars {
            validate::env_name("env_vars", name)?;
            validate::env_value(&format!("env_vars.{name}"), value)?;
        }
        if self.secrets.len() > MAX_ENV_VARS {
            return Err(Error::invalid(
                "secrets",
                format!("has {} entries; the limit is {MAX_ENV_VARS}", self.secrets.len()),
            ));
        }
        for (variable, secret) in &self.secrets {
            validate::env_name("secrets", variable)?;
            crate::wire::secrets::validate_secret_name(&format!("secrets.{variable}"), secret)?;
            if self.env_vars.contains_key(variable) {
                return Err(Error::invalid(format!("secrets.{variable}"), "is also in env_vars; keep one"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnvironmentConfig {
        EnvironmentConfig {
            name: "api".into(),
            description: Some("the API service".into()),
            docker_image: Some("ghcr.io/acme/api-env:3".into()),
            github_repos: vec![RepoRef::new("acme", "api").unwrap(), RepoRef::new("acme", "web.site").unwrap()],
            setup_commands: vec!["make deps".into()],
            env_vars: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
            secrets: BTreeMap::from([("NPM_TOKEN".into(), "npm-token".into())]),
        }
    }

    #[test]
    fn a_good_environment_passes() {
        sample().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut EnvironmentConfig);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.name = " ".into(), "invalid name"),
            (|e| e.name = "a\u{1b}[31m".into(), "invalid name"),
            (|e| e.docker_image = Some("../../etc".into()), "invalid docker_image"),
            (|e| e.github_repos[1].repo = "..".into(), "invalid github_repos[1].repo"),
            (|e| e.github_repos[0].owner = "a/b".into(), "invalid github_repos[0].owner"),
            (|e| e.github_repos[1].repo = "API".into(), "invalid github_repos[1]"),
            (|e| e.setup_commands.push("ok\0".into()), "invalid setup_commands[1]"),
            (|e| e.setup_commands.push("x".repeat(MAX_SETUP_COMMAND_LEN + 1)), "invalid setup_commands[1]"),
            (|e| e.setup_commands = vec!["x".into(); MAX_SETUP_COMMANDS + 1], "invalid setup_commands"),
            (
                |e| {
                    e.env_vars.insert("BAD-NAME".into(), "v".into());
                },
                "invalid env_vars",
            ),
            (
                |e| {
                    e.env_vars.insert("K".into(), "v\0".into());
                },
                "invalid env_vars.K",
            ),
        ];
        for (mutate, expected) in cases {
            let mut env = sample();
            mutate(&mut env);
            let err = env.validate().unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
        }
    }

    #[test]
    fn repo_grammar() {
        for ok in ["acme/api", "a/b", "A-b/.github", "x/y_z.rs", "octo-org/hello-world"] {
            RepoRef::parse(ok).unwrap();
        }
        for bad in [
            "acme",
            "/api",
            "acme/",
            "-a/b",
            "a-/b",
            "a--b/c",
            "a/..",
            "a/.",
            "a/b/c",
            "a/b.git",
            "a/b c",
            "a/b\0",
            &format!("{}/x", "a".repeat(40)),
        ] {
            assert!(RepoRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_shape_matches_oz_and_tolerates_unknown_fields() {
        let json = serde_json::json!({
            "name": "api", "docker_image": "ubuntu:22.04",
            "github_repos": [{"owner": "acme", "repo": "api"}],
            "setup_commands": ["make"], "future_field": 1
        });
        let env: EnvironmentConfig = serde_json::from_value(json).unwrap();
        let back = serde_json::to_value(&env).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"name": "api", "docker_image": "ubuntu:22.04",
                "github_repos": [{"owner": "acme", "repo": "api"}], "setup_commands": ["make"]})
        );
    }
}
