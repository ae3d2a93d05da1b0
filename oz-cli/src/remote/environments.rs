//! `oz environment create|list|get|update|delete`.

use std::path::PathBuf;
use std::process::ExitCode;

use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::wire::api::CloudEnvironment;

use super::output::Printer;
use super::{ApiOpts, CliError, key_value};

/// What an environment holds; on `update`, only what is given changes (lists given replace the old).
#[derive(Debug, clap::Args)]
pub struct EnvironmentFields {
    /// A description.
    #[arg(long)]
    pub description: Option<String>,
    /// The image its tasks run in (e.g. debian:bookworm).
    #[arg(long)]
    pub docker_image: Option<String>,
    /// A repository to clone, as owner/name (repeatable).
    #[arg(long = "repo", value_name = "OWNER/NAME")]
    pub repos: Vec<String>,
    /// A setup command, run in order after cloning (repeatable).
    #[arg(long = "setup-command", value_name = "COMMAND")]
    pub setup_commands: Vec<String>,
    /// An environment variable for its tasks (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub env_vars: Vec<(String, String)>,
}

impl EnvironmentFields {
    fn apply(self, config: &mut EnvironmentConfig) -> Result<(), CliError> {
        if let Some(v) = self.description {
            config.description = Some(v);
        }
        if let Some(v) = self.docker_image {
            config.docker_image = Some(v);
        }
        if !self.repos.is_empty() {
            config.github_repos = self
                .repos
                .iter()
                .map(|r| {
                    let (owner, name) = r
                        .split_once('/')
                        .ok_or_else(|| CliError::Usage(format!("--repo {r:?}: expected OWNER/NAME")))?;
                    RepoRef::new(owner, name).map_err(|e| CliError::Usage(format!("--repo {r:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if !self.setup_commands.is_empty() {
            config.setup_commands = self.setup_commands;
        }
        config.env_vars.extend(self.env_vars);
        Ok(())
    }
}

/// `oz environment ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EnvironmentCommand {
    /// Registers an environment, from options or from a JSON file of its config.
    Create {
        /// Its name (required unless the file has one).
        #[arg(long)]
        name: Option<String>,
        /// A JSON file with the whole config; options given too override it.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// The rest of the config.
        #[command(flatten)]
        fields: EnvironmentFields,
    },
    /// Lists environments.
    List,
    /// Shows one environment.
    Get {
        /// The environment id.
        id: String,
    },
    /// Changes an environment: only the options given change.
    Update {
        /// The environment id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Drop every environment variable before applying `--env`.
        #[arg(long)]
        clear_env: bool,
        /// The rest of the config.
        #[command(flatten)]
        fields: EnvironmentFields,
    },
    /// Deletes an environment.
    Delete {
        /// The environment id.
        id: String,
    },
}

/// Renders an environment for people (variable values are not shown).
pub fn describe_environment(e: &CloudEnvironment) -> String {
    let c = &e.config;
    let mut lines = vec![format!("environment  {}", e.uid), format!("name         {}", c.name)];
    if let Some(d) = &c.description {
        lines.push(format!("description  {d}"));
    }
    if let Some(i) = &c.docker_image {
        lines.push(format!("image        {i}"));
    }
    for r in &c.github_repos {
        lines.push(format!("repo         {}/{}", r.owner, r.repo));
    }
    for s in &c.setup_commands {
        lines.push(format!("setup        {s}"));
    }
    if !c.env_vars.is_empty() {
        lines.push(format!("env          {}", c.env_vars.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    lines.join("\n")
}

fn environment_row(e: &CloudEnvironment) -> Vec<String> {
    let repos: Vec<String> = e.config.github_repos.iter().map(|r| format!("{}/{}", r.owner, r.repo)).collect();
    vec![e.uid.clone(), e.config.name.clone(), e.config.docker_image.clone().unwrap_or_default(), repos.join(",")]
}

/// Runs `oz environment ...`.
pub async fn run(command: EnvironmentCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    let environments = client.environments();
    match command {
        EnvironmentCommand::Create { name, from_file, fields } => {
            let mut config = match &from_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| CliError::Usage(format!("--from-file {}: {e}", path.display())))?;
                    serde_json::from_str::<EnvironmentConfig>(&text)
                        .map_err(|e| CliError::Usage(format!("--from-file {}: {e}", path.display())))?
                }
                None => EnvironmentConfig::default(),
            };
            if let Some(n) = name {
                config.name = n;
            }
            if config.name.is_empty() {
                return Err(CliError::Usage("--name is required (or a \"name\" in --from-file)".into()));
            }
            fields.apply(&mut config)?;
            printer.item(&environments.create(&config).await?, describe_environment)?;
        }
        EnvironmentCommand::List => {
            let all = environments.list().await?;
            printer.list(&all, &["ENVIRONMENT", "NAME", "IMAGE", "REPOS"], environment_row)?;
        }
        EnvironmentCommand::Get { id } => printer.item(&environments.get(&id).await?, describe_environment)?,
        EnvironmentCommand::Update { id, name, clear_env, fields } => {
            let mut config = environments.get(&id).await?.config;
            if let Some(n) = name {
                config.name = n;
            }
            if clear_env {
                config.env_vars.clear();
            }
            fields.apply(&mut config)?;
            printer.item(&environments.update(&id, &config).await?, describe_environment)?;
        }
        EnvironmentCommand::Delete { id } => {
            environments.delete(&id).await?;
            printer.item(&serde_json::json!({ "id": id, "deleted": true }), |_| format!("deleted environment {id}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
