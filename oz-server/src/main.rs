//! `oz-server`: the control plane as a program, and its administration.
//!
//! ```text
//! oz-server --data-dir ./.oz-data --listen 127.0.0.1:8080 [--default-worker-host my-worker]
//! oz-server admin team create --name acme
//! oz-server admin user create --team acme --name ci --role member --service-account
//! oz-server admin key create --team acme --user <user id> --role viewer --expires-in 30d
//! oz-server admin key create --team acme --worker-id my-worker        # a worker credential
//! oz-server admin key list --team acme
//! oz-server admin key rotate --team acme <key id>
//! oz-server admin key revoke --team acme <key id>
//! ```
//!
//! On its first start in a data directory it creates a team with an admin and prints the admin's API
//! key once; it writes the key to a file only when asked (`--api-key-file`). `admin` commands work on
//! the database directly (the server may be running), so they need access to the data directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oz_core::wire::admin::{KeyCreated, KeyKind, NewKey, NewTeam, NewUser, PrincipalKind, Role};
use oz_server::store::sqlite::SqliteStore;
use oz_server::store::{PrincipalStore, Store, TeamRecord};
use oz_server::{ServerConfig, principals, start};

/// The oz control plane: REST API, worker WebSocket, scheduler; SQLite under --data-dir.
#[derive(Debug, Parser)]
#[command(name = "oz-server", version)]
struct Args {
    /// Where the database lives.
    #[arg(long, env = "OZ_DATA_DIR", default_value = ".oz-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
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
    /// Also write the first admin key to this file (mode 0600); by default it is only printed.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Teams, users and credentials, in the database under --data-dir.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Teams.
    Team {
        #[command(subcommand)]
        command: TeamCommand,
    },
    /// Users and service accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API keys and worker credentials.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TeamCommand {
    /// A new team with an admin and the admin's key (shown once).
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Every team.
    List,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// A new user (or service account) of a team.
    Create {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// viewer, member or admin.
        #[arg(long)]
        role: Role,
        /// A service account (automation) rather than a person.
        #[arg(long)]
        service_account: bool,
    },
    /// The team's users.
    List {
        /// The team (id or name).
        #[arg(long)]
        team: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// An API key for a user, or (with --worker-id) a worker credential; the secret is shown once.
    Create {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// The user it acts as (API keys; default: the team's first admin).
        #[arg(long)]
        user: Option<String>,
        /// At most this role (API keys).
        #[arg(long)]
        role: Option<Role>,
        /// A name to recognize it by.
        #[arg(long, default_value = "")]
        name: String,
        /// A worker id the credential may connect as (repeatable; makes a worker credential).
        #[arg(long = "worker-id")]
        worker_ids: Vec<String>,
        /// How long until it expires (`30d`, `12h`); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// The team's credentials (never their secrets).
    List {
        /// The team (id or name).
        #[arg(long)]
        team: String,
    },
    /// A new secret for a credential's rights; the old one stops working at once.
    Rotate {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// The key's id (`oz_<id>.<secret>`).
        id: String,
    },
    /// Revokes a credential; it stops working at once.
    Revoke {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// The key's id.
        id: String,
    },
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
    let result = runtime.block_on(async move {
        match args.command {
            None => serve(&args.data_dir, args.serve).await,
            Some(Command::Admin { command }) => admin(&args.data_dir, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oz-server: {}", oz_core::error::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn open(data_dir: &Path) -> Result<Arc<SqliteStore>, Error> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("could not create {}: {e}", data_dir.display()))?;
    Ok(Arc::new(SqliteStore::open(&data_dir.join("oz.db")).await?))
}

fn print_key(created: &KeyCreated) {
    println!("{} key {} (shown once; store it now):", kind_name(created.item.kind), created.item.id);
    println!("  {}", created.key);
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Api => "API",
        KeyKind::Worker => "worker",
    }
}

async fn serve(data_dir: &Path, args: ServeArgs) -> Result<(), Error> {
    let store = open(data_dir).await?;
    if store.teams().await?.is_empty() {
        let created = principals::create_team(store.as_ref(), &NewTeam { name: args.team.clone() }, true).await?;
        println!("created team {} ({}) with its admin {}", created.name, created.team_id, created.admin.id);
        print_key(&created.key);
        if let Some(path) = &args.api_key_file {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            writeln!(f, "{}", created.key.key)?;
            println!("  (also written to {}, mode 0600)", path.display());
        }
    }
    let config = ServerConfig {
        listen: args.listen,
        public_url: args.public_url,
        default_worker_host: args.default_worker_host,
        lease_timeout: Duration::from_secs(args.lease_timeout_secs),
        ..Default::default()
    };
    let db = data_dir.join("oz.db");
    let server = start(config, store).await?;
    println!("oz-server listening on {} (API at {}/api/v1, database {})", server.url(), server.url(), db.display());
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    eprintln!("oz-server: shutting down");
    server.shutdown().await;
    Ok(())
}

/// A team by id, else by its (unique) name.
async fn team(store: &dyn Store, id_or_name: &str) -> Result<TeamRecord, Error> {
    if let Some(team) = store.team(id_or_name).await? {
        return Ok(team);
    }
    let mut named: Vec<TeamRecord> = store.teams().await?.into_iter().filter(|t| t.name == id_or_name).collect();
    match named.len() {
        1 => Ok(named.remove(0)),
        0 => Err(format!("there is no team {id_or_name:?} (oz-server admin team list)").into()),
        _ => Err(format!("several teams are named {id_or_name:?}; give the team's id").into()),
    }
}

async fn admin(data_dir: &Path, command: AdminCommand) -> Result<(), Error> {
    let store = open(data_dir).await?;
    let store: &dyn Store = store.as_ref();
    match command {
        AdminCommand::Team { command: TeamCommand::Create { name } } => {
            let created = principals::create_team(store, &NewTeam { name }, false).await?;
            println!("created team {} ({}) with its admin {}", created.name, created.team_id, created.admin.id);
            print_key(&created.key);
        }
        AdminCommand::Team { command: TeamCommand::List } => {
            for t in store.teams().await? {
                println!("{}\t{}", t.id, t.name);
            }
        }
        AdminCommand::User { command: UserCommand::Create { team: t, name, role, service_account } } => {
            let team = team(store, &t).await?;
            let kind = if service_account { PrincipalKind::ServiceAccount } else { PrincipalKind::User };
            let user = principals::create_user(store, &team.id, &NewUser { name, role, kind }).await?;
            println!(
                "created {} {} ({}, {})",
                if service_account { "service account" } else { "user" },
                user.id,
                user.name,
                user.role
            );
        }
        AdminCommand::User { command: UserCommand::List { team: t } } => {
            let team = team(store, &t).await?;
            for u in store.users(&team.id).await? {
                let disabled = if u.disabled { "\tdisabled" } else { "" };
                println!("{}\t{}\t{}{disabled}", u.id, u.role, u.name);
            }
        }
        AdminCommand::Key { command: KeyCommand::Create { team: t, user, role, name, worker_ids, expires_in } } => {
            let team = team(store, &t).await?;
            let kind = if worker_ids.is_empty() { KeyKind::Api } else { KeyKind::Worker };
            let user = match (kind, user) {
                (KeyKind::Api, None) => {
                    store.users(&team.id).await?.into_iter().find(|u| u.role == Role::Admin).map(|u| u.id)
                }
                (_, user) => user,
            };
            let new = NewKey {
                name,
                kind,
                user_id: user,
                role,
                worker_ids,
                expires_in_secs: expires_in.map(|d| d.as_secs()),
            };
            print_key(&principals::create_key(store, &team.id, None, &new).await?);
        }
        AdminCommand::Key { command: KeyCommand::List { team: t } } => {
            let team = team(store, &t).await?;
            for k in store.api_keys(&team.id).await? {
                let state = match (k.revoked_at, k.expires_at) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(at)) => format!("expires {at}"),
                    (None, None) => "live".to_owned(),
                };
                let who = match k.kind {
                    KeyKind::Api => format!("user {}", k.user_id.as_deref().unwrap_or("-")),
                    KeyKind::Worker => format!("workers {}", k.worker_ids.join(",")),
                };
                let role = k.role.map(|r| format!(" as {r}")).unwrap_or_default();
                println!("{}\t{}\t{who}{role}\t{state}\t{}", k.id, kind_name(k.kind), k.name);
            }
        }
        AdminCommand::Key { command: KeyCommand::Rotate { team: t, id } } => {
            let team = team(store, &t).await?;
            print_key(&principals::rotate_key(store, &team.id, &id).await?);
            println!("  the old secret of {id} no longer works");
        }
        AdminCommand::Key { command: KeyCommand::Revoke { team: t, id } } => {
            let team = team(store, &t).await?;
            let revoked = principals::revoke_key(store, &team.id, &id).await?;
            println!("revoked {} ({})", revoked.id, kind_name(revoked.kind));
        }
    }
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
