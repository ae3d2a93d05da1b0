//! The contract between a worker and the runner (`oz agent run`) it starts in every sandbox, written
//! once: the runner's command line ([`RunnerInvocation`], whose flags the runner's parser reads by
//! the same [`flag`] names), the variables it reads and sets ([`env`](mod@env)), the harness kinds
//! ([`HarnessKind`]), and what a worker makes of an assignment ([`task_spec`]: pure, so a custom
//! worker gets exactly what `oz-agent-worker` does).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::failure::FailureReason;
use crate::task::TaskSpec;
use crate::wire::worker::TaskAssignment;

/// The names of the variables of the runner contract.
pub mod env {
    /// The run's workload token: the runner reports with it; never passed on to setup or the harness.
    pub const WORKLOAD_TOKEN: &str = "OZ_WORKLOAD_TOKEN";
    /// Git credentials for the runner's credential helper (JSON); never passed on.
    pub const GIT_CREDENTIALS: &str = "OZ_GIT_CREDENTIALS";
    /// The socket of the runner's git credential helper (set for setup and the harness).
    pub const GIT_CREDENTIAL_SOCKET: &str = "OZ_GIT_CREDENTIAL_SOCKET";
    /// An API key (the SDK's and the CLI's, as Oz's): with `--server-root-url` and no task id,
    /// `oz agent run` registers its run with it (an unmanaged run). Never passed to a child.
    pub const API_KEY: &str = "WARP_API_KEY";
    /// The prompt: read by the runner when `--prompt` is absent; set for the harness.
    pub const PROMPT: &str = "OZ_PROMPT";
    /// Where the harness may write artifacts, one JSON object per line.
    pub const ARTIFACTS_FILE: &str = "OZ_ARTIFACTS_FILE";
    /// A file the runner appends each follow-up to while the harness runs, one JSON line each
    /// (`{"message": "...", "mode": ..., "by": user id}`, `oz_core::wire::api::FollowupEvent`); a `command`
    /// harness reads it to be steered. It exists (empty) when the harness starts.
    pub const FOLLOWUP_FILE: &str = "OZ_FOLLOWUP_FILE";
    /// A folder that outlives the execution: what the harness keeps in it is restored in the next
    /// execution of the same run (a follow-up to the run after it ended), so an agent can go on
    /// with its conversation. Set for the harness; empty in a run's first execution.
    pub const CONVERSATION_DIR: &str = "OZ_CONVERSATION_DIR";
    /// Which execution of the run this is, from 1 (2 and more: it continues the run after it
    /// ended, with the follow-up as its prompt). Set for the harness.
    pub const EXECUTION: &str = "OZ_EXECUTION";
    /// The run id, in every process of a task (the Direct backend finds a task's processes by it).
    pub const RUN_ID: &str = "OZ_RUN_ID";
    /// The MCP servers (JSON), for the harness.
    pub const MCP_SERVERS: &str = "OZ_MCP_SERVERS";
    /// The `command` harness's argv as a JSON array (set by the worker from the agent config).
    pub const HARNESS_COMMAND: &str = "OZ_HARNESS_COMMAND";
    /// The harness `oz` maps to (`claude`, `codex`, `gemini`, `command`; default `command`).
    pub const DEFAULT_HARNESS: &str = "OZ_DEFAULT_HARNESS";
    /// Where repos are cloned from (`<base>/<owner>/<repo>`; default `https://github.com`).
    pub const GIT_BASE_URL: &str = "OZ_GIT_BASE_URL";
    /// A folder of bare mirrors, `<owner>/<repo>.git` ([`super::mirror_of`]), kept by the worker
    /// and read-only to the sandbox; a clone references its repo's mirror and fetches only what is
    /// newer.
    pub const GIT_MIRROR_DIR: &str = "OZ_GIT_MIRROR_DIR";
    /// A folder that persists across the sandboxes of one environment, for package caches (npm,
    /// pip, cargo): setup commands and agents point their tools at it. Set only when the worker
    /// keeps package caches (`package_caches:`).
    pub const CACHE_DIR: &str = "OZ_CACHE_DIR";
    /// The control plane's root URL (Oz's name).
    pub const SERVER_ROOT_URL: &str = "WARP_SERVER_ROOT_URL";
    /// The task id (Oz's name).
    pub const TASK_ID: &str = "TASK_ID";
    /// Set to `0` so git never prompts.
    pub const GIT_TERMINAL_PROMPT: &str = "GIT_TERMINAL_PROMPT";
    /// Set to `1` so `gh` never prompts.
    pub const GH_PROMPT_DISABLED: &str = "GH_PROMPT_DISABLED";
    /// How many seconds the runner waits at its end for the control plane to take its last reports
    /// (default 120).
    pub const REPORT_FLUSH_SECS: &str = "OZ_REPORT_FLUSH_SECS";
    /// Where the task's secret input is (`stdin`, or a file's path); see `oz_core::task::SecretInput`.
    pub const SECRET_INPUT: &str = "OZ_SECRET_INPUT";
    /// How many seconds the runner waits for its secret input on stdin before it gives up with
    /// [`super::EXIT_NO_SECRET_INPUT`] (default [`super::SECRET_INPUT_WAIT`]).
    pub const SECRET_INPUT_WAIT_SECS: &str = "OZ_SECRET_INPUT_WAIT_SECS";
    /// The value of [`SECRET_INPUT`] for stdin.
    pub const SECRET_INPUT_STDIN: &str = "stdin";
    /// Set by the runner on itself when it re-executes without its secrets (its stdin then holds
    /// them); never taken from an assignment.
    pub const HANDOVER: &str = "OZ_HANDOVER";
    /// GitHub tokens by their usual names: taken as git credentials, never passed on.
    pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";
    /// `gh`'s token variable: never passed on (`gh` gets a token through the runner's helper).
    pub const GH_TOKEN: &str = "GH_TOKEN";
}

/// The mirror of `repo` in a folder of mirrors (see [`env::GIT_MIRROR_DIR`]).
pub fn mirror_of(root: &std::path::Path, repo: &crate::environment::RepoRef) -> std::path::PathBuf {
    root.join(&repo.owner).join(format!("{}.git", repo.repo))
}

/// Whether the mirror at `mirror` is a mirror of `url`: its configuration names `url` as its
/// `origin` (as `git clone --bare` wrote it). Mirrors are named by `owner/repo` only, so two
/// environments with the same `owner/repo` on different hosts would otherwise share one: a mirror of
/// another URL is neither fetched from this one nor given to its sandboxes nor cloned from.
pub fn mirror_serves(mirror: &std::path::Path, url: &str) -> bool {
    let Ok(config) = std::fs::read_to_string(mirror.join("config")) else { return false };
    let mut in_origin = false;
    for line in config.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[') {
            // The section's name in any case, its subsection as written (git's rules).
            let (name, sub) = section.split_once(' ').unwrap_or((section, ""));
            in_origin = name.eq_ignore_ascii_case("remote") && sub.trim_end_matches(']').trim() == "\"origin\"";
        } else if in_origin
            && let Some((key, value)) = line.split_once('=')
            && key.trim().eq_ignore_ascii_case("url")
        {
            return value.trim().trim_matches('"') == url;
        }
    }
    false
}

/// The clone URL of `repo` under the git base URL `base`.
pub fn clone_url(base: &str, repo: &crate::environment::RepoRef) -> String {
    format!("{}/{}/{}", base.trim_end_matches('/'), repo.owner, repo.repo)
}

/// Checks a git base URL: a known scheme and no credentials in it.
pub fn validate_base_url(base: &str) -> Result<(), String> {
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(format!("the git base URL {base:?} must start with https://, http://, ssh:// or file://"));
    };
    if !matches!(scheme, "https" | "http" | "ssh" | "file") {
        return Err(format!("the git base URL scheme {scheme:?} is not one of https, http, ssh, file"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') && scheme != "ssh" {
        return Err(
            "the git base URL must not carry credentials; they are handed to git through the credential helper".into(),
        );
    }
    if base.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the git base URL must not contain spaces or control characters".into());
    }
    Ok(())
}

/// Where repos come from when nothing says otherwise.
pub const DEFAULT_GIT_BASE_URL: &str = "https://github.com";

/// The git base URL an environment's repos are cloned from: its `OZ_GIT_BASE_URL`, else GitHub.
pub fn git_base_url(environment: &crate::environment::EnvironmentConfig) -> &str {
    environment.env_vars.get(env::GIT_BASE_URL).map_or(DEFAULT_GIT_BASE_URL, String::as_str)
}

/// The `oz` subcommand that is the runner.
pub const RUN_SUBCOMMAND: [&str; 2] = ["agent", "run"];

/// The long flags of `oz agent run` (without the leading `--`), as Oz names them.
pub mod flag {
    /// `--task-id <id>`.
    pub const TASK_ID: &str = "task-id";
    /// `--sandboxed`: inside a managed sandbox.
    pub const SANDBOXED: &str = "sandboxed";
    /// `--server-root-url <url>`.
    pub const SERVER_ROOT_URL: &str = "server-root-url";
    /// `--environment <id>`.
    pub const ENVIRONMENT: &str = "environment";
    /// `--model <id>`.
    pub const MODEL: &str = "model";
    /// `--skill <spec>`.
    pub const SKILL: &str = "skill";
    /// `--mcp <json>`.
    pub const MCP: &str = "mcp";
    /// `--harness <kind>`.
    pub const HARNESS: &str = "harness";
    /// `--share <json>`.
    pub const SHARE: &str = "share";
    /// `--idle-on-complete [<duration>]`.
    pub const IDLE_ON_COMPLETE: &str = "idle-on-complete";
}

/// The agent program a run asks for (`harness.type`), read case-insensitively. On the wire an
/// unknown name is kept as [`HarnessKind::Other`] (a newer peer's, or a stored run's from before the
/// API checked it) so the message around it still decodes; the API refuses unknown names in new
/// requests, and the runner refuses to run one (parsing with [`FromStr`] is strict).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HarnessKind {
    /// Any argv (ours): the prompt in `OZ_PROMPT` and on stdin.
    Command,
    /// Anthropic's Claude Code CLI.
    Claude,
    /// OpenAI's Codex CLI.
    Codex,
    /// Google's Gemini CLI.
    Gemini,
    /// Oz's own agent: here, the configured default (`OZ_DEFAULT_HARNESS`, else `command`).
    Oz,
    /// A name this version does not know, as it was given.
    Other(String),
}

impl HarnessKind {
    /// Every kind this version knows, in the order error messages list them.
    pub const KNOWN: [HarnessKind; 5] =
        [HarnessKind::Oz, HarnessKind::Claude, HarnessKind::Codex, HarnessKind::Gemini, HarnessKind::Command];

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            HarnessKind::Command => "command",
            HarnessKind::Claude => "claude",
            HarnessKind::Codex => "codex",
            HarnessKind::Gemini => "gemini",
            HarnessKind::Oz => "oz",
            HarnessKind::Other(name) => name,
        }
    }

    /// A known kind, or [`HarnessKind::Other`] with the name as given.
    pub fn lenient(name: &str) -> Self {
        name.parse().unwrap_or_else(|_| HarnessKind::Other(name.to_owned()))
    }

    /// Whether this version knows it.
    pub fn is_known(&self) -> bool {
        !matches!(self, HarnessKind::Other(_))
    }
}

impl fmt::Display for HarnessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A harness name that is none of [`HarnessKind::KNOWN`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown harness {0:?}: expected one of oz, claude, codex, gemini, command")]
pub struct UnknownHarness(pub String);

impl FromStr for HarnessKind {
    type Err = UnknownHarness;
    /// Strict: an unknown name is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HarnessKind::KNOWN
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownHarness(s.to_owned()))
    }
}

impl Serialize for HarnessKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HarnessKind {
    /// Lenient: an unknown name becomes [`HarnessKind::Other`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(HarnessKind::lenient(&raw))
    }
}

/// `oz agent run`'s command line as a worker writes it (Oz's order, pinned by tests):
/// `<entrypoint> agent run --task-id <id> --sandboxed --server-root-url <url> [--environment <id>]
/// [--model <m>] [--skill <s>] [--mcp <json>] [--harness <kind>] [--share <json>] --idle-on-complete
/// [<duration>] <additional args...>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerInvocation {
    /// The task (run) id.
    pub task_id: String,
    /// Inside a managed sandbox (always, from a worker).
    pub sandboxed: bool,
    /// The control plane's root URL.
    pub server_root_url: String,
    /// The environment to prepare.
    pub environment: Option<String>,
    /// The model.
    pub model: Option<String>,
    /// The skill.
    pub skill: Option<String>,
    /// The MCP servers, as JSON text.
    pub mcp: Option<String>,
    /// The harness.
    pub harness: Option<HarnessKind>,
    /// Session sharing, as JSON text.
    pub share: Option<String>,
    /// `--idle-on-complete`: absent (`None`), bare (`Some(None)`, as Oz sends it), or with a duration.
    pub idle_on_complete: Option<Option<String>>,
    /// Flags the server asked for (`additional_oz_args`), appended as they are.
    pub additional_args: Vec<String>,
}

impl RunnerInvocation {
    /// The argv, `entrypoint` first.
    pub fn to_argv(&self, entrypoint: &str) -> Vec<String> {
        let long = |name: &str| format!("--{name}");
        let mut argv = vec![entrypoint.to_owned()];
        argv.extend(RUN_SUBCOMMAND.iter().map(|s| (*s).to_owned()));
        argv.extend([long(flag::TASK_ID), self.task_id.clone()]);
        if self.sandboxed {
            argv.push(long(flag::SANDBOXED));
        }
        argv.extend([long(flag::SERVER_ROOT_URL), self.server_root_url.clone()]);
        let optional = [
            (flag::ENVIRONMENT, self.environment.clone()),
            (flag::MODEL, self.model.clone()),
            (flag::SKILL, self.skill.clone()),
            (flag::MCP, self.mcp.clone()),
            (flag::HARNESS, self.harness.as_ref().map(|h| h.as_str().to_owned())),
            (flag::SHARE, self.share.clone()),
        ];
        for (name, value) in optional {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                argv.extend([long(name), v]);
            }
        }
        if let Some(duration) = &self.idle_on_complete {
            argv.push(long(flag::IDLE_ON_COMPLETE));
            argv.extend(duration.clone());
        }
        argv.extend(self.additional_args.iter().cloned());
        argv
    }
}

/// What a worker adds to every task. Its `Debug` shows the variables' names, not their values.
#[derive(Clone, Default)]
pub struct CommandOptions {
    /// The program: `/agent/entrypoint.sh` in a container, the `oz` binary on a host.
    pub entrypoint: String,
    /// The control plane's root URL.
    pub server_root_url: String,
    /// `--idle-on-complete` with this duration (`None` = the bare flag, as Oz sends it).
    pub idle_on_complete: Option<String>,
    /// Variables from the worker's configuration (`-e KEY=VALUE`), added last.
    pub extra_env: Vec<(String, String)>,
    /// Whether a task's sandbox has its environment's package cache (the worker's
    /// `package_caches:`): [`crate::task::SandboxSpec::cache`] is the environment's id. The backend
    /// must be given the folder as well.
    pub package_caches: bool,
}

impl fmt::Debug for CommandOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.extra_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CommandOptions")
            .field("entrypoint", &self.entrypoint)
            .field("server_root_url", &self.server_root_url)
            .field("idle_on_complete", &self.idle_on_complete)
            .field("extra_env", &names)
            .field("package_caches", &self.package_caches)
            .finish()
    }
}

/// The runner's command line for `assignment`.
pub fn runner_invocation(assignment: &TaskAssignment, options: &CommandOptions) -> RunnerInvocation {
    let snapshot = assignment.task.agent_config_snapshot.as_ref();
    RunnerInvocation {
        task_id: assignment.task_id.clone(),
        sandboxed: true,
        server_root_url: options.server_root_url.clone(),
        environment: snapshot.and_then(|s| s.environment_id.clone()),
        model: snapshot.and_then(|s| s.model_id.clone()),
        skill: snapshot.and_then(|s| s.skill_spec.clone()),
        mcp: snapshot.and_then(|s| s.mcp_servers.as_ref()).map(|m| m.to_string()),
        harness: snapshot.and_then(|s| s.harness.as_ref()).and_then(|h| h.kind.clone()),
        share: snapshot.and_then(|s| s.session_sharing.as_ref()).and_then(|s| serde_json::to_string(s).ok()),
        idle_on_complete: Some(options.idle_on_complete.clone()),
        additional_args: assignment.additional_oz_args.clone(),
    }
}

/// What every runner's environment starts with, task or none: git and `gh` never prompt, and the
/// control plane's URL.
fn unattended_env(options: &CommandOptions) -> [(String, String); 3] {
    [
        (env::GIT_TERMINAL_PROMPT.to_owned(), "0".to_owned()),
        (env::GH_PROMPT_DISABLED.to_owned(), "1".to_owned()),
        (env::SERVER_ROOT_URL.to_owned(), options.server_root_url.clone()),
    ]
}

/// The environment of a warm sandbox's runner (`oz agent warm`), before any task: [`runner_env`]
/// without the task's parts. An environment's `settings` (its `env_vars`) stand where a task's
/// assignment puts them, and the worker's configured variables come last.
pub fn sandbox_env<'a>(
    options: &CommandOptions,
    settings: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = unattended_env(options).into();
    vars.extend(settings.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.extend(options.extra_env.iter().cloned());
    vars
}

/// The runner's environment for `assignment`, in Oz's order (later entries win): `TASK_ID`,
/// `GIT_TERMINAL_PROMPT=0`, `GH_PROMPT_DISABLED=1`, `WARP_SERVER_ROOT_URL`, the assignment's
/// `env_vars`, then `OZ_HARNESS_COMMAND` for the command harness, then the worker's configured
/// variables. The backend adds its own after these. [`task_spec`] then takes the workload token out
/// of it (into the task's secret input).
pub fn runner_env(assignment: &TaskAssignment, options: &CommandOptions) -> Vec<(String, String)> {
    let mut vars = vec![(env::TASK_ID.to_owned(), assignment.task_id.clone())];
    vars.extend(unattended_env(options));
    vars.extend(assignment.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let command = assignment
        .task
        .agent_config_snapshot
        .as_ref()
        .and_then(|s| s.harness.as_ref())
        .and_then(|h| h.command.as_ref());
    if let Some(argv) = command {
        vars.push((env::HARNESS_COMMAND.to_owned(), serde_json::to_string(argv).unwrap_or_default()));
    }
    vars.extend(options.extra_env.iter().cloned());
    vars
}

/// The runner's exit status when its secret input was empty: the sandbox lost its token (a worker
/// that died between starting the sandbox and handing the token over). Nothing of the run has
/// happened, so the worker hands such a task back to run again.
pub const EXIT_NO_SECRET_INPUT: i32 = 75;

/// How long the runner waits for its secret input on stdin. The worker writes it as soon as the
/// sandbox starts; a worker that died in between may leave stdin open with nobody to write or close
/// it, and a runner that waited forever would hold its run until the lease gave it up.
pub const SECRET_INPUT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The package cache key of a sandbox of `environment` (see [`CommandOptions::package_caches`]):
/// the environment's id, when caches are on and the id can name a folder (an id that cannot gets
/// no cache rather than a failed run). The one definition for tasks and warm sandboxes alike, so
/// that a task finds the sandbox prepared for it.
pub fn cache_key(options: &CommandOptions, environment: Option<&str>) -> Option<String> {
    let environment = environment.filter(|_| options.package_caches)?;
    match crate::run::validate_id("cache", environment) {
        Ok(()) => Some(environment.to_owned()),
        Err(e) => {
            tracing::warn!("environment {environment:?} gets no package cache: {e}");
            None
        }
    }
}

/// The task a backend runs for `assignment`: the runner's argv and environment, the image (the
/// assignment's; none = the backend's default), the execution id, the instance shape, and whether to
/// remove what it leaves. An image that does not parse is `invalid_image`.
pub fn task_spec(
    assignment: &TaskAssignment,
    options: &CommandOptions,
    cleanup: bool,
) -> Result<TaskSpec, BackendError> {
    let invocation = runner_invocation(assignment, options);
    let mut spec = TaskSpec::new(assignment.task_id.clone(), invocation.to_argv(&options.entrypoint));
    spec.sandbox.cache = cache_key(options, invocation.environment.as_deref());
    spec.sandbox.image = crate::image::ImageRef::parse_optional(assignment.docker_image.as_deref())
        .map_err(|e| BackendError::new(FailureReason::InvalidImage, e.to_string()))?;
    spec.execution_id = assignment.execution_id.clone();
    spec.env = runner_env(assignment, options);
    // Set by backends and the runner alone: one from an environment would make the runner skip its
    // re-execution or misread its stdin.
    spec.env.retain(|(k, _)| k != env::SECRET_INPUT && k != env::HANDOVER);
    // The workload token never goes into the environment: the backend hands it over outside it.
    if let Some(at) = spec.env.iter().rposition(|(k, _)| k == env::WORKLOAD_TOKEN) {
        let (_, token) = spec.env.remove(at);
        spec.env.retain(|(k, _)| k != env::WORKLOAD_TOKEN);
        spec.secret_input = Some(crate::task::SecretInput::new(token));
    }
    spec.cleanup = cleanup;
    if let Some(shape) = &assignment.instance_shape {
        spec.sandbox.resources.vcpus = Some(shape.vcpus);
        spec.sandbox.resources.memory_bytes = Some((shape.memory_gb * 1024.0 * 1024.0 * 1024.0) as u64);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_mirror_serves_the_url_it_was_cloned_from_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config"),
            "[core]\n\tbare = true\n[remote \"upstream\"]\n\turl = https://other.example/acme/app\n[remote \"origin\"]\n\turl = https://github.com/acme/app\n",
        )
        .unwrap();
        assert!(mirror_serves(dir.path(), "https://github.com/acme/app"));
        assert!(!mirror_serves(dir.path(), "https://other.example/acme/app"), "another remote's URL");
        assert!(!mirror_serves(dir.path(), "https://git.example.com/acme/app"));
        assert!(!mirror_serves(&dir.path().join("missing"), "https://github.com/acme/app"));
        std::fs::write(dir.path().join("config"), "[Remote \"origin\"]\r\n\tURL = \"https://github.com/acme/app\"\r\n")
            .unwrap();
        assert!(mirror_serves(dir.path(), "https://github.com/acme/app"), "git's spellings");
    }
    use crate::wire::worker::ServerMessage;

    fn assignment(snapshot: serde_json::Value) -> TaskAssignment {
        assignment_with(snapshot, serde_json::json!({}))
    }

    fn assignment_with(snapshot: serde_json::Value, extra: serde_json::Value) -> TaskAssignment {
        let mut data = serde_json::json!({
            "task_id": "run-1",
            "task": {"id": "run-1", "title": "t", "task_definition": {"prompt": "p"}, "created_at": "2026-01-01T00:00:00Z",
                     "updated_at": "2026-01-01T00:00:00Z", "owner": {"Type": "TEAM", "Id": "t"}, "agent_config_snapshot": snapshot},
            "env_vars": {"OZ_WORKLOAD_TOKEN": "ozw_x", "TASK_ID": "overridden?"},
            "additional_oz_args": ["--debug"]
        });
        for (k, v) in extra.as_object().unwrap() {
            data[k] = v.clone();
        }
        let json = serde_json::json!({"type": "task_assignment", "data": data});
        match ServerMessage::from_json(&json.to_string()).unwrap().unwrap() {
            ServerMessage::TaskAssignment(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_cache_key_is_the_environment_when_caches_are_on_and_it_can_name_a_folder() {
        let mut on = options();
        on.package_caches = true;
        assert_eq!(cache_key(&on, Some("env_3f2a")), Some("env_3f2a".into()));
        assert_eq!(cache_key(&on, Some("../other")), None, "a path gets no cache");
        assert_eq!(cache_key(&on, None), None);
        assert_eq!(cache_key(&options(), Some("env_3f2a")), None, "caches off");
    }

    fn options() -> CommandOptions {
        CommandOptions {
            entrypoint: "/agent/entrypoint.sh".into(),
            server_root_url: "http://cp:8080".into(),
            idle_on_complete: None,
            extra_env: vec![("EXTRA".into(), "1".into())],
            package_caches: false,
        }
    }

    fn argv(a: &TaskAssignment, o: &CommandOptions) -> Vec<String> {
        task_spec(a, o, true).unwrap().argv
    }

    /// The order of the flags is Oz's, pinned.
    #[test]
    fn argv_follows_the_oz_order() {
        let a = assignment(
            serde_json::json!({"environment_id": "env-1", "model_id": "m", "skill_spec": "s", "mcp_servers": {"x": {"url": "u"}},
            "harness": {"type": "claude"}, "session_sharing": {"public_access": "VIEWER"}}),
        );
        assert_eq!(
            argv(&a, &options()),
            [
                "/agent/entrypoint.sh",
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "http://cp:8080",
                "--environment",
                "env-1",
                "--model",
                "m",
                "--skill",
                "s",
                "--mcp",
                r#"{"x":{"url":"u"}}"#,
                "--harness",
                "claude",
                "--share",
                r#"{"public_access":"VIEWER"}"#,
                "--idle-on-complete",
                "--debug"
            ]
        );
        let bare = assignment(serde_json::json!({}));
        let mut o = options();
        o.idle_on_complete = Some("5m".into());
        assert_eq!(
            argv(&bare, &o),
            [
                "/agent/entrypoint.sh",
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "http://cp:8080",
                "--idle-on-complete",
                "5m",
                "--debug"
            ]
        );
    }

    #[test]
    fn env_follows_the_oz_order_and_later_wins() {
        let a = assignment(serde_json::json!({"harness": {"type": "command", "command": ["./agent.sh", "--fast"]}}));
        let env = task_spec(&a, &options(), true).unwrap().env;
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "TASK_ID",
                "GIT_TERMINAL_PROMPT",
                "GH_PROMPT_DISABLED",
                "WARP_SERVER_ROOT_URL",
                "TASK_ID",
                "OZ_HARNESS_COMMAND",
                "EXTRA"
            ]
        );
        assert_eq!(env[5].1, r#"["./agent.sh","--fast"]"#);
        // The workload token is the task's secret input, never in its environment.
        let spec = task_spec(&a, &options(), true).unwrap();
        assert_eq!(spec.secret_input.as_ref().map(crate::task::SecretInput::expose), Some("ozw_x"));
        assert!(!format!("{spec:?}").contains("ozw_x"), "Debug shows the token");
        // The runner's own markers cannot come from an environment.
        let mut marked = a.clone();
        marked.env_vars.insert("OZ_HANDOVER".into(), "stdin".into());
        marked.env_vars.insert("OZ_SECRET_INPUT".into(), "/etc/passwd".into());
        let spec = task_spec(&marked, &options(), true).unwrap();
        assert!(spec.env.iter().all(|(k, _)| k != "OZ_HANDOVER" && k != "OZ_SECRET_INPUT"), "{:?}", spec.env);
    }

    #[test]
    fn the_spec_carries_the_image_shape_execution_and_cleanup() {
        let a = assignment_with(
            serde_json::json!({}),
            serde_json::json!({"docker_image": "debian:12", "execution_id": "e-1", "instance_shape": {"vcpus": 2.0, "memory_gb": 1.5}}),
        );
        let spec = task_spec(&a, &options(), false).unwrap();
        assert_eq!(spec.sandbox.image.unwrap().to_string(), "debian:12");
        assert_eq!(spec.execution_id.as_deref(), Some("e-1"));
        assert_eq!(spec.sandbox.resources.vcpus, Some(2.0));
        assert_eq!(spec.sandbox.resources.memory_bytes, Some(1536 << 20));
        assert!(!spec.cleanup);
        let blank = assignment_with(serde_json::json!({}), serde_json::json!({"docker_image": "  "}));
        assert_eq!(task_spec(&blank, &options(), true).unwrap().sandbox.image, None, "blank means none");
        let bad = assignment_with(serde_json::json!({}), serde_json::json!({"docker_image": "../x"}));
        assert_eq!(task_spec(&bad, &options(), true).unwrap_err().reason, FailureReason::InvalidImage);
    }

    #[test]
    fn debug_output_never_shows_variable_values() {
        let mut o = options();
        o.extra_env = vec![("NPM_TOKEN".into(), "npm_s3cret".into())];
        let shown = format!("{o:?} {:?}", crate::task::EnvEntry::new("NPM_TOKEN", "npm_s3cret"));
        assert!(shown.contains("NPM_TOKEN") && !shown.contains("npm_s3cret"), "{shown}");
    }

    #[test]
    fn harness_kinds_read_any_case_and_keep_unknown_names_on_the_wire() {
        assert_eq!("Claude".parse::<HarnessKind>().unwrap(), HarnessKind::Claude);
        assert_eq!(serde_json::from_str::<HarnessKind>("\"GEMINI\"").unwrap(), HarnessKind::Gemini);
        assert_eq!(serde_json::to_string(&HarnessKind::Command).unwrap(), "\"command\"");
        let e = "vim".parse::<HarnessKind>().unwrap_err().to_string();
        assert!(e.contains("vim") && e.contains("claude"), "{e}");
        // A message naming a harness this version does not know still decodes, and says it again.
        let other = serde_json::from_str::<HarnessKind>("\"future-agent\"").unwrap();
        assert_eq!(other, HarnessKind::Other("future-agent".into()));
        assert!(!other.is_known());
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"future-agent\"");
    }

    /// An assignment from a newer server, naming a harness this worker does not know, becomes a task
    /// whose runner is told that name (and refuses it, reporting why), not an undecodable message.
    #[test]
    fn an_unknown_harness_passes_through_to_the_runner() {
        let a = assignment(serde_json::json!({"harness": {"type": "future-agent"}}));
        let argv = argv(&a, &options());
        let at = argv.iter().position(|x| x == "--harness").unwrap();
        assert_eq!(argv[at + 1], "future-agent");
    }
}
