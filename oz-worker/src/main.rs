//! `oz-agent-worker`: the worker daemon, with Oz's flags and YAML configuration.
//!
//! ```text
//! oz-agent-worker --worker-id my-worker --server-root-url http://127.0.0.1:8080 --backend direct
//! oz-agent-worker --config-file worker.yaml
//! ```
//!
//! Flags override the file, which overrides the defaults. SIGTERM or Ctrl-C: stop taking tasks, cancel
//! the running ones (reported as `graceful_shutdown`), deliver their outcomes, exit; a second signal
//! exits at once.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use oz_core::credentials::ApiKey;
use oz_worker::config::{BackendConfig, BackendKind, FileConfig, backend_config, parse_file, resolve_env};
use oz_worker::{CommandOptions, Worker, WorkerConfig};

/// The oz worker daemon.
#[derive(Debug, Parser)]
#[command(name = "oz-agent-worker", version)]
struct Flags {
    /// A YAML configuration file (strict: unknown keys are errors).
    #[arg(long)]
    config_file: Option<std::path::PathBuf>,
    /// The backend (default: the file's backend, else docker).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// The API key.
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// This worker's id (runs with this `worker_host` come here).
    #[arg(long)]
    worker_id: Option<String>,
    /// The worker WebSocket URL (default: derived from --server-root-url).
    #[arg(long)]
    web_socket_url: Option<String>,
    /// The control plane's root URL, also given to tasks.
    #[arg(long, env = "OZ_SERVER_ROOT_URL")]
    server_root_url: Option<String>,
    /// error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Keep what tasks leave behind.
    #[arg(long)]
    no_cleanup: bool,
    /// `HOST:CONTAINER[:ro|rw]` (Docker; repeatable).
    #[arg(short = 'v', long = "volumes")]
    volumes: Vec<String>,
    /// `KEY=VALUE`, or a bare `KEY` to pass on the worker's own value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// At most this many tasks at once; 0 = unlimited.
    #[arg(long)]
    max_concurrent_tasks: Option<usize>,
    /// Passed to the agent as `--idle-on-complete <duration>`.
    #[arg(long)]
    idle_on_complete: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Where messages not yet sent to the control plane are kept across restarts (default:
    /// `$STATE_DIRECTORY`, `$XDG_STATE_HOME/oz` or `~/.local/state/oz`, as `worker-<id>.outbox`).
    #[arg(long, env = "OZ_WORKER_OUTBOX_FILE", value_name = "FILE")]
    outbox_file: Option<std::path::PathBuf>,
}

/// The default place of the outbox file, made 0700 if missing; `None` (in memory only, said) when
/// there is no such place.
fn default_outbox_file(worker_id: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::var_os("STATE_DIRECTORY")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| std::path::PathBuf::from(d).join("oz")))
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state/oz")))?;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        Ok(()) => Some(dir.join(format!("worker-{worker_id}.outbox"))),
        Err(e) => {
            eprintln!(
                "oz-agent-worker: no place for the outbox in {} ({e}); unsent messages are lost if the worker dies",
                dir.display()
            );
            None
        }
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz-agent-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oz-agent-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<(), Box<dyn std::error::Error>> {
    let file = match &flags.config_file {
        Some(path) => {
            parse_file(&std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))?)?
        }
        None => FileConfig::default(),
    };
    let mut backend_config = backend_config(flags.backend, file.backend.clone())?;
    let kind = backend_config.kind();
    let worker_id = flags
        .worker_id
        .or(file.worker_id.clone())
        .ok_or("a worker id is required: --worker-id or worker_id in the file")?;
    let api_key = flags.api_key.ok_or("an API key is required: --api-key or WARP_API_KEY")?;
    let server_root_url = flags.server_root_url.ok_or("the control plane's URL is required: --server-root-url")?;
    let web_socket_url = flags.web_socket_url.unwrap_or_else(|| {
        let ws = server_root_url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        format!("{}/api/v1/selfhosted/worker/ws", ws.trim_end_matches('/'))
    });
    if !(web_socket_url.starts_with("ws://") || web_socket_url.starts_with("wss://")) {
        return Err(format!("the WebSocket URL {web_socket_url:?} must start with ws:// or wss://").into());
    }
    let cleanup = !flags.no_cleanup && file.cleanup.unwrap_or(true);
    let lookup = |k: &str| std::env::var(k).ok();
    // `-e` goes to the backend after the file's `environment`, so the flag wins for the same name.
    let flag_env = flags.env.iter().map(|spec| resolve_env(spec, lookup)).collect::<Result<Vec<_>, _>>()?;
    backend_config.add_flag_environment(flag_env);
    if !flags.volumes.is_empty() {
        match &mut backend_config {
            #[cfg(feature = "docker")]
            BackendConfig::Docker(docker) => docker.volumes.extend(flags.volumes.iter().cloned()),
            #[allow(unreachable_patterns)]
            _ => return Err("-v/--volumes applies to the docker backend only".into()),
        }
    }
    let mut extra_env = Vec::new();
    oz_worker::backends::check_mirror_claim(&backend_config, file.git_mirrors.as_deref())?;
    let package_caches = file.package_caches.is_some() || oz_worker::backends::has_package_cache_claim(&backend_config);
    if let Some(dir) = &file.package_caches {
        oz_worker::backends::mount_package_caches(&mut backend_config, dir, file.git_mirrors.as_deref())?;
    }
    if let Some(dir) = &file.git_mirrors {
        let in_sandbox = oz_worker::backends::mount_git_mirrors(&mut backend_config, dir)?;
        extra_env.push((oz_core::runner::env::GIT_MIRROR_DIR.to_owned(), in_sandbox));
    }
    let built = oz_worker::backends::build(backend_config, &worker_id, cleanup).await?;
    let backend = built.backend;
    let command = CommandOptions {
        entrypoint: built.runner_entrypoint,
        server_root_url,
        idle_on_complete: flags.idle_on_complete,
        extra_env,
        package_caches,
    };
    let mut config = WorkerConfig::new(worker_id.clone(), web_socket_url, ApiKey::new(api_key), command);
    config.cleanup = cleanup;
    config.max_concurrent_tasks = flags.max_concurrent_tasks.or(file.max_concurrent_tasks).unwrap_or(0);
    config.outbox_file = flags.outbox_file.clone().or_else(|| default_outbox_file(&worker_id));
    config.warm_pools = file.warm_pools.clone();
    config.git_mirrors = file.git_mirrors.clone();
    config.local_git_remotes = file.local_git_remotes.unwrap_or(false);
    let worker = Arc::new(Worker::new(config, backend.clone())?);
    if let Some(listen) = flags.metrics_listen.or(file.metrics_listen.clone()) {
        let (addr, _task) = oz_worker::metrics::serve(worker.metrics(), &listen)
            .await
            .map_err(|e| format!("could not serve metrics on {listen}: {e}"))?;
        eprintln!("oz-agent-worker: metrics at http://{addr}/metrics");
    }
    // What an earlier run of this worker left: reattach or clean up, and tell the control plane.
    let recovered = backend.recover().await?;
    if !recovered.is_empty() {
        eprintln!("oz-agent-worker: found {} task(s) left by an earlier run; reporting them", recovered.len());
    }
    worker.adopt_recovered(recovered);
    let handle = worker.handle();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("oz-agent-worker: shutting down (a second signal exits at once)");
        handle.shutdown();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        handle.abort();
    });
    eprintln!("oz-agent-worker {worker_id} starting ({} backend)", kind.name());
    worker.run_shared().await?;
    Ok(())
}
