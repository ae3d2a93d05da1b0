//! `oz agent run-cloud` and `oz run list|get|cancel|watch`.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use futures::StreamExt;
use oz_core::run::RunState;
use oz_core::wire::api::{Attachment, RunItem};

use super::follow::{Followed, follow};
use super::output::Printer;
use super::{ApiOpts, CliError, EXIT_RUN_DID_NOT_SUCCEED, Format};

/// The most attachments a run accepts.
const MAX_ATTACHMENTS: usize = 5;

/// `oz agent run-cloud`: starts a run on the control plane and follows it.
#[derive(Debug, clap::Args)]
pub struct RunCloudArgs {
    /// What the agent should do.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// The environment (its id) that says which repos to clone and how to set them up.
    #[arg(long, short = 'e')]
    pub environment: Option<String>,
    /// The self-hosted worker id to run on.
    #[arg(long)]
    pub host: Option<String>,
    /// The model.
    #[arg(long)]
    pub model: Option<String>,
    /// The harness: claude, codex, gemini, command, oz.
    #[arg(long)]
    pub harness: Option<oz_core::runner::HarnessKind>,
    /// The agent's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The run's title.
    #[arg(long)]
    pub title: Option<String>,
    /// Who may watch and steer the run's session: `--share` alone (or `self`) for you only, `team`
    /// or `team:view`, `team:edit`, a user's name or id, `USER:edit`; repeatable. Without it the run
    /// is the team's (every member may steer it, as before).
    #[arg(long, value_name = "TARGET", num_args = 0..=1, default_missing_value = "self")]
    pub share: Vec<String>,
    /// Anyone signed in to the server who has the run's link may watch (viewer) or steer (editor).
    #[arg(long, value_name = "viewer|editor", value_parser = parse_public_access)]
    pub public_access: Option<oz_core::sharing::PublicAccess>,
    /// A file to attach to the prompt (up to 5).
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Print the run id and return instead of following the run.
    #[arg(long)]
    pub no_follow: bool,
    /// How to reach the API and print results.
    #[command(flatten)]
    pub api: ApiOpts,
}

/// `oz run ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RunCommand {
    /// Lists runs, newest first.
    List {
        /// Only runs in this state (QUEUED, INPROGRESS, SUCCEEDED, FAILED, ...).
        #[arg(long)]
        state: Option<RunState>,
        /// At most this many (default 20); with `--all`, the page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only runs whose title or prompt contain this.
        #[arg(long)]
        query: Option<String>,
        /// Only runs from this source (API, SCHEDULED_AGENT, ...).
        #[arg(long)]
        source: Option<String>,
        /// Only runs made by this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// Only runs in this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Every match, following pages.
        #[arg(long)]
        all: bool,
    },
    /// Shows one run.
    Get {
        /// The run id.
        run_id: String,
    },
    /// Cancels a run.
    Cancel {
        /// The run id.
        run_id: String,
    },
    /// Follows a run live (from its first event) until it ends.
    Watch {
        /// The run id.
        run_id: String,
    },
    /// Sends a follow-up: a run that goes on gets it while it runs (a `command` harness reads it
    /// from `OZ_FOLLOWUP_FILE`); a run that ended goes on with it in a new execution, its agent
    /// given back what it kept of its conversation.
    Followup {
        /// The run id.
        run_id: String,
        /// The message.
        message: String,
    },
    /// Interrupts the run's running agent (SIGINT to its harness, as Ctrl-C in a terminal): it
    /// stops what it is doing now; the run goes on if the harness handles the signal.
    Interrupt {
        /// The run id.
        run_id: String,
    },
    /// Shows the run's live terminal in this one: its screen as it is, then what it writes,
    /// until it ends. What is typed goes to the agent's terminal (for an editor of the run): from a
    /// terminal, key by key (Ctrl-C included; Ctrl-] leaves, the run goes on); from a pipe, its
    /// bytes until its end.
    Attach {
        /// The run id.
        run_id: String,
        /// Only watch: send nothing typed (Ctrl-C leaves).
        #[arg(long)]
        watch_only: bool,
    },
}

fn parse_public_access(text: &str) -> Result<oz_core::sharing::PublicAccess, String> {
    match text.to_ascii_lowercase().as_str() {
        "viewer" => Ok(oz_core::sharing::PublicAccess::Viewer),
        "editor" => Ok(oz_core::sharing::PublicAccess::Editor),
        _ => Err(format!("{text:?} is not viewer or editor")),
    }
}

fn read_attachment(path: &PathBuf) -> Result<Attachment, CliError> {
    let data = std::fs::read(path).map_err(|e| CliError::Usage(format!("--attach {}: {e}", path.display())))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::Usage(format!("--attach {}: not a file name", path.display())))?
        .to_owned();
    let mime_type = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("pdf") => "application/pdf",
        Some("json") => "application/json",
        Some("txt" | "md" | "log" | "diff" | "patch") => "text/plain",
        _ => "application/octet-stream",
    }
    .to_owned();
    Ok(Attachment { file_name, mime_type, data: base64::engine::general_purpose::STANDARD.encode(data) })
}

/// Runs `oz agent run-cloud`.
pub async fn run_cloud(args: RunCloudArgs) -> Result<ExitCode, CliError> {
    if args.attach.len() > MAX_ATTACHMENTS {
        return Err(CliError::Usage(format!("--attach: at most {MAX_ATTACHMENTS} files, got {}", args.attach.len())));
    }
    let client = args.api.client()?;
    let printer = Printer { format: args.api.output_format };
    let mut request = client.runs().create(args.prompt);
    if let Some(v) = args.environment {
        request = request.environment_id(v);
    }
    if let Some(v) = args.host {
        request = request.worker_host(v);
    }
    if let Some(v) = args.model {
        request = request.model_id(v);
    }
    if let Some(v) = args.harness {
        request = request.harness(v);
    }
    if let Some(v) = args.name {
        request = request.name(v);
    }
    if let Some(v) = args.title {
        request = request.title(v);
    }
    for target in args.share {
        request = request.share(target);
    }
    if let Some(access) = args.public_access {
        request = request.public_access(access);
    }
    for path in &args.attach {
        request = request.attachment(read_attachment(path)?);
    }
    let created = request.send().await?;
    if args.no_follow {
        printer.item(&created, |c| c.run_id.clone())?;
        return Ok(ExitCode::SUCCESS);
    }
    match printer.format {
        Format::Text => println!("run {}", created.run_id),
        Format::Ndjson => printer.item(&created, |_| String::new())?,
        Format::Json => {}
    }
    finish_following(&client, &created.run_id, printer).await
}

/// The exit status for a run that ended in `state`: 0 when it succeeded.
fn exit_for(state: RunState) -> ExitCode {
    if state == RunState::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(EXIT_RUN_DID_NOT_SUCCEED) }
}

async fn finish_following(client: &oz_sdk::Client, run_id: &str, printer: Printer) -> Result<ExitCode, CliError> {
    let Followed { run, .. } = follow(client, run_id, printer.format).await?;
    match printer.format {
        Format::Text => {
            let message = run.status_message.as_ref().map(|m| m.message.as_str()).unwrap_or("");
            println!(
                "run {} ended {}{}",
                run.run_id,
                run.state,
                if message.is_empty() { String::new() } else { format!(": {message}") }
            );
        }
        Format::Json => printer.item(&run, |_| String::new())?,
        Format::Ndjson => {}
    }
    Ok(exit_for(run.state))
}

/// Renders a run for people.
pub fn describe_run(run: &RunItem) -> String {
    let mut lines = vec![
        format!("run         {}", run.run_id),
        format!("title       {}", run.title),
        format!("state       {}", run.state),
    ];
    if let Some(m) = &run.status_message {
        lines.push(format!("status      {}", m.message));
    }
    lines.push(format!("created     {}", run.created_at));
    if let Some(t) = run.started_at {
        lines.push(format!("started     {t}"));
    }
    lines.push(format!("updated     {}", run.updated_at));
    if let Some(s) = &run.source {
        lines.push(format!("source      {s}"));
    }
    lines.push(format!("prompt      {}", run.prompt));
    if let Some(link) = &run.session_link {
        lines.push(format!("session     {link}"));
    }
    for artifact in run.artifacts.iter().flatten() {
        lines.push(format!("artifact    {}", serde_json::to_string(artifact).unwrap_or_default()));
    }
    lines.join("\n")
}

const RUN_HEADERS: &[&str] = &["RUN", "STATE", "CREATED", "TITLE"];

fn run_row(run: &RunItem) -> Vec<String> {
    vec![run.run_id.clone(), run.state.to_string(), run.created_at.to_string(), run.title.clone()]
}

/// Runs `oz run ...`.
pub async fn run(command: RunCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    match command {
        RunCommand::List { state, limit, query, source, schedule, environment, all } => {
            let mut list = client.runs().list().limit(limit);
            if let Some(v) = state {
                list = list.state(v);
            }
            if let Some(v) = query {
                list = list.query(v);
            }
            if let Some(v) = source {
                list = list.source(v);
            }
            if let Some(v) = schedule {
                list = list.schedule_id(v);
            }
            if let Some(v) = environment {
                list = list.environment_id(v);
            }
            let runs = if all {
                let mut runs = Vec::new();
                let mut stream = Box::pin(list.stream());
                while let Some(run) = stream.next().await {
                    runs.push(run?);
                }
                runs
            } else {
                list.send().await?.runs
            };
            printer.list(&runs, RUN_HEADERS, run_row)?;
        }
        RunCommand::Get { run_id } => printer.item(&client.runs().get(&run_id).await?, describe_run)?,
        RunCommand::Cancel { run_id } => {
            let id = client.runs().cancel(&run_id).await?;
            printer.item(&serde_json::json!({ "run_id": id, "cancel_requested": true }), |_| {
                format!("cancellation of run {id} requested")
            })?;
        }
        RunCommand::Interrupt { run_id } => {
            let id = client.runs().interrupt(&run_id).await?;
            printer.item(&serde_json::json!({ "run_id": id, "interrupted": true }), |_| {
                format!("run {id}'s agent was sent an interrupt")
            })?;
        }
        RunCommand::Watch { run_id } => return finish_following(&client, &run_id, printer).await,
        RunCommand::Attach { run_id, watch_only } => return attach(&client, &run_id, !watch_only).await,
        RunCommand::Followup { run_id, message } => {
            // Only to say what became of it: the server decides, under the run's lock.
            let ended_before = client.runs().get(&run_id).await.is_ok_and(|r| r.state.is_terminal());
            let answer = client.runs().followup(&run_id, message).await?;
            printer.item(&answer, |a| {
                if ended_before && !a.state.is_terminal() {
                    format!("run {run_id} had ended: it goes on with the follow-up in a new execution ({})", a.state)
                } else {
                    format!("the follow-up was sent to run {run_id}")
                }
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The key that leaves `oz run attach` when typing from a terminal (Ctrl-], as telnet's).
const DETACH_KEY: u8 = 0x1d;

/// A terminal in raw mode (every key as typed, no echo, no signals from Ctrl-C) until dropped.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> std::io::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let before = tcgetattr(&stdin).map_err(std::io::Error::from)?;
        let mut raw = before.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(std::io::Error::from)?;
        Ok(Self(before))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
    }
}

/// What is typed on stdin, read on a thread of its own (a blocked read must not hold up the exit).
fn typed_keys() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// `oz run attach`: the session's frames written to this terminal as they come. The screen frames
/// clear it and draw the run's screen (made for a terminal of the session's size: a smaller one
/// wraps). With `typing`, what is typed goes to the agent's terminal; a refusal (the caller may
/// only watch) is said once and typing stops. The exit status is the run's, as for `oz run watch`.
async fn attach(client: &oz_sdk::Client, run_id: &str, typing: bool) -> Result<ExitCode, CliError> {
    use oz_sdk::SessionFrame;
    use std::io::{IsTerminal, Write};
    let mut session = client.runs().watch(run_id).await?;
    let from_terminal = typing && std::io::stdin().is_terminal();
    let raw = if from_terminal { Some(RawTerminal::enter()?) } else { None };
    if raw.is_some() {
        eprint!("oz: attached to run {run_id}: keys go to the agent's terminal; Ctrl-] leaves\r\n");
    }
    let mut keys = typing.then(typed_keys);
    let mut ended = None;
    let mut left = false;
    loop {
        let typed = async {
            match keys.as_mut() {
                Some(keys) => keys.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = session.next() => {
                let Some(frame) = frame else { break };
                let mut out = std::io::stdout().lock();
                match frame? {
                    SessionFrame::Screen { data, .. } => out.write_all(data.as_bytes())?,
                    SessionFrame::Output(bytes) => out.write_all(&bytes)?,
                    SessionFrame::Ended(state) => ended = Some(state),
                    SessionFrame::Refused(why) => {
                        keys = None;
                        eprint!("\r\noz: {why}; what you type is no longer sent (Ctrl-C leaves)\r\n");
                    }
                    _ => {}
                }
                out.flush()?;
            }
            bytes = typed => match bytes {
                Some(bytes) => {
                    let detach_at = if from_terminal { bytes.iter().position(|&b| b == DETACH_KEY) } else { None };
                    let bytes = match detach_at {
                        Some(at) => {
                            left = true;
                            bytes[..at].to_vec()
                        }
                        None => bytes,
                    };
                    if !bytes.is_empty() {
                        session.type_keys(&String::from_utf8_lossy(&bytes)).await?;
                    }
                    if left {
                        break;
                    }
                }
                // The end of a pipe: nothing more to send; watching goes on.
                None => keys = None,
            },
        }
    }
    drop(raw);
    if left {
        eprintln!("\r\noz: left run {run_id}'s session; the run goes on");
        return Ok(ExitCode::SUCCESS);
    }
    match ended {
        Some(state) => {
            eprintln!("\r\nrun {run_id} ended {state}");
            Ok(exit_for(state))
        }
        None => Err(CliError::SessionClosed(format!("the session of run {run_id} closed before the run ended"))),
    }
}
