//! `oz-server`: the control plane as a program.
//!
//! ```text
//! oz-server --data-dir ./.oz-data --listen 127.0.0.1:8080 [--default-worker-host my-worker]
//! ```
//!
//! On its first start in a data directory it creates a team and an API key, prints the key once and
//! saves it to `<data-dir>/api-key` (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use oz_server::store::sqlite::SqliteStore;
use oz_server::{ServerConfig, bootstrap_team, start};

/// The oz control plane: REST API, worker WebSocket, scheduler; SQLite under --data-dir.
#[derive(Debug, Parser)]
#[command(name = "oz-server", version)]
struct Args {
    /// Where the database and the first API key live.
    #[arg(long, env = "OZ_DATA_DIR", default_value = ".oz-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "OZ_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The URL workers and runners reach this server at (default: http://<listen address>).
    #[arg(long, env = "OZ_PUBLIC_URL")]
    public_url: Option<String>,
    /// The worker that runs get when they name none.
    #[arg(long, env = "OZ_DEFAULT_WORKER_HOST")]
    default_worker_host: Option<String>,
    /// Seconds a worker may hold a run without news before the run ends ERROR.
    #[arg(long, default_value_t = 90)]
    lease_timeout_secs: u64,
    /// The name of the team created on first start.
    #[arg(long, default_value = "default")]
    team: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz-server: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oz-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("could not create {}: {e}", args.data_dir.display()))?;
    let db = args.data_dir.join("oz.db");
    let store = Arc::new(SqliteStore::open(&db).await?);
    let key_file = args.data_dir.join("api-key");
    if !key_file.exists() {
        let (team, key) = bootstrap_team(store.as_ref(), &args.team).await?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file)?;
        writeln!(f, "{key}")?;
        println!("created team {team}; its API key (shown once, saved to {}):", key_file.display());
        println!("  {key}");
    }
    let config = ServerConfig {
        listen: args.listen,
        public_url: args.public_url,
        default_worker_host: args.default_worker_host,
        lease_timeout: Duration::from_secs(args.lease_timeout_secs),
        ..Default::default()
    };
    let server = start(config, store).await?;
    println!("oz-server listening on {} (API at {}/api/v1, database {})", server.url(), server.url(), db.display());
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    eprintln!("oz-server: shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}
