//! Running a setup command or the harness: own process group, exact environment, output streamed
//! through the redactor into the event log, stopped (SIGTERM, grace, SIGKILL) when the run is cancelled.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::log::{EventLog, Stream};

/// How long a cancelled process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The exit code, or 128 + signal.
    pub code: i32,
    /// Whether it was stopped because the run was cancelled.
    pub cancelled: bool,
}

async fn pump(mut reader: impl AsyncRead + Unpin, log: Arc<EventLog>, stream: Stream) {
    let mut redactor = log.stream_redactor();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let clean = redactor.push(&buf[..n]);
                log.output(stream, &clean).await;
            }
        }
    }
    let rest = redactor.finish();
    log.output(stream, &rest).await;
}

/// Interrupts for a running process: each one sends SIGINT to its process group.
pub type Interrupts = tokio::sync::mpsc::UnboundedReceiver<()>;

/// The next interrupt; never, without a sender or once it is gone.
async fn next_interrupt(interrupts: &mut Option<Interrupts>) {
    match interrupts {
        Some(rx) => {
            if rx.recv().await.is_none() {
                *interrupts = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs `argv` in `cwd` with exactly `env`, feeding `stdin`, until it exits or `cancel` turns true;
/// each of `interrupts` sends its process group SIGINT.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    stdin: Option<Bytes>,
    log: Arc<EventLog>,
    mut cancel: watch::Receiver<bool>,
    mut interrupts: Option<Interrupts>,
) -> std::io::Result<Ended> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
    let out = child.stdout.take().map(|r| tokio::spawn(pump(r, log.clone(), Stream::Stdout)));
    let err = child.stderr.take().map(|r| tokio::spawn(pump(r, log.clone(), Stream::Stderr)));
    if let Some(mut input) = child.stdin.take() {
        tokio::spawn(async move {
            if let Some(bytes) = stdin {
                let _ = input.write_all(&bytes).await;
            }
        });
    }
    let mut cancelled = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = next_interrupt(&mut interrupts) => {
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGINT);
                }
            }
            _ = cancel.wait_for(|c| *c) => {
                cancelled = true;
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGTERM);
                }
                break match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        if let Some(pgid) = pgid {
                            let _ = killpg(pgid, Signal::SIGKILL);
                        }
                        child.wait().await?
                    }
                };
            }
        }
    };
    // A stop signal may reach the process before it reaches us (the backend signals the whole task at
    // once): if it died of a signal, give our own notice a moment before calling it a failure.
    use std::os::unix::process::ExitStatusExt;
    if !cancelled && status.signal().is_some() {
        cancelled =
            tokio::time::timeout(Duration::from_millis(500), cancel.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok());
    }
    cancelled |= *cancel.borrow();
    // What the process left running in its group goes too, so the pipes close.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    for reader in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(Ended { code, cancelled })
}
