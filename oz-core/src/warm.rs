//! The warm sandbox contract: a runner started ahead of its task (`oz agent warm`) clones the
//! environment's repos and runs its setup commands holding no credential and no task, then waits on
//! a unix socket in its sandbox for one [`Handoff`]: the task's runner argv and environment, and its
//! secret input (the workload token). It answers with a [`HandoffAnswer`], stops listening, and runs
//! the task as `oz agent run` would, minus what it already did. One sandbox serves one task.
//!
//! The handoff comes over one of two channels ([`HandoffChannel`]):
//! - a unix socket (Direct): one JSON line each way. The socket is created 0600 in a folder only the
//!   sandbox's user can enter; the backend that made the sandbox is the only other party.
//! - the runner's stdin (Docker: the container's stdin, attached once through the engine's API): one
//!   JSON line in, no answer; a handoff the runner refuses ends it with the reason on stderr.
//!
//! Either way the runner says [`READY_LINE`] on stderr when it waits for the task.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::environment::EnvironmentConfig;
use crate::task::{SandboxSpec, SecretInput};

/// `oz agent warm`: the subcommand a backend starts in a warm sandbox.
pub const WARM_SUBCOMMAND: [&str; 2] = ["agent", "warm"];

/// The flags of `oz agent warm`.
pub mod flag {
    /// The unix socket to wait on for the handoff (created by the runner, removed after it).
    pub const SOCKET: &str = "socket";
    /// Read the handoff from stdin instead of a socket.
    pub const HANDOFF_STDIN: &str = "handoff-stdin";
    /// The environment to prepare, as a JSON file (an `EnvironmentConfig`).
    pub const ENVIRONMENT_FILE: &str = "environment-file";
    /// Where the repos are cloned from (`https://github.com` by default).
    pub const GIT_BASE_URL: &str = "git-base-url";
    /// The folder the repos are cloned into and the setup commands run in.
    pub const WORKDIR: &str = "workdir";
}

/// The largest handoff accepted, in bytes (the argv, the environment and a token).
pub const MAX_HANDOFF_BYTES: usize = 1024 * 1024;

/// The name of the socket file in a warm sandbox's private folder.
pub const SOCKET_NAME: &str = "handoff.sock";

/// What a warm runner prints on stderr (at the start of a line) once it is prepared and waits.
pub const READY_LINE: &str = "oz agent warm: ready";

/// What a warm runner prints on stderr once it has taken its handoff, followed by a space and the
/// handoff's [`Handoff::receipt`]: the backend's proof that the task arrived, and where the task's
/// own output starts in a log that began with the preparation's. Random per handoff, so no setup
/// command can print it ahead of time.
pub const TAKEN_LINE: &str = "oz agent warm: taken";

/// Where a warm runner waits for its handoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoffChannel {
    /// A unix socket it creates at this path.
    Socket(std::path::PathBuf),
    /// Its stdin.
    Stdin,
}

/// What a backend prepares a warm sandbox from ([`crate::backend::Backend::prepare`]): nothing of
/// any run, and no secret.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmSpec {
    /// The sandbox; a task must ask for the same one to be handed this sandbox.
    pub sandbox: SandboxSpec,
    /// The runner's program (`argv[0]` of the task's runner, e.g. the sidecar's `oz`).
    pub entrypoint: String,
    /// The environment whose repos are cloned and whose setup commands run.
    pub environment: EnvironmentConfig,
    /// Where the repos are cloned from; `None`: as a cold runner decides (`OZ_GIT_BASE_URL` in `env`,
    /// else `https://github.com`).
    pub git_base_url: Option<String>,
    /// Variables of the sandbox (settings, never a secret).
    pub env: Vec<(String, String)>,
    /// How long the preparation may take before the sandbox is given up.
    pub ready_within: std::time::Duration,
}

impl WarmSpec {
    /// The task a container backend (Docker, Kubernetes) makes a warm sandbox as: `warm_id` as its
    /// task id, the sandbox and its variables, and `oz agent warm --handoff-stdin` reading the
    /// environment from `environment_file`, in the container's working directory. No secret.
    pub fn stdin_task(&self, warm_id: &str, environment_file: &Path) -> crate::task::TaskSpec {
        let mut spec = crate::task::TaskSpec::new(warm_id, Vec::new());
        spec.sandbox = self.sandbox.clone();
        spec.env = self.env.clone();
        let workdir = crate::task::container_workdir(&spec.sandbox);
        spec.argv = warm_argv(
            &self.entrypoint,
            &HandoffChannel::Stdin,
            environment_file,
            Path::new(&workdir),
            self.git_base_url.as_deref(),
        );
        spec
    }
}

/// How many of its last lines a failed preparation's message quotes.
const TAIL_LINES: usize = 5;
/// How much of each of those lines it quotes, in characters.
const TAIL_LINE_CHARS: usize = 200;

/// A warm runner's output read line by line, until [`READY_LINE`]; what it said last, for the error
/// when it ends before that.
#[derive(Debug, Default)]
pub struct PreparationLog {
    tail: std::collections::VecDeque<String>,
}

impl PreparationLog {
    /// Takes one line (without its newline); true if it is the ready line.
    pub fn line(&mut self, line: &str) -> bool {
        if line.starts_with(READY_LINE) {
            return true;
        }
        self.tail.push_back(line.chars().take(TAIL_LINE_CHARS).collect());
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
        false
    }

    /// The message of a preparation that ended (`how`: an exit code, a reason) before it was ready.
    pub fn failure(&self, how: &str) -> String {
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        format!("the warm sandbox's preparation failed ({how}): {}", tail.join(" / "))
    }
}

/// The argv of `oz agent warm` with the paths a backend chose in its sandbox.
pub fn warm_argv(
    entrypoint: &str,
    channel: &HandoffChannel,
    environment_file: &Path,
    workdir: &Path,
    git_base_url: Option<&str>,
) -> Vec<String> {
    let long = |name: &str| format!("--{name}");
    let mut argv = vec![entrypoint.to_owned()];
    argv.extend(WARM_SUBCOMMAND.iter().map(|s| (*s).to_owned()));
    match channel {
        HandoffChannel::Socket(socket) => argv.extend([long(flag::SOCKET), socket.display().to_string()]),
        HandoffChannel::Stdin => argv.push(long(flag::HANDOFF_STDIN)),
    }
    argv.extend([long(flag::ENVIRONMENT_FILE), environment_file.display().to_string()]);
    argv.extend([long(flag::WORKDIR), workdir.display().to_string()]);
    if let Some(base) = git_base_url {
        argv.extend([long(flag::GIT_BASE_URL), base.to_owned()]);
    }
    argv
}

/// The longest unix socket path (`sun_path` holds 108 bytes with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// What the backend sends a warm runner: the task, as a cold runner would have been started with it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Handoff {
    /// The task's runner argv (`[entrypoint, "agent", "run", flags...]`, from
    /// [`crate::runner::task_spec`]); the warm runner reads the flags after `agent run`.
    pub argv: Vec<String>,
    /// The task's environment, added to the warm runner's own (later entries win).
    pub env: Vec<(String, String)>,
    /// The task's secret input (its workload token), which a cold runner reads on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret_input")]
    pub secret_input: Option<SecretInput>,
    /// A random word the runner prints after [`TAKEN_LINE`] once it has taken the task (not a
    /// secret); `None`: the backend has another way to know (a socket's answer, an engine's attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment's values may be settings the run was given; only the names are shown.
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Handoff")
            .field("argv", &self.argv)
            .field("env", &names)
            .field("secret_input", &self.secret_input)
            .field("receipt", &self.receipt)
            .finish()
    }
}

impl Handoff {
    /// The handoff as the one line a runner reads (JSON and a newline); an error if it is larger
    /// than a runner takes ([`MAX_HANDOFF_BYTES`]): such a task must start cold.
    pub fn to_line(&self) -> Result<Vec<u8>, String> {
        let mut line = serde_json::to_vec(self).map_err(|e| format!("could not encode the handoff: {e}"))?;
        line.push(b'\n');
        if line.len() > MAX_HANDOFF_BYTES {
            return Err(format!("the task is too large for a handoff ({} bytes)", line.len()));
        }
        Ok(line)
    }

    /// The flags after `agent run` in [`Handoff::argv`], or `None` if the argv is not a runner's.
    pub fn run_flags(&self) -> Option<Vec<String>> {
        let position = self
            .argv
            .windows(crate::runner::RUN_SUBCOMMAND.len())
            .position(|w| w.iter().map(String::as_str).eq(crate::runner::RUN_SUBCOMMAND))?;
        Some(self.argv[position + crate::runner::RUN_SUBCOMMAND.len()..].to_vec())
    }
}

/// The warm runner's answer: it took the task (and will run it), or why not.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandoffAnswer {
    /// Whether the task was taken.
    pub accepted: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

mod secret_input {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::task::SecretInput;

    pub(super) fn serialize<S: Serializer>(value: &Option<SecretInput>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(v.expose()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretInput>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretInput::new))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_handoff_round_trips_and_its_debug_shows_no_value() {
        let handoff = Handoff {
            argv: ["/agent/oz", "agent", "run", "--task-id", "run-1"].map(String::from).to_vec(),
            env: vec![("SETTING".into(), "hidden-value".into())],
            secret_input: Some(SecretInput::new("ozw_secret")),
            receipt: None,
        };
        let text = serde_json::to_string(&handoff).unwrap();
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), handoff);
        let shown = format!("{handoff:?}");
        assert!(!shown.contains("ozw_secret") && !shown.contains("hidden-value"), "{shown}");
        assert_eq!(handoff.run_flags().unwrap(), ["--task-id", "run-1"]);
        let mut log = PreparationLog::default();
        for n in 0..7 {
            assert!(!log.line(&format!("step {n}")));
        }
        assert!(log.line("oz agent warm: ready; waiting for the task on stdin"));
        assert_eq!(
            log.failure("exit code 3"),
            "the warm sandbox's preparation failed (exit code 3): step 2 / step 3 / step 4 / step 5 / step 6"
        );
        let foreign = Handoff { argv: vec!["/bin/true".into()], env: vec![], secret_input: None, receipt: None };
        assert!(foreign.run_flags().is_none());
        let line = handoff.to_line().unwrap();
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        let huge = Handoff { env: vec![("BIG".into(), "x".repeat(MAX_HANDOFF_BYTES))], ..handoff };
        assert!(huge.to_line().unwrap_err().contains("too large"));
    }
}
