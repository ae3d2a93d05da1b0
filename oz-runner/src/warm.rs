//! `oz agent warm`: the first half of a run in a warm sandbox. It clones the environment's repos and
//! runs its setup commands with no control plane, no credential and no task; then it waits on a unix
//! socket (answering the one [`Handoff`] it takes, then no longer listening) or on stdin for the
//! task, and runs it as `oz agent run` would ([`crate::run::run_prepared`]), starting from what it
//! prepared. See `oz_core::warm`.
//!
//! With a socket, its stdout and stderr go to `prepare.log` beside the socket while it prepares
//! (nobody reads its pipes yet); they are given back for the task. With stdin (a container, whose
//! output the engine keeps), they stay where they are.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use oz_core::environment::EnvironmentConfig;
use oz_core::redact::Redactor;
use oz_core::runner::env;
use oz_core::warm::{Handoff, HandoffAnswer, HandoffChannel, MAX_HANDOFF_BYTES, READY_LINE, TAKEN_LINE};
use oz_core::wire::callbacks::{ResolvedRun, RunnerEvent, RunnerReport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::args::{OutputFormat, WarmArgs};
use crate::control::{ControlError, ControlPlane};
use crate::log::EventLog;
use crate::run::{self, EXIT_USAGE, Failure, Prepared};

/// At most this many events of the preparation are kept for the run's history; a note says how many
/// more there were.
const MAX_PREPARE_EVENTS: usize = 10_000;

/// `oz agent warm` as a process; returns the exit status.
pub fn warm_main(args: WarmArgs) -> i32 {
    // Before any setup command runs: a process it leaves behind must not read the handoff (and its
    // token) from this process's stdin or memory.
    crate::guard_from_children();
    crate::install_crypto_provider();
    let channel = args.channel();
    let saved = match &channel {
        HandoffChannel::Socket(socket) => match send_output_to(&socket.with_file_name("prepare.log")) {
            Ok(saved) => Some(saved),
            Err(e) => {
                eprintln!("oz agent warm: could not open the preparation's log: {e}");
                return EXIT_USAGE;
            }
        },
        HandoffChannel::Stdin => None,
    };
    crate::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz agent warm: could not start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let cancel_rx = crate::cancel_on_signals();
        let prepared = match prepare(&args, &cancel_rx).await {
            Ok(p) => p,
            Err((code, message)) => {
                eprintln!("oz agent warm: {message}");
                return code;
            }
        };
        let waited = match &channel {
            HandoffChannel::Socket(socket) => wait_for_task(socket, cancel_rx.clone()).await,
            HandoffChannel::Stdin => read_task_from_stdin(cancel_rx.clone()).await,
        };
        let handoff = match waited {
            Ok(h) => h,
            Err((code, message)) => {
                eprintln!("oz agent warm: {message}");
                return code;
            }
        };
        // The task's output is the task's: the pipes are its again.
        if let Some(saved) = saved
            && let Err(e) = restore_output(saved)
        {
            eprintln!("oz agent warm: could not give the output back: {e}");
        }
        if let Some(receipt) = &handoff.receipt {
            eprintln!("{TAKEN_LINE} {receipt}");
        }
        let flags = handoff.run_flags().unwrap_or_default();
        let (parsed, warnings) = match crate::args::parse_lenient(flags) {
            Ok(p) => p,
            Err(e) => {
                let _ = e.print();
                return EXIT_USAGE;
            }
        };
        let mut task_env: Vec<(String, String)> = std::env::vars().collect();
        task_env.extend(handoff.env.iter().cloned());
        task_env.retain(|(k, _)| k != env::WORKLOAD_TOKEN && k != env::SECRET_INPUT);
        if let Some(token) = &handoff.secret_input {
            task_env.push((env::WORKLOAD_TOKEN.to_owned(), token.expose().trim().to_owned()));
        }
        let oz_binary = std::env::current_exe().unwrap_or_else(|_| "oz".into());
        let ctx = run::Context { env: task_env, control: None, oz_binary, cancel: cancel_rx };
        run::run_prepared(parsed, warnings, ctx, prepared).await
    })
}

/// Clones and sets up, holding nothing of any run.
async fn prepare(args: &WarmArgs, cancel: &watch::Receiver<bool>) -> Result<Prepared, Failure> {
    let text = std::fs::read_to_string(&args.environment_file)
        .map_err(|e| (EXIT_USAGE, format!("could not read {}: {e}", args.environment_file.display())))?;
    let environment: EnvironmentConfig = serde_json::from_str(&text)
        .map_err(|e| (EXIT_USAGE, format!("{} is not a valid environment: {e}", args.environment_file.display())))?;
    environment.validate().map_err(|e| (EXIT_USAGE, format!("the environment is invalid: {e}")))?;
    crate::clone::validate_base_url(&args.git_base_url).map_err(|e| (EXIT_USAGE, e))?;
    std::fs::create_dir_all(&args.workdir)
        .map_err(|e| (EXIT_USAGE, format!("could not create {}: {e}", args.workdir.display())))?;
    let recorder = Arc::new(Recorder::default());
    let log = EventLog::new(OutputFormat::Text, recorder.clone(), Redactor::new(std::iter::empty::<&[u8]>()));
    // Settings only: a warm sandbox has no secret to give its setup commands.
    let mut child_env: Vec<(String, String)> = std::env::vars().collect();
    child_env.retain(|(k, _)| !run::is_withheld(k));
    for (k, v) in &environment.env_vars {
        child_env.retain(|(name, _)| name != k);
        child_env.push((k.clone(), v.clone()));
    }
    let result = async {
        let cloned =
            run::clone_environment(&environment, &args.git_base_url, &args.workdir, &child_env, &[], true, &log)
                .await?;
        run::run_setup(&environment, &child_env, &args.workdir, &log, cancel).await?;
        Ok::<_, Failure>(cloned)
    }
    .await;
    log.close(std::time::Duration::from_secs(5)).await;
    let cloned = result?;
    let open_remotes = open_remotes(&cloned).await;
    Ok(Prepared {
        environment,
        git_base_url: args.git_base_url.clone(),
        workdir: args.workdir.clone(),
        events: recorder.take(),
        cloned,
        ready_at: std::time::Instant::now(),
        open_remotes,
    })
}

/// A connection to each clone's remote, held open until the task comes, so that its HEAD check is
/// one round trip (see [`crate::remote_head::OpenRemote`]). A remote that cannot be held (it asks
/// for a credential, speaks protocol v1, is not local or HTTP, does not answer within
/// [`crate::remote_head::HELD_CONNECTION_DEADLINE`]) is asked on a new connection then.
async fn open_remotes(cloned: &[crate::clone::Cloned]) -> HashMap<PathBuf, crate::remote_head::OpenRemote> {
    let dirs: Vec<PathBuf> = cloned.iter().map(|c| c.dir.clone()).collect();
    tokio::task::spawn_blocking(move || crate::remote_head::open_all(dirs).into_iter().collect())
        .await
        .unwrap_or_default()
}

/// Listens on `socket` (0600) until one valid handoff comes, answers it, and stops listening. A
/// malformed one is answered with why, and the wait goes on.
async fn wait_for_task(socket: &Path, mut cancel: watch::Receiver<bool>) -> Result<Handoff, Failure> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| (EXIT_USAGE, format!("could not listen on {}: {e}", socket.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| (EXIT_USAGE, format!("could not restrict {}: {e}", socket.display())))?;
    }
    eprintln!("{READY_LINE}; waiting for the task on {}", socket.display());
    let (handoff, mut write) = loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted
                .map_err(|e| (run::EXIT_CANCELLED, format!("could not accept on {}: {e}", socket.display())))?,
            _ = cancel.wait_for(|c| *c) => return Err((run::EXIT_CANCELLED, "stopped before a task came".into())),
        };
        let (read, mut write) = stream.into_split();
        let mut line = Vec::new();
        let mut reader = BufReader::new(read).take(MAX_HANDOFF_BYTES as u64);
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_until(b'\n', &mut line)).await;
        let parsed = match read {
            Ok(Ok(_)) => parse_handoff(&line),
            Ok(Err(e)) => Err(format!("could not read the handoff: {e}")),
            Err(_) => Err("the handoff did not come within 10 s of the connection".into()),
        };
        match parsed {
            Ok(h) => break (h, write),
            Err(e) => {
                eprintln!("oz agent warm: refused a handoff: {e}");
                answer(&mut write, HandoffAnswer { accepted: false, error: Some(e) }).await;
            }
        }
    };
    // One task per sandbox: nobody else gets in, from before the task is taken.
    drop(listener);
    let _ = std::fs::remove_file(socket);
    answer(&mut write, HandoffAnswer { accepted: true, error: None }).await;
    Ok(handoff)
}

/// Reads the one handoff from stdin. Whatever comes is the only chance: a bad one ends the runner.
async fn read_task_from_stdin(mut cancel: watch::Receiver<bool>) -> Result<Handoff, Failure> {
    eprintln!("{READY_LINE}; waiting for the task on stdin");
    let mut line = Vec::new();
    let mut reader = BufReader::new(tokio::io::stdin()).take(MAX_HANDOFF_BYTES as u64);
    tokio::select! {
        read = reader.read_until(b'\n', &mut line) => match read {
            Ok(0) => Err((run::EXIT_CANCELLED, "stdin closed before a task came".into())),
            Ok(_) => parse_handoff(&line).map_err(|e| (EXIT_USAGE, e)),
            Err(e) => Err((EXIT_USAGE, format!("could not read the handoff: {e}"))),
        },
        _ = cancel.wait_for(|c| *c) => Err((run::EXIT_CANCELLED, "stopped before a task came".into())),
    }
}

fn parse_handoff(line: &[u8]) -> Result<Handoff, String> {
    // Its position only: serde's message may quote the value it choked on, which may be the token.
    let handoff: Handoff = serde_json::from_slice(line).map_err(|e| {
        format!("the handoff is not valid ({:?} error at line {}, column {})", e.classify(), e.line(), e.column())
    })?;
    match handoff.run_flags() {
        Some(_) => Ok(handoff),
        None => Err("the handoff's argv is not a runner's (`... agent run ...`)".into()),
    }
}

async fn answer(write: &mut tokio::net::unix::OwnedWriteHalf, answer: HandoffAnswer) {
    if let Ok(mut text) = serde_json::to_vec(&answer) {
        text.push(b'\n');
        let _ = write.write_all(&text).await;
        let _ = write.shutdown().await;
    }
}

/// Points stdout and stderr at `log` (created 0600); returns the originals.
fn send_output_to(log: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log)?;
    let _ = std::io::stdout().flush();
    let saved_out = std::io::stdout().as_fd().try_clone_to_owned()?;
    let saved_err = std::io::stderr().as_fd().try_clone_to_owned()?;
    nix::unistd::dup2_stdout(&file)?;
    nix::unistd::dup2_stderr(&file)?;
    Ok((saved_out, saved_err))
}

fn restore_output((out, err): (OwnedFd, OwnedFd)) -> std::io::Result<()> {
    let _ = std::io::stdout().flush();
    nix::unistd::dup2_stdout(&out)?;
    nix::unistd::dup2_stderr(&err)?;
    Ok(())
}

/// Keeps the preparation's events (bounded) instead of sending them anywhere: there is no run yet.
#[derive(Default)]
struct Recorder {
    events: Mutex<(Vec<RunnerEvent>, usize)>,
}

impl Recorder {
    fn take(&self) -> Vec<RunnerEvent> {
        let mut kept = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let (mut events, dropped) = std::mem::take(&mut *kept);
        if dropped > 0 {
            events.push(RunnerEvent::Output {
                stream: "stderr".into(),
                text: format!("oz: {dropped} more events of the preparation were not kept\n"),
            });
        }
        events
    }
}

#[async_trait]
impl ControlPlane for Recorder {
    async fn report(&self, report: &RunnerReport) -> Result<(), ControlError> {
        let mut kept = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if kept.0.len() < MAX_PREPARE_EVENTS {
            kept.0.push(report.event.clone());
        } else {
            kept.1 += 1;
        }
        Ok(())
    }

    async fn resolved(&self) -> Result<Option<ResolvedRun>, ControlError> {
        Ok(None)
    }

    fn is_connected(&self) -> bool {
        false
    }
}
