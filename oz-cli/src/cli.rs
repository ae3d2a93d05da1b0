//! The `oz` command line: parsing and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oz_runner::args::EgressProxyArgs;
#[cfg(feature = "local-stack")]
use oz_worker::config::BackendKind;

/// oz: run coding agents on your own machines.
#[derive(Debug, Parser)]
#[command(name = "oz", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent commands.
    #[command(name = oz_core::runner::RUN_SUBCOMMAND[0])]
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Runs on a control plane: list, show, cancel, watch.
    #[cfg(feature = "api-client")]
    Run {
        #[command(subcommand)]
        command: crate::remote::runs::RunCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// Schedules: runs started by a cron expression.
    #[cfg(feature = "api-client")]
    Schedule {
        #[command(subcommand)]
        command: crate::remote::schedules::ScheduleCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// Environments: the repos, image, setup commands and variables a run starts from.
    #[cfg(feature = "api-client")]
    Environment {
        #[command(subcommand)]
        command: crate::remote::environments::EnvironmentCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// Workers: the connected workers, their load and their warm pools.
    #[cfg(feature = "api-client")]
    Worker {
        #[command(subcommand)]
        command: crate::remote::workers::WorkerCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// Integrations: webhooks, Slack, Linear and GitHub triggers that start runs.
    #[cfg(feature = "api-client")]
    Integration {
        #[command(subcommand)]
        command: crate::remote::integrations::IntegrationCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// Team secrets: write-only values runs and integrations name (values read from stdin).
    #[cfg(feature = "api-client")]
    Secret {
        #[command(subcommand)]
        command: crate::remote::secrets::SecretCommand,
        #[command(flatten)]
        api: crate::remote::ApiOpts,
    },
    /// The local stack: a control plane and a worker on this machine.
    #[cfg(feature = "local-stack")]
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[cfg(feature = "local-stack")]
#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Start the control plane (SQLite) and a worker (Direct backend) until Ctrl-C.
    Up {
        /// Where the database and the workspaces live.
        #[arg(long, env = "OZ_DATA_DIR", default_value = ".oz-local")]
        data_dir: std::path::PathBuf,
        /// Where the control plane listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also write the session's API key to this file (mode 0600); by default it is only printed.
        #[arg(long)]
        api_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Start the stack, run a sample agent task end to end, show the result and the timings, stop.
    Quickstart {
        /// Where the database, the API key, the sample repo and the workspaces live.
        #[arg(long, env = "OZ_DATA_DIR", default_value = ".oz-local")]
        data_dir: std::path::PathBuf,
        #[command(flatten)]
        backend: BackendArgs,
        /// The image of the sample run (Docker backend; it needs git): default `oz-test/debian-git:latest`,
        /// which `.ci/prepare-docker.sh` builds.
        #[arg(long)]
        image: Option<String>,
        /// Then run it again from a warm sandbox, prepared meanwhile (Direct backend), and show both timings.
        #[arg(long)]
        warm: bool,
    },
}

/// Which backend the local worker uses.
#[cfg(feature = "local-stack")]
#[derive(Debug, clap::Args)]
struct BackendArgs {
    /// `direct` (processes here; the default) or `docker` (containers on the local engine).
    #[arg(long, default_value = "direct", value_parser = local_backend_kind())]
    backend: BackendKind,
    /// The static `oz` for the Docker sidecar (default: `OZ_SIDECAR_BINARY`, else `target/sidecar/oz`
    /// from `scripts/build-sidecar-oz.sh`).
    #[arg(long)]
    sidecar: Option<std::path::PathBuf>,
}

/// The worker's `BackendKind`, limited to the backends the local stack runs.
#[cfg(feature = "local-stack")]
fn local_backend_kind() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["direct", "docker"]).map(|name| match name.as_str() {
        "docker" => BackendKind::Docker,
        _ => BackendKind::Direct,
    })
}

#[cfg(feature = "local-stack")]
impl BackendArgs {
    fn choice(&self) -> Result<crate::local::LocalBackend, String> {
        match self.backend {
            BackendKind::Direct => return Ok(crate::local::LocalBackend::Direct),
            BackendKind::Docker => {}
            BackendKind::Kubernetes => {
                return Err("the local stack runs on the direct or docker backend; for Kubernetes, run oz-agent-worker --backend kubernetes".into());
            }
        }
        let sidecar =
            self.sidecar.clone().or_else(crate::local::LocalBackend::default_sidecar).ok_or(
                "the Docker backend needs the static oz: run scripts/build-sidecar-oz.sh, or pass --sidecar PATH",
            )?;
        Ok(crate::local::LocalBackend::Docker { sidecar, mounts: Vec::new() })
    }
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Prepare the workspace (clone, setup) and run the agent here; see `oz agent run --help`.
    #[command(name = oz_core::runner::RUN_SUBCOMMAND[1], disable_help_flag = true)]
    Run {
        /// Arguments; unknown flags are warned about, not fatal.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        raw: Vec<String>,
    },
    /// Start a run on the control plane, print its id, and follow it live until it ends.
    #[cfg(feature = "api-client")]
    RunCloud(Box<crate::remote::runs::RunCloudArgs>),
    /// The first half of a run in a warm sandbox: clone and set up, then wait for the task (backends
    /// run it; people do not).
    #[command(name = oz_core::warm::WARM_SUBCOMMAND[1])]
    Warm(oz_runner::args::WarmArgs),
    /// The egress proxy of an isolated task network (the Docker backend runs it; people do not).
    #[command(name = oz_core::egress::PROXY_SUBCOMMAND[1])]
    EgressProxy(EgressProxyArgs),
    /// Git credential helper used by `oz agent run` (git calls it; people do not).
    GitCredential {
        /// get, store or erase (git's), or token (prints the token for HOST).
        operation: String,
        /// With `token`: the host.
        host: Option<String>,
    },
}

/// Runs the `oz` command line with `std::env::args()`. Programs that launch the runner from their own
/// binary (embedding a backend, say) call this when invoked as `<their binary> agent ...`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "local-stack")]
        Command::Local { command } => {
            oz_runner::init_tracing();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("oz: could not start the async runtime: {e}");
                    return exit(1);
                }
            };
            let result = runtime.block_on(async move {
                match command {
                    LocalCommand::Up { data_dir, listen, api_key_file, backend } => {
                        crate::local::up(&data_dir, &listen, backend.choice()?, api_key_file.as_deref())
                            .await
                            .map(|()| true)
                    }
                    LocalCommand::Quickstart { data_dir, backend, image, warm } => {
                        let choice = backend.choice()?;
                        let image = match (&choice, image) {
                            (crate::local::LocalBackend::Docker { .. }, None) => {
                                Some("oz-test/debian-git:latest".to_owned())
                            }
                            (_, image) => image,
                        };
                        crate::local::quickstart(&data_dir, choice, image, warm).await
                    }
                }
            });
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => exit(1),
                Err(e) => {
                    eprintln!("oz: {e}");
                    exit(1)
                }
            }
        }
        #[cfg(feature = "api-client")]
        Command::Agent { command: AgentCommand::RunCloud(args) } => {
            crate::remote::run_command(crate::remote::runs::run_cloud(*args))
        }
        #[cfg(feature = "api-client")]
        Command::Run { command, api } => crate::remote::run_command(crate::remote::runs::run(command, api)),
        #[cfg(feature = "api-client")]
        Command::Schedule { command, api } => crate::remote::run_command(crate::remote::schedules::run(command, api)),
        #[cfg(feature = "api-client")]
        Command::Environment { command, api } => {
            crate::remote::run_command(crate::remote::environments::run(command, api))
        }
        #[cfg(feature = "api-client")]
        Command::Worker { command, api } => crate::remote::run_command(crate::remote::workers::run(command, api)),
        #[cfg(feature = "api-client")]
        Command::Integration { command, api } => {
            crate::remote::run_command(crate::remote::integrations::run(command, api))
        }
        #[cfg(feature = "api-client")]
        Command::Secret { command, api } => crate::remote::run_command(crate::remote::secrets::run(command, api)),
        Command::Agent { command: AgentCommand::EgressProxy(args) } => {
            exit(oz_runner::egress_proxy_main(args.listen, args.policy()))
        }
        Command::Agent { command: AgentCommand::GitCredential { operation, host } } => {
            exit(oz_runner::credentials::helper_main(&operation, host.as_deref()))
        }
        Command::Agent { command: AgentCommand::Run { raw } } => exit(oz_runner::run_main(raw)),
        Command::Agent { command: AgentCommand::Warm(args) } => exit(oz_runner::warm::warm_main(args)),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// The worker's argv for the runner, through this binary's real command line and then the
    /// runner's parser: every field arrives, nothing is unknown.
    #[test]
    fn the_runner_argv_a_worker_writes_reaches_the_runner() {
        let invocation = oz_core::runner::RunnerInvocation {
            task_id: "run-1".into(),
            sandboxed: true,
            server_root_url: "http://cp:8080".into(),
            environment: Some("env-1".into()),
            harness: Some(oz_core::runner::HarnessKind::Codex),
            idle_on_complete: Some(None),
            additional_args: vec!["--future-flag".into()],
            ..Default::default()
        };
        let cli = Cli::try_parse_from(invocation.to_argv("oz")).unwrap();
        let Command::Agent { command: AgentCommand::Run { raw } } = cli.command else { panic!("not agent run") };
        let (args, warnings) = oz_runner::args::parse_lenient(raw).unwrap();
        assert_eq!(args.task_id.as_deref(), Some("run-1"));
        assert!(args.sandboxed);
        assert_eq!(args.environment.as_deref(), Some("env-1"));
        assert_eq!(args.harness, "codex");
        assert_eq!(warnings.len(), 1, "only the additional flag is unknown: {warnings:?}");
    }

    /// The Docker backend's argv for the egress proxy, through this binary's real command line.
    #[test]
    fn the_egress_proxy_argv_the_docker_backend_writes_reaches_the_proxy() {
        let policy = oz_core::egress::EgressPolicy {
            domains: vec!["github.com".into()],
            allowed_ranges: vec!["10.20.0.0/16".parse().unwrap()],
        };
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], oz_core::egress::PROXY_PORT));
        let mut argv = vec!["oz".to_owned()];
        argv.extend(policy.proxy_argv(listen));
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Agent { command: AgentCommand::EgressProxy(args) } = cli.command else { panic!("not the proxy") };
        assert_eq!(args.listen, listen);
        assert_eq!(args.policy(), policy);
    }
}
