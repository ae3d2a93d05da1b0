//! Running a setup command or the harness: own process group, exact environment, output streamed
//! through the redactor into the event log, stopped (SIGTERM, grace, SIGKILL) when the run is cancelled.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::log::{EventLog, Stream};

/// How long a cancelled process gets between SIGTERM and SIGKILL: less than the backends' own
/// grace (10 s), so that the runner still reports the run's end when the harness makes it wait.
pub const STOP_GRACE: Duration = Duration::from_secs(8);

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
            Ok(mut n) => {
                // What is there already joins this chunk (a terminal gives a few KiB a read): fewer,
                // larger reports, and no waiting for more.
                while n < buf.len() {
                    match reader.read(&mut buf[n..]).now_or_never() {
                        Some(Ok(more)) if more > 0 => n += more,
                        _ => break,
                    }
                }
                let clean = redactor.push(&buf[..n]);
                log.output(stream, &clean).await;
            }
        }
    }
    let rest = redactor.finish();
    log.output(stream, &rest).await;
}

/// What a person can do to a running harness: interrupt it, and type into its terminal.
pub struct Steer {
    /// Each one sends SIGINT to the process group.
    pub interrupts: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Keys, written to the harness's terminal as a keyboard would.
    pub keys: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
}

/// The next interrupt; never, without a sender or once it is gone.
async fn next_interrupt(interrupts: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) {
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

/// A pseudo-terminal for the harness, of the session's size ([`oz_core::wire::session`]). Output
/// processing is off (`-opost`), so what the harness prints is recorded byte for byte as from a
/// pipe (bare `\n`; the session's screen adds the `\r` a terminal would); echo and line editing
/// stay on, so keys typed into the session show as they would on a terminal.
fn open_terminal() -> std::io::Result<(pty_process::Pty, pty_process::Pts)> {
    use nix::sys::termios::{OutputFlags, SetArg, tcgetattr, tcsetattr};
    let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
    pty.resize(pty_process::Size::new(oz_core::wire::session::ROWS, oz_core::wire::session::COLS))
        .map_err(std::io::Error::other)?;
    let mut modes = tcgetattr(&pts).map_err(std::io::Error::from)?;
    modes.output_flags.remove(OutputFlags::OPOST);
    tcsetattr(&pts, SetArg::TCSANOW, &modes).map_err(std::io::Error::from)?;
    Ok((pty, pts))
}

/// What a program that finds a terminal would otherwise do that no one is there to answer: page
/// its output (`git log` into `less`). Set only where the environment does not say.
const UNATTENDED_TERMINAL_ENV: [(&str, &str); 3] = [("TERM", "xterm-256color"), ("PAGER", "cat"), ("GIT_PAGER", "cat")];

/// Runs `argv` in `cwd` with exactly `env`, feeding `stdin`, until it exits or `cancel` turns true.
/// With `steer`, the process runs in a pseudo-terminal of its own (its controlling terminal and its
/// stdout; stdin and stderr stay pipes), which gets the keys; if no terminal can be opened it runs
/// on pipes, said in the log. Each interrupt sends its process group SIGINT.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    stdin: Option<Bytes>,
    log: Arc<EventLog>,
    mut cancel: watch::Receiver<bool>,
    steer: Option<Steer>,
) -> std::io::Result<Ended> {
    let (mut interrupts, keys) = match steer {
        Some(Steer { interrupts, keys }) => (Some(interrupts), Some(keys)),
        None => (None, None),
    };
    let terminal = match keys.is_some().then(open_terminal) {
        Some(Ok(terminal)) => Some(terminal),
        Some(Err(e)) => {
            log.announce(&format!(
                "no terminal could be opened for the agent ({e}): its output is piped, and keys typed into its session are not passed on"
            ))
            .await;
            None
        }
        None => None,
    };
    let (mut child, out, typist) = match terminal {
        Some((pty, pts)) => {
            let mut env = env.to_vec();
            for (name, value) in UNATTENDED_TERMINAL_ENV {
                if !env.iter().any(|(k, _)| k == name) {
                    env.push((name.to_owned(), value.to_owned()));
                }
            }
            // A session leader whose controlling terminal is `pts`: its process group is its pid.
            let command = pty_process::Command::new(&argv[0])
                .args(&argv[1..])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(cwd)
                .stdin(Stdio::piped())
                .stderr(Stdio::piped());
            // Spawning consumes the command and with it our copies of the terminal's far end, so
            // reading ends when the harness's processes are gone.
            let child = command.spawn(pts).map_err(std::io::Error::other)?;
            let (reader, mut writer) = pty.into_split();
            let out = tokio::spawn(pump(reader, log.clone(), Stream::Stdout));
            let typist = keys.map(|mut keys| {
                tokio::spawn(async move {
                    while let Some(bytes) = keys.recv().await {
                        if writer.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                })
            });
            (child, Some(out), typist)
        }
        None => {
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
            let out = child.stdout.take().map(|r| tokio::spawn(pump(r, log.clone(), Stream::Stdout)));
            (child, out, None)
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
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
            seen = cancel.wait_for(|c| *c) => {
                // What `wait_for` answers holds the channel's read lock: let it go before waiting
                // for the process (a `_` pattern would keep it to the arm's end, and whoever sends
                // on the channel meanwhile, the runner's own signal handler, would block a thread).
                drop(seen);
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
    if let Some(typist) = typist {
        typist.abort();
    }
    for reader in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(Ended { code, cancelled })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use oz_core::redact::Redactor;
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;
    use crate::args::OutputFormat;
    use crate::control::recording::Recorder;

    /// What a shell script prints, run with or without a terminal: (stdout, stderr).
    async fn printed(script: &str, keys: &[&'static [u8]], terminal: bool) -> (String, String) {
        let recorder = Arc::new(Recorder::default());
        let log = EventLog::new(OutputFormat::Ndjson, recorder.clone(), Redactor::new(Vec::<String>::new()));
        let (_interrupt, interrupts) = unbounded_channel();
        let (type_keys, typed) = unbounded_channel();
        for k in keys {
            type_keys.send(Bytes::from_static(k)).unwrap();
        }
        let (_cancel, cancelled) = watch::channel(false);
        let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let env = [("PATH".to_owned(), std::env::var("PATH").unwrap())];
        let steer = terminal.then_some(Steer { interrupts, keys: typed });
        let stdin = Some(Bytes::from_static(b"the prompt"));
        let ended = run(&argv, &env, Path::new("/"), stdin, log.clone(), cancelled, steer).await.unwrap();
        assert_eq!(ended, Ended { code: 0, cancelled: false });
        log.close(Duration::from_secs(5)).await;
        (recorder.output("stdout"), recorder.output("stderr"))
    }

    /// A steered process (the harness) finds a terminal of the session's size as its controlling
    /// terminal and stdout, with its prompt still on stdin and stderr still apart; keys typed into
    /// the session arrive on the terminal, echoed as a terminal echoes them; output is recorded as
    /// printed (no `\r` added).
    #[tokio::test]
    async fn a_steered_process_runs_in_a_terminal_that_gets_the_keys() {
        let script = r#"[ -t 1 ] && echo "stdout is a terminal of $(stty size < /dev/tty)"
            [ -t 0 ] || echo "stdin: $(cat)"
            echo "TERM=$TERM PAGER=$PAGER" >&2
            IFS= read -r line < /dev/tty
            echo "typed: $line""#;
        let (stdout, stderr) = printed(script, &[b"hello ", b"there\r"], true).await;
        assert!(stdout.contains("stdout is a terminal of 40 120\n"), "{stdout:?}");
        assert!(stdout.contains("stdin: the prompt\n"), "{stdout:?}");
        assert!(stdout.contains("hello there\n"), "the terminal echoes the keys: {stdout:?}");
        assert!(stdout.ends_with("typed: hello there\n"), "{stdout:?}");
        assert!(!stdout.contains('\r'), "{stdout:?}");
        assert_eq!(stderr, "TERM=xterm-256color PAGER=cat\n");
    }

    /// Without steering (a setup command) the process runs on pipes, with exactly its environment.
    #[tokio::test]
    async fn an_unsteered_process_runs_on_pipes() {
        let script = r#"[ -t 1 ] || echo "stdout is a pipe"; echo "stdin: $(cat)"; echo "TERM=${TERM-unset}""#;
        let (stdout, _) = printed(script, &[], false).await;
        assert_eq!(stdout, "stdout is a pipe\nstdin: the prompt\nTERM=unset\n");
    }
}
