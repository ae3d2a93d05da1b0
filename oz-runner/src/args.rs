//! The flags of `oz agent run`, as Oz names them, parsed leniently: a flag this version does not know
//! (from a newer worker) is warned about and skipped, not fatal.

use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};
use std::net::SocketAddr;

use oz_core::egress::{EgressPolicy, IpNet, PROXY_PORT, proxy_flag};
use oz_core::runner::{env, flag};

/// The format of the runner's own event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines; the harness's output passes through.
    #[default]
    Text,
    /// One JSON object per line (the same shape the control plane receives).
    Ndjson,
    /// Accepted as a synonym of ndjson.
    Json,
}

/// `oz agent run`: prepare the workspace and run the agent, here or inside a sandbox.
#[derive(Clone, Debug, Default, Args)]
pub struct RunArgs {
    /// The task (run) id; with --server-root-url and OZ_WORKLOAD_TOKEN the run reports to the control plane.
    #[arg(long = flag::TASK_ID)]
    pub task_id: Option<String>,
    /// Set by workers: we run inside a managed sandbox.
    #[arg(long = flag::SANDBOXED)]
    pub sandboxed: bool,
    /// The control plane's root URL (`http://127.0.0.1:8080`).
    #[arg(long = flag::SERVER_ROOT_URL, env = env::SERVER_ROOT_URL)]
    pub server_root_url: Option<String>,
    /// The environment id to prepare (fetched from the control plane).
    #[arg(long = flag::ENVIRONMENT)]
    pub environment: Option<String>,
    /// Our extension: an environment definition in a JSON file (name, github_repos, setup_commands, ...).
    #[arg(long, value_name = "PATH")]
    pub environment_file: Option<PathBuf>,
    /// The model for the harness.
    #[arg(long = flag::MODEL)]
    pub model: Option<String>,
    /// A skill to run.
    #[arg(long = flag::SKILL)]
    pub skill: Option<String>,
    /// MCP servers, as JSON (passed to the harness in OZ_MCP_SERVERS).
    #[arg(long = flag::MCP)]
    pub mcp: Option<String>,
    /// The harness: command, claude, codex, gemini, or oz (the configured default). Read as text and
    /// checked by the run (an unknown one ends the run with a reported failure, not a usage error).
    #[arg(long = flag::HARNESS, default_value = "oz")]
    pub harness: String,
    /// Session sharing: from a worker, the run's `session_sharing` as JSON (the control plane
    /// applies it); for a run this command registers itself, `--share` targets as Oz spells them
    /// (alone: `self`; `team`, `team:edit`, a user, `USER:edit`), repeatable.
    #[arg(long = flag::SHARE, num_args = 0..=1, default_missing_value = "self")]
    pub share: Vec<String>,
    /// Stay up after completion for this long (accepted; the runner exits when the agent does).
    #[arg(long = flag::IDLE_ON_COMPLETE, num_args = 0..=1, default_missing_value = "0s")]
    pub idle_on_complete: Option<String>,
    /// The prompt; else OZ_PROMPT; else the run's prompt from the control plane.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The folder to clone into and run in (default: the current directory).
    #[arg(long, value_name = "PATH")]
    pub workdir: Option<PathBuf>,
    /// Where repos are cloned from: `<base>/<owner>/<repo>` (default `https://github.com`).
    #[arg(long, env = env::GIT_BASE_URL, default_value = "https://github.com")]
    pub git_base_url: String,
    /// How the runner's own events are printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// The command harness's argv (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `oz agent egress-proxy`: the proxy of an isolated task network (the Docker backend runs it with
/// [`EgressPolicy::proxy_argv`], whose flags these are).
#[derive(Clone, Debug, Args)]
pub struct EgressProxyArgs {
    /// Where to listen.
    #[arg(long = proxy_flag::LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)))]
    pub listen: SocketAddr,
    /// An allowed domain: `example.com`, or `*.example.com` for its subdomains (repeatable).
    #[arg(long = proxy_flag::ALLOW)]
    pub allow: Vec<String>,
    /// A non-public range to allow nonetheless, e.g. `10.20.0.0/16` (repeatable).
    #[arg(long = proxy_flag::ALLOW_RANGE)]
    pub allow_range: Vec<IpNet>,
}

impl EgressProxyArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy { domains: self.allow.clone(), allowed_ranges: self.allow_range.clone() }
    }
}

/// Only for `--help`: the flags of `oz agent run`.
#[derive(Debug, Parser)]
#[command(
    name = "oz agent run",
    about = "Prepare the workspace (clone repos, run setup commands) and run the agent harness here.",
    after_help = "Exit status: the harness's; 2 for bad input; 3 when a repo could not be cloned; 4 when a setup command failed; 130 when cancelled."
)]
struct RunHelp {
    #[command(flatten)]
    args: RunArgs,
}

/// Prints the help of `oz agent run` (its flags are parsed leniently, so clap never prints it).
pub fn print_help() {
    use clap::CommandFactory;
    let _ = <RunHelp as CommandFactory>::command().print_help();
}

/// A wrapper so `RunArgs` can be parsed on its own (tests, lenient parsing).
#[derive(Debug, Parser)]
#[command(name = "oz agent run", no_binary_name = true)]
struct Standalone {
    #[command(flatten)]
    args: RunArgs,
}

/// Parses `oz agent run`'s arguments, dropping unknown flags (and the value that follows one, if it
/// is not itself a flag). Returns the args and a warning per dropped flag.
pub fn parse_lenient(raw: Vec<String>) -> Result<(RunArgs, Vec<String>), clap::Error> {
    let mut argv = raw;
    let mut warnings = Vec::new();
    for _ in 0..64 {
        match Standalone::try_parse_from(&argv) {
            Ok(parsed) => return Ok((parsed.args, warnings)),
            Err(e) if e.kind() == clap::error::ErrorKind::UnknownArgument => {
                let Some(clap::error::ContextValue::String(bad)) = e.get(clap::error::ContextKind::InvalidArg).cloned()
                else {
                    return Err(e);
                };
                let separator = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
                let Some(pos) = argv[..separator].iter().position(|a| *a == bad || a.starts_with(&format!("{bad}=")))
                else {
                    return Err(e);
                };
                let flag = argv.remove(pos);
                let mut dropped = flag.clone();
                if !flag.contains('=')
                    && pos < argv.len().min(separator.saturating_sub(1))
                    && !argv[pos].starts_with('-')
                {
                    dropped.push(' ');
                    dropped.push_str(&argv.remove(pos));
                }
                warnings.push(format!("ignoring unknown flag {dropped:?} (from a newer oz version?)"));
            }
            Err(e) => return Err(e),
        }
    }
    Standalone::try_parse_from(&argv).map(|p| (p.args, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_the_oz_worker_command_line() {
        let (args, warnings) = parse_lenient(v(&[
            "--task-id",
            "run-1",
            "--sandboxed",
            "--server-root-url",
            "http://127.0.0.1:9",
            "--environment",
            "env-1",
            "--model",
            "m",
            "--mcp",
            "{}",
            "--harness",
            "claude",
            "--share",
            "team",
            "--idle-on-complete",
        ]))
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(args.task_id.as_deref(), Some("run-1"));
        assert!(args.sandboxed);
        assert_eq!(args.environment.as_deref(), Some("env-1"));
        assert_eq!(args.harness, "claude");
        assert_eq!(args.idle_on_complete.as_deref(), Some("0s"));
    }

    #[test]
    fn unknown_flags_are_warned_about_not_fatal() {
        let (args, warnings) = parse_lenient(v(&[
            "--future-flag",
            "value",
            "--task-id",
            "t",
            "--other-new=1",
            "--new-switch",
            "--harness",
            "command",
            "--",
            "./agent.sh",
            "--future-flag",
        ]))
        .unwrap();
        assert_eq!(args.task_id.as_deref(), Some("t"));
        assert_eq!(args.command, ["./agent.sh", "--future-flag"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("--future-flag value"));
    }

    /// The worker writes the runner's argv from the contract's type; the runner's parser reads every
    /// field back, with nothing unknown.
    #[test]
    fn the_runner_invocation_round_trips_through_the_parser() {
        use oz_core::runner::{HarnessKind, RunnerInvocation};
        let invocation = RunnerInvocation {
            task_id: "run-1".into(),
            sandboxed: true,
            server_root_url: "http://cp:8080".into(),
            environment: Some("env-1".into()),
            model: Some("m".into()),
            skill: Some("s".into()),
            mcp: Some(r#"{"x":{"url":"u"}}"#.into()),
            harness: Some(HarnessKind::Gemini),
            share: Some(r#"{"public_access":"VIEWER"}"#.into()),
            idle_on_complete: Some(Some("5m".into())),
            additional_args: vec![],
        };
        let argv = invocation.to_argv("/agent/entrypoint.sh");
        assert_eq!(argv[..3], ["/agent/entrypoint.sh", "agent", "run"]);
        let (args, warnings) = parse_lenient(argv[3..].to_vec()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(args.task_id.as_deref(), Some("run-1"));
        assert!(args.sandboxed);
        assert_eq!(args.server_root_url.as_deref(), Some("http://cp:8080"));
        assert_eq!(args.environment, invocation.environment);
        assert_eq!(args.model, invocation.model);
        assert_eq!(args.skill, invocation.skill);
        assert_eq!(args.mcp, invocation.mcp);
        assert_eq!(args.harness.parse::<HarnessKind>().unwrap(), HarnessKind::Gemini);
        assert_eq!(args.share.first().cloned(), invocation.share);
        assert_eq!(args.idle_on_complete.as_deref(), Some("5m"));
        // Oz's bare `--idle-on-complete`, and no harness: the defaults.
        let bare = RunnerInvocation { idle_on_complete: Some(None), harness: None, ..invocation };
        let (args, warnings) = parse_lenient(bare.to_argv("oz")[3..].to_vec()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(args.idle_on_complete.as_deref(), Some("0s"));
        assert_eq!(args.harness.parse::<HarnessKind>().unwrap(), HarnessKind::Oz);
    }

    /// The Docker backend builds the proxy's argv from the policy; these flags read it back.
    #[test]
    fn the_egress_proxy_argv_round_trips_through_its_flags() {
        #[derive(Debug, Parser)]
        #[command(no_binary_name = true)]
        enum Top {
            Agent {
                #[command(subcommand)]
                command: Sub,
            },
        }
        #[derive(Debug, clap::Subcommand)]
        enum Sub {
            EgressProxy(EgressProxyArgs),
        }
        let policy = EgressPolicy {
            domains: vec!["github.com".into(), "*.githubusercontent.com".into()],
            allowed_ranges: vec!["10.20.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        let argv = policy.proxy_argv("0.0.0.0:3128".parse().unwrap());
        let Top::Agent { command: Sub::EgressProxy(parsed) } = Top::try_parse_from(&argv).unwrap();
        assert_eq!(parsed.listen, SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
        assert_eq!(parsed.policy(), policy);
    }

    #[test]
    fn the_warm_argv_of_either_channel_parses_and_asks_for_exactly_one() {
        #[derive(Debug, Parser)]
        #[command(no_binary_name = true)]
        struct Warm {
            #[command(flatten)]
            args: WarmArgs,
        }
        use oz_core::warm::{HandoffChannel, warm_argv};
        let (env, workdir) = (std::path::Path::new("/e.json"), std::path::Path::new("/w"));
        for channel in [HandoffChannel::Socket("/s/handoff.sock".into()), HandoffChannel::Stdin] {
            let argv = warm_argv("oz", &channel, env, workdir, Some("file:///git"));
            let parsed = Warm::try_parse_from(&argv[3..]).unwrap().args;
            assert_eq!(parsed.channel(), channel);
            assert_eq!((parsed.environment_file.as_path(), parsed.workdir.as_path()), (env, workdir));
            assert_eq!(parsed.git_base_url, "file:///git");
        }
        let rest = ["--environment-file", "/e.json", "--workdir", "/w"];
        assert!(Warm::try_parse_from(rest).is_err(), "one channel is required");
        let both = [&["--socket", "/s", "--handoff-stdin"][..], &rest[..]].concat();
        assert!(Warm::try_parse_from(both).is_err(), "only one channel");
    }

    #[test]
    fn a_bad_value_for_a_known_flag_is_still_an_error() {
        assert!(parse_lenient(v(&["--output-format", "yaml"])).is_err());
    }
}

/// `oz agent warm`: prepare a warm sandbox (clone, setup) holding no credential and no task, then wait
/// on a unix socket, or on stdin, for the one task it will run (see `oz_core::warm`).
#[derive(Clone, Debug, Args)]
#[command(group(clap::ArgGroup::new("handoff").required(true).multiple(false).args(["socket", "handoff_stdin"])))]
pub struct WarmArgs {
    /// The unix socket to wait on for the task (its folder also gets the preparation's log).
    #[arg(long = oz_core::warm::flag::SOCKET, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read the task from stdin (one JSON line) instead; the output stays on stdout and stderr.
    #[arg(long = oz_core::warm::flag::HANDOFF_STDIN)]
    pub handoff_stdin: bool,
    /// The environment to prepare, as a JSON file.
    #[arg(long = oz_core::warm::flag::ENVIRONMENT_FILE, value_name = "PATH")]
    pub environment_file: PathBuf,
    /// Where the repos are cloned from.
    #[arg(long = oz_core::warm::flag::GIT_BASE_URL, env = env::GIT_BASE_URL, default_value = "https://github.com")]
    pub git_base_url: String,
    /// The folder to clone into and run the setup commands in.
    #[arg(long = oz_core::warm::flag::WORKDIR, value_name = "PATH")]
    pub workdir: PathBuf,
}

impl WarmArgs {
    /// Where the handoff comes from.
    pub fn channel(&self) -> oz_core::warm::HandoffChannel {
        match &self.socket {
            Some(socket) => oz_core::warm::HandoffChannel::Socket(socket.clone()),
            None => oz_core::warm::HandoffChannel::Stdin,
        }
    }
}
