//! `oz integration create|list|get|update|delete`: webhooks that start a run per delivery.

use std::process::ExitCode;

use oz_core::wire::api::{IntegrationItem, IntegrationRequest};

use super::output::Printer;
use super::{ApiOpts, CliError};

/// `oz integration ...`.
#[derive(Debug, clap::Subcommand)]
pub enum IntegrationCommand {
    /// Creates a webhook integration; prints its URL and its signing secret (shown only this once).
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// The prompt of its runs; the delivery's payload is appended.
        #[arg(long, short = 'p')]
        prompt: String,
        /// The environment of its runs.
        #[arg(long, short = 'e')]
        environment: Option<String>,
        /// The worker its runs go to.
        #[arg(long)]
        host: Option<String>,
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
        /// Refuse deliveries (they answer 409) until enabled.
        #[arg(long)]
        disable: bool,
    },
    /// Deletes an integration.
    Delete {
        /// The integration id.
        id: String,
    },
}

/// Renders an integration for people; the secret appears only when the server returned it (on create).
pub fn describe_integration(i: &IntegrationItem) -> String {
    let mut lines = vec![
        format!("integration  {}", i.id),
        format!("name         {}", i.name),
        format!("kind         {}", i.kind),
        format!("enabled      {}", i.enabled),
        format!("webhook      {}", i.webhook_url),
        format!("prompt       {}", i.prompt),
    ];
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
        IntegrationCommand::Create { name, prompt, environment, host } => {
            let mut request = integrations.create(name, prompt);
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
