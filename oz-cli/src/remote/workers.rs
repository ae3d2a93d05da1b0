//! `oz worker list`: the team's connected workers, their load and their warm pools.

use std::process::ExitCode;

use oz_sdk::Worker;

use super::output::Printer;
use super::{ApiOpts, CliError};

/// `oz worker ...`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// Lists the connected workers: connections, runs held, and per warm pool its environment,
    /// ready sandboxes against its target, those warming, hits and misses, the oldest ready one's
    /// age, the ready ones' memory (when measured), and whether its last preparation failed.
    List,
}

/// One line per worker, with its pools as `ENV ready/target+warming hits:misses age [memory]`
/// (and `!` after a failure).
fn worker_row(w: &Worker) -> Vec<String> {
    let pools: Vec<String> = w
        .warm_pools
        .iter()
        .map(|p| {
            let failed = if p.last_error.is_some() { " !" } else { "" };
            let age = p.oldest_ready_secs.map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
            let memory = p.memory_bytes.map_or_else(String::new, |b| format!(" {:.1}MiB", b as f64 / 1_048_576.0));
            format!(
                "{} {}/{}+{} {}:{} {age}{memory}{failed}",
                p.environment, p.ready, p.target, p.warming, p.hits, p.misses
            )
        })
        .collect();
    vec![w.worker_id.clone(), w.connections.to_string(), w.runs_in_flight.to_string(), pools.join(", ")]
}

/// Runs `oz worker ...`.
pub async fn run(command: WorkerCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    match command {
        WorkerCommand::List => {
            let all = client.workers().list().await?;
            printer.list(
                &all,
                &["WORKER", "CONNECTIONS", "RUNS", "WARM POOLS (env ready/target+warming hits:misses oldest)"],
                worker_row,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
