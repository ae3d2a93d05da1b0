//! `oz schedule create|list|get|update|pause|unpause|delete`.

use std::process::ExitCode;

use oz_core::wire::api::{AgentConfig, ScheduleItem, ScheduleUpdate};

use super::output::Printer;
use super::{ApiOpts, CliError};

/// `oz schedule ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Creates a schedule that starts a run at each tick of a cron expression.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// A cron expression, e.g. "0 9 * * 1-5" (minute hour day month weekday).
        #[arg(long)]
        cron: String,
        /// The prompt of its runs.
        #[arg(long, short = 'p')]
        prompt: String,
        /// The environment of its runs.
        #[arg(long, short = 'e')]
        environment: Option<String>,
        /// The worker its runs go to.
        #[arg(long)]
        host: Option<String>,
        /// An IANA time zone for the cron expression (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Create it paused.
        #[arg(long)]
        disabled: bool,
    },
    /// Lists schedules.
    List,
    /// Shows one schedule.
    Get {
        /// The schedule id.
        id: String,
    },
    /// Changes a schedule: only the options given change.
    Update {
        /// The schedule id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new cron expression.
        #[arg(long)]
        cron: Option<String>,
        /// A new prompt.
        #[arg(long, short = 'p')]
        prompt: Option<String>,
        /// A new environment.
        #[arg(long, short = 'e')]
        environment: Option<String>,
        /// A new worker.
        #[arg(long)]
        host: Option<String>,
        /// A new time zone.
        #[arg(long)]
        timezone: Option<String>,
    },
    /// Stops a schedule from starting runs.
    Pause {
        /// The schedule id.
        id: String,
    },
    /// Lets a paused schedule start runs again, from now on.
    Unpause {
        /// The schedule id.
        id: String,
    },
    /// Deletes a schedule (its past runs stay).
    Delete {
        /// The schedule id.
        id: String,
    },
}

/// Renders a schedule for people.
pub fn describe_schedule(s: &ScheduleItem) -> String {
    let config = s.agent_config.clone().unwrap_or_default();
    let mut lines = vec![
        format!("schedule     {}", s.id),
        format!("name         {}", s.name),
        format!("cron         {} ({})", s.cron_schedule, s.timezone.as_deref().unwrap_or("UTC")),
        format!("enabled      {}", s.enabled),
        format!("prompt       {}", s.prompt.as_deref().unwrap_or("")),
    ];
    if let Some(env) = config.environment_id {
        lines.push(format!("environment  {env}"));
    }
    if let Some(host) = config.worker_host {
        lines.push(format!("host         {host}"));
    }
    if let Some(t) = s.history.last_ran {
        lines.push(format!("last ran     {t}"));
    }
    if let Some(t) = s.history.next_run {
        lines.push(format!("next run     {t}"));
    }
    if let Some(e) = &s.last_spawn_error {
        lines.push(format!("last error   {e}"));
    }
    lines.join("\n")
}

fn schedule_row(s: &ScheduleItem) -> Vec<String> {
    vec![
        s.id.clone(),
        s.name.clone(),
        s.cron_schedule.clone(),
        if s.enabled { "yes".into() } else { "paused".into() },
        s.history.next_run.map(|t| t.to_string()).unwrap_or_default(),
    ]
}

/// Runs `oz schedule ...`.
pub async fn run(command: ScheduleCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    let schedules = client.schedules();
    match command {
        ScheduleCommand::Create { name, cron, prompt, environment, host, timezone, disabled } => {
            let mut request = schedules.create(name, cron).prompt(prompt);
            if let Some(v) = environment {
                request = request.environment_id(v);
            }
            if let Some(v) = host {
                request = request.worker_host(v);
            }
            if let Some(v) = timezone {
                request = request.timezone(v);
            }
            if disabled {
                request = request.disabled();
            }
            printer.item(&request.send().await?, describe_schedule)?;
        }
        ScheduleCommand::List => {
            let all = schedules.list().await?;
            printer.list(&all, &["SCHEDULE", "NAME", "CRON", "ENABLED", "NEXT RUN"], schedule_row)?;
        }
        ScheduleCommand::Get { id } => printer.item(&schedules.get(&id).await?, describe_schedule)?,
        ScheduleCommand::Update { id, name, cron, prompt, environment, host, timezone } => {
            let current = schedules.get(&id).await?;
            let mut config = current.agent_config.unwrap_or_else(AgentConfig::default);
            if let Some(v) = environment {
                config.environment_id = Some(v);
            }
            if let Some(v) = host {
                config.worker_host = Some(v);
            }
            let update = ScheduleUpdate {
                name: name.unwrap_or(current.name),
                cron_schedule: cron.unwrap_or(current.cron_schedule),
                enabled: current.enabled,
                prompt: prompt.or(current.prompt),
                agent_config: Some(config),
                timezone: timezone.or(current.timezone),
            };
            printer.item(&schedules.update(&id, &update).await?, describe_schedule)?;
        }
        ScheduleCommand::Pause { id } => printer.item(&schedules.pause(&id).await?, describe_schedule)?,
        ScheduleCommand::Unpause { id } => printer.item(&schedules.resume(&id).await?, describe_schedule)?,
        ScheduleCommand::Delete { id } => {
            schedules.delete(&id).await?;
            printer.item(&serde_json::json!({ "id": id, "deleted": true }), |_| format!("deleted schedule {id}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
