//! `oz integration create [webhook|slack|linear|github]|list|get|update|delete`: triggers that
//! start runs: a generic signed webhook, a Slack app, a Linear workspace, a GitHub App.

use std::process::ExitCode;

use oz_core::wire::api::{
    GitHubSettings, IntegrationItem, IntegrationRequest, LinearSettings, ProviderSettings, SlackSettings,
};

use super::output::Printer;
use super::{ApiOpts, CliError};

/// `oz integration ...`.
#[derive(Debug, clap::Subcommand)]
pub enum IntegrationCommand {
    /// Creates an integration: a generic webhook (prints its URL and its signing secret, shown only
    /// this once), or a Slack, Linear or GitHub trigger (prints the URLs to give the provider). A
    /// provider's credentials are team secrets, set first with `oz secret set NAME`; the options
    /// name them.
    Create {
        /// What it listens to.
        #[arg(value_enum, default_value = "webhook")]
        kind: IntegrationKind,
        /// Its name.
        #[arg(long)]
        name: String,
        /// A webhook's prompt (the delivery's payload is appended); for a provider, optional
        /// instructions put before what people ask.
        #[arg(long, short = 'p', default_value = "")]
        prompt: String,
        /// The environment of its runs (GitHub: it must list the repositories events come from).
        #[arg(long, short = 'e')]
        environment: Option<String>,
        /// The worker its runs go to.
        #[arg(long)]
        host: Option<String>,
        /// The provider's settings.
        #[command(flatten)]
        provider: Box<ProviderOptions>,
    },
    /// Lists integrations.
    List,
    /// Shows one integration.
    Get {
        /// The integration id.
        id: String,
    },
    /// Changes an integration: only the options given change.
    Update {
        /// The integration id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new prompt.
        #[arg(long, short = 'p')]
        prompt: Option<String>,
        /// Accept deliveries again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Refuse deliveries until enabled (a webhook answers 403; a provider's events are acknowledged and ignored).
        #[arg(long)]
        disable: bool,
    },
    /// Deletes an integration.
    Delete {
        /// The integration id.
        id: String,
    },
}

/// What an integration listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IntegrationKind {
    /// A generic webhook signed with a secret it makes.
    Webhook,
    /// A Slack app.
    Slack,
    /// A Linear workspace.
    Linear,
    /// A GitHub App.
    Github,
}

/// The options of `oz integration create` that make a provider's settings.
#[derive(Debug, Default, clap::Args)]
pub struct ProviderOptions {
    /// Slack: the team secret holding the app's signing secret.
    #[arg(long, value_name = "SECRET_NAME")]
    pub signing_secret: Option<String>,
    /// Slack: the team secret holding the bot token (xoxb-...).
    #[arg(long, value_name = "SECRET_NAME")]
    pub bot_token_secret: Option<String>,
    /// Linear, GitHub: the team secret holding the webhook's signing secret.
    #[arg(long, value_name = "SECRET_NAME")]
    pub webhook_secret: Option<String>,
    /// Linear: the team secret holding the API key the agent posts with.
    #[arg(long, value_name = "SECRET_NAME")]
    pub api_key_secret: Option<String>,
    /// GitHub: the App's id (or client id).
    #[arg(long)]
    pub app: Option<String>,
    /// GitHub: the team secret holding the App's private key (PEM).
    #[arg(long, value_name = "SECRET_NAME")]
    pub private_key_secret: Option<String>,
    /// GitHub: the App's slug (comments saying @SLUG reach the agent).
    #[arg(long)]
    pub app_slug: Option<String>,
    /// Linear: the agent's user id, the API key's user (required; issues assigned to it start runs).
    #[arg(long)]
    pub agent_user_id: Option<String>,
    /// Linear, GitHub: a label whose issues start runs.
    #[arg(long)]
    pub label: Option<String>,
    /// Linear: what a comment says to reach the agent (default @oz).
    #[arg(long)]
    pub mention: Option<String>,
    /// Linear: the workflow state an issue moves to when its run opens a pull request.
    #[arg(long)]
    pub pull_request_state_id: Option<String>,
    /// Who may trigger it (Slack user ids, `*` for anyone; Linear user ids; GitHub logins
    /// besides the repository's collaborators). Repeatable.
    #[arg(long = "allow-user", value_name = "USER")]
    pub allowed_users: Vec<String>,
    /// Slack: the workspace id (T...) events must come from.
    #[arg(long, value_name = "TEAM_ID")]
    pub slack_team_id: Option<String>,
    /// Linear: the workspace (organization) id webhooks must come from.
    #[arg(long)]
    pub organization_id: Option<String>,
    /// Slack: channel ids where anyone may trigger it. Repeatable.
    #[arg(long = "allow-channel", value_name = "CHANNEL")]
    pub allowed_channels: Vec<String>,
    /// The provider's API root (a proxy, GitHub Enterprise, a test fake); `--api-base-url` is
    /// this server's.
    #[arg(long, value_name = "URL")]
    pub provider_api_url: Option<String>,
}

fn required(value: Option<String>, flag: &str, kind: &str) -> Result<String, CliError> {
    value.ok_or_else(|| CliError::Usage(format!("oz integration create {kind} needs --{flag}")))
}

impl ProviderOptions {
    fn settings(self: Box<Self>, kind: IntegrationKind) -> Result<Option<ProviderSettings>, CliError> {
        Ok(match kind {
            IntegrationKind::Webhook => None,
            IntegrationKind::Slack => Some(ProviderSettings::Slack(SlackSettings {
                signing_secret: required(self.signing_secret, "signing-secret", "slack")?,
                bot_token_secret: required(self.bot_token_secret, "bot-token-secret", "slack")?,
                allowed_users: self.allowed_users,
                allowed_channels: self.allowed_channels,
                team_id: self.slack_team_id,
                api_base_url: self.provider_api_url,
            })),
            IntegrationKind::Linear => Some(ProviderSettings::Linear(LinearSettings {
                webhook_secret: required(self.webhook_secret, "webhook-secret", "linear")?,
                api_key_secret: required(self.api_key_secret, "api-key-secret", "linear")?,
                agent_user_id: self.agent_user_id,
                label: self.label,
                mention: self.mention,
                pull_request_state_id: self.pull_request_state_id,
                allowed_users: self.allowed_users,
                organization_id: self.organization_id,
                api_base_url: self.provider_api_url,
            })),
            IntegrationKind::Github => Some(ProviderSettings::Github(GitHubSettings {
                webhook_secret: required(self.webhook_secret, "webhook-secret", "github")?,
                app: required(self.app, "app", "github")?,
                private_key_secret: required(self.private_key_secret, "private-key-secret", "github")?,
                app_slug: required(self.app_slug, "app-slug", "github")?,
                label: self.label,
                allowed_users: self.allowed_users,
                api_base_url: self.provider_api_url,
            })),
        })
    }
}

/// Renders an integration for people; the secret appears only when the server returned it (on create).
pub fn describe_integration(i: &IntegrationItem) -> String {
    let mut lines = vec![
        format!("integration  {}", i.id),
        format!("name         {}", i.name),
        format!("kind         {}", i.kind),
        format!("enabled      {}", i.enabled),
    ];
    if i.urls.is_empty() {
        lines.push(format!("webhook      {}", i.webhook_url));
    }
    for (purpose, url) in &i.urls {
        lines.push(format!("{:<12} {url}", format!("{purpose}:")));
    }
    lines.push(format!("prompt       {}", i.prompt));
    if let Some(secret) = &i.secret {
        lines.push(format!("secret       {secret}"));
        lines
            .push("             (sign deliveries with HMAC-SHA256 of the body; this secret is not shown again)".into());
    }
    lines.join("\n")
}

fn integration_row(i: &IntegrationItem) -> Vec<String> {
    vec![i.id.clone(), i.name.clone(), i.kind.clone(), i.enabled.to_string(), i.webhook_url.clone()]
}

/// Runs `oz integration ...`.
pub async fn run(command: IntegrationCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    let integrations = client.integrations();
    match command {
        IntegrationCommand::Create { kind, name, prompt, environment, host, provider } => {
            let mut request = integrations.create(name, prompt);
            if let Some(settings) = provider.settings(kind)? {
                request = request.provider(settings);
            }
            if let Some(v) = environment {
                request = request.environment_id(v);
            }
            if let Some(v) = host {
                request = request.worker_host(v);
            }
            printer.item(&request.send().await?, describe_integration)?;
        }
        IntegrationCommand::List => {
            let all = integrations.list().await?;
            printer.list(&all, &["INTEGRATION", "NAME", "KIND", "ENABLED", "WEBHOOK"], integration_row)?;
        }
        IntegrationCommand::Get { id } => printer.item(&integrations.get(&id).await?, describe_integration)?,
        IntegrationCommand::Update { id, name, prompt, enable, disable } => {
            let current = integrations.get(&id).await?;
            let request = IntegrationRequest {
                name: name.unwrap_or(current.name),
                prompt: prompt.unwrap_or(current.prompt),
                agent_config: current.agent_config,
                provider: current.provider,
                enabled: Some(if enable {
                    true
                } else if disable {
                    false
                } else {
                    current.enabled
                }),
            };
            printer.item(&integrations.update(&id, &request).await?, describe_integration)?;
        }
        IntegrationCommand::Delete { id } => {
            integrations.delete(&id).await?;
            printer.item(&serde_json::json!({ "id": id, "deleted": true }), |_| format!("deleted integration {id}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
