//! Keeping the run's secrets out of the runner's own environment: the agent runs as the same user
//! and can read `/proc/<runner>/environ`, which holds the environment the runner was started with
//! for as long as it lives.
//!
//! - The workload token normally arrives as the task's secret input (`OZ_SECRET_INPUT`: on stdin,
//!   or in a file), never in the environment; [`take`] reads it.
//! - When the environment does hold a secret ([`HELD_BACK`]: the token from an older worker, git
//!   tokens and the API key of an unmanaged run), [`reexec_without_secrets`] re-executes the runner with an
//!   environment without them, handing them over on a fresh stdin (an in-memory file), so the new
//!   process's `/proc/<pid>/environ` never held them.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;

use oz_core::runner::env;
use serde::{Deserialize, Serialize};

/// Variables that must not stay in the runner's environment.
pub const HELD_BACK: [&str; 5] =
    [env::WORKLOAD_TOKEN, env::API_KEY, env::GIT_CREDENTIALS, env::GITHUB_TOKEN, env::GH_TOKEN];

/// Marks a process started by [`reexec_without_secrets`]: its stdin is the handover.
pub const HANDOVER: &str = env::HANDOVER;

/// What a re-executed runner gets on stdin.
#[derive(Serialize, Deserialize)]
struct Handover {
    /// The variables taken out of the environment.
    vars: Vec<(String, String)>,
}

/// Why the environment could not be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A system call failed.
    #[error("could not re-execute the runner without its secrets in the environment: {0}")]
    System(#[from] nix::Error),
    /// Writing or reading the handover.
    #[error("could not hand the runner's secrets over: {0}")]
    Io(#[from] std::io::Error),
    /// The handover was not readable.
    #[error("the runner's handover is unreadable")]
    Malformed,
    /// `OZ_SECRET_INPUT` says where the token is, and nothing is there.
    #[error("the secret input is empty: this sandbox never got its run's token")]
    EmptySecretInput,
    /// The secret input on stdin did not end within the wait (`OZ_SECRET_INPUT_WAIT_SECS`).
    #[error("no secret input within {}s: this sandbox never got its run's token", .0.as_secs())]
    SecretInputTimedOut(std::time::Duration),
}

impl HandoverError {
    /// Whether the sandbox never got its token (the runner then exits
    /// [`oz_core::runner::EXIT_NO_SECRET_INPUT`], and the task may run again elsewhere).
    pub fn is_missing_token(&self) -> bool {
        matches!(self, HandoverError::EmptySecretInput | HandoverError::SecretInputTimedOut(_))
    }
}

/// If the environment holds any of [`HELD_BACK`], re-executes this program without them (they are
/// handed over on stdin, read back by [`take`]); returns only when there is nothing to hold back.
/// The secret input, if on stdin, is read first and handed over too.
pub fn reexec_without_secrets() -> Result<(), HandoverError> {
    if std::env::var_os(HANDOVER).is_some() {
        return Ok(());
    }
    let held: Vec<(String, String)> =
        std::env::vars().filter(|(k, v)| HELD_BACK.contains(&k.as_str()) && !v.is_empty()).collect();
    if held.is_empty() {
        return Ok(());
    }
    let mut vars = held;
    if let Some(token) = read_secret_input()? {
        vars.push((env::WORKLOAD_TOKEN.to_owned(), token));
    }
    let memfd = nix::sys::memfd::memfd_create(c"oz-handover", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&serde_json::to_vec(&Handover { vars }).map_err(|_| HandoverError::Malformed)?)?;
    file.rewind()?;
    // The copy on stdin survives the exec; the memfd itself closes with it (CLOEXEC).
    nix::unistd::dup2_stdin(&file)?;
    let exe = c"/proc/self/exe";
    let args: Vec<CString> = std::env::args_os().filter_map(|a| CString::new(a.as_bytes().to_vec()).ok()).collect();
    let mut environment: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            !HELD_BACK.contains(&name.as_ref()) && name != env::SECRET_INPUT
        })
        .filter_map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            CString::new(pair).ok()
        })
        .collect();
    environment.extend(CString::new(format!("{HANDOVER}=stdin")).ok());
    nix::unistd::execve(exe, &args, &environment)?;
    Ok(())
}

/// The variables the runner holds in memory instead of its environment: what a re-execution
/// handed over on stdin, and the workload token from the secret input.
pub fn take() -> Result<Vec<(String, String)>, HandoverError> {
    if std::env::var_os(HANDOVER).is_some() {
        let mut text = Vec::new();
        std::io::stdin().lock().read_to_end(&mut text)?;
        // The memfd would stay readable as `/proc/<runner>/fd/0` (from offset 0) for as long as the
        // runner lives; once stdin is /dev/null, nothing refers to it and it is gone.
        forget_stdin()?;
        let handover: Handover = serde_json::from_slice(&text).map_err(|_| HandoverError::Malformed)?;
        return Ok(handover.vars);
    }
    Ok(read_secret_input()?.map(|token| (env::WORKLOAD_TOKEN.to_owned(), token)).into_iter().collect())
}

/// How long to wait for the secret input: `OZ_SECRET_INPUT_WAIT_SECS`, or
/// [`oz_core::runner::SECRET_INPUT_WAIT`].
fn secret_input_wait() -> std::time::Duration {
    std::env::var(env::SECRET_INPUT_WAIT_SECS)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(oz_core::runner::SECRET_INPUT_WAIT, std::time::Duration::from_secs)
}

/// All of stdin, if it ends within `wait`. The read goes on in a thread of its own, left blocked if
/// the wait runs out (the runner then exits).
fn read_stdin_within(wait: std::time::Duration) -> Result<String, HandoverError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = std::io::stdin().lock().read_to_string(&mut text).map(|_| text);
        let _ = tx.send(read);
    });
    match rx.recv_timeout(wait) {
        Ok(read) => Ok(read?),
        Err(_) => Err(HandoverError::SecretInputTimedOut(wait)),
    }
}

/// Points stdin at /dev/null (the runner never passes its own stdin on: children get a pipe).
fn forget_stdin() -> Result<(), HandoverError> {
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    Ok(())
}

/// The secret input (the workload token), from stdin or the file `OZ_SECRET_INPUT` names.
fn read_secret_input() -> Result<Option<String>, HandoverError> {
    let Some(from) = std::env::var_os(env::SECRET_INPUT) else { return Ok(None) };
    let text = if from == env::SECRET_INPUT_STDIN {
        let text = read_stdin_within(secret_input_wait())?;
        forget_stdin()?;
        text
    } else {
        std::fs::read_to_string(&from)?
    };
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(HandoverError::EmptySecretInput);
    }
    Ok(Some(token))
}
