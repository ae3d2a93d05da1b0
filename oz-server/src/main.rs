//! `oz-server`: the control plane as a program, and its administration.
//!
//! ```text
//! oz-server --data-dir ./.oz-data --listen 127.0.0.1:8080 [--default-worker-host my-worker] [--metrics-listen 127.0.0.1:9464]
//! oz-server admin team create --name acme
//! oz-server admin user create --team acme --name ci --role member --service-account
//! oz-server admin key create --team acme --user <user id> --role viewer --expires-in 30d
//! oz-server admin key create --team acme --worker-id my-worker        # a worker credential
//! oz-server admin key list --team acme
//! oz-server admin key rotate --team acme <key id>
//! oz-server admin key revoke --team acme <key id>
//! echo -n "$NPM_TOKEN" | oz-server admin secret set --team acme --name npm-token
//! oz-server admin secret-key rotate                                  # then restart, then `drop k1`
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
use oz_server::store::{PrincipalStore, SecretRecord, Store, TeamRecord};
use oz_server::vault::{self, Keyring};
use oz_server::{ServerConfig, principals, start};

/// The oz control plane: REST API, worker WebSocket, scheduler; SQLite under --data-dir.
#[derive(Debug, Parser)]
#[command(name = "oz-server", version)]
struct Args {
    /// Where the database lives.
    #[arg(long, env = "OZ_DATA_DIR", default_value = ".oz-data", global = true)]
    data_dir: PathBuf,
    /// The keys secrets are sealed with (default `<data-dir>/secret-keys`, made on first start; keep
    /// a copy off this disk). `OZ_SECRET_KEY` (one base64 key) takes precedence.
    #[arg(long, env = "OZ_SECRET_KEY_FILE", global = true)]
    secret_key_file: Option<PathBuf>,
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464), unauthenticated, on this
    /// address only (never on --listen); off by default.
    #[arg(long, env = "OZ_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// An API root other than Slack's, Linear's or GitHub's that integrations may name
    /// (`provider.api_base_url`: GitHub Enterprise, a proxy), as a URL prefix. Repeatable.
    #[arg(
        long = "allow-provider-api-url",
        value_name = "URL_PREFIX",
        env = "OZ_PROVIDER_API_URLS",
        value_delimiter = ','
    )]
    provider_api_urls: Vec<String>,
    /// Seconds a worker may hold a run without news before the run ends ERROR.
    #[arg(long, default_value_t = 90)]
    lease_timeout_secs: u64,
    /// Seconds an offer may go unclaimed before the run is queued again (and offered again).
    #[arg(long, default_value_t = 15)]
    offer_timeout_secs: u64,
    /// Runs one API key may create per minute, sustained (0: no limit); 429 with Retry-After beyond.
    #[arg(long, env = "OZ_RUNS_PER_KEY_PER_MINUTE", default_value_t = 600)]
    runs_per_key_per_minute: u32,
    /// Runs one API key may create at once before the per-minute rate applies.
    #[arg(long, env = "OZ_RUN_BURST", default_value_t = 100)]
    run_burst: u32,
    /// A team's runs that have not ended, at most (0: no cap); 429 beyond.
    #[arg(long, env = "OZ_UNFINISHED_RUNS_PER_TEAM", default_value_t = 10_000)]
    unfinished_runs_per_team: u64,
    /// The most output a run's history keeps, in MiB: past it, its oldest output is dropped (its
    /// states, artifacts and follow-ups stay; its live session and event stream see everything).
    #[arg(long, env = "OZ_MAX_RUN_OUTPUT_MB", default_value_t = 128)]
    max_run_output_mb: u64,
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
    /// Team secrets (values read from standard input, never shown).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// The keys secrets are sealed with.
    SecretKey {
        #[command(subcommand)]
        command: SecretKeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Sets a secret to the value read from standard input (a trailing newline is dropped).
    Set {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// The team's secrets (names only).
    List {
        /// The team (id or name).
        #[arg(long)]
        team: String,
    },
    /// Deletes a secret.
    Delete {
        /// The team (id or name).
        #[arg(long)]
        team: String,
        /// Its name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SecretKeyCommand {
    /// Adds a new current key to the key file; the server reseals every secret with it at its next
    /// start, after which `drop` removes the old key.
    Rotate {
        /// The new key's id (default: the next `kN`).
        #[arg(long)]
        id: Option<String>,
    },
    /// Removes a key that no stored secret is sealed with any more.
    Drop {
        /// The key's id.
        id: String,
    },
    /// The keys' ids (never the keys) and how many stored values each seals.
    List,
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
    let key_file = args.secret_key_file.clone().unwrap_or_else(|| args.data_dir.join("secret-keys"));
    let result = runtime.block_on(async move {
        match args.command {
            None => serve(&args.data_dir, &key_file, args.serve).await,
            Some(Command::Admin { command }) => admin(&args.data_dir, &key_file, command).await,
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
    private_dir(data_dir)?;
    Ok(Arc::new(SqliteStore::open(&data_dir.join("oz.db")).await?))
}

/// The data folder: made 0700 (it holds the database and, by default, the secret keys).
fn private_dir(data_dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| format!("could not create {}: {e}", data_dir.display()).into())
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

/// The keys secrets are sealed with, made on first use.
fn keyring(key_file: &Path) -> Result<Keyring, Error> {
    let env = std::env::var("OZ_SECRET_KEY").ok();
    if env.is_none()
        && let Some(dir) = key_file.parent()
    {
        std::fs::create_dir_all(dir)?;
    }
    let (keyring, made) = Keyring::load_or_create(key_file, env.as_deref())?;
    if made {
        eprintln!(
            "oz-server: made the secret keys in {} (mode 0600); keep a copy off this disk: without it the stored secrets cannot be opened",
            key_file.display()
        );
    }
    Ok(keyring)
}

async fn serve(data_dir: &Path, key_file: &Path, args: ServeArgs) -> Result<(), Error> {
    private_dir(data_dir)?;
    let store = Arc::new(
        SqliteStore::open(&data_dir.join("oz.db"))
            .await?
            .with_max_run_output(args.max_run_output_mb.saturating_mul(1 << 20)),
    );
    let secret_keys = keyring(key_file)?;
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
        metrics_listen: args.metrics_listen,
        provider_api_urls: args.provider_api_urls,
        lease_timeout: Duration::from_secs(args.lease_timeout_secs),
        offer_timeout: Duration::from_secs(args.offer_timeout_secs.max(1)),
        run_limits: oz_server::limits::RunLimits {
            per_key_per_minute: args.runs_per_key_per_minute,
            burst: args.run_burst,
            active_per_team: args.unfinished_runs_per_team,
        },
        secret_keys: Some(secret_keys),
        ..Default::default()
    };
    let db = data_dir.join("oz.db");
    let server = start(config, store).await?;
    // The metrics line first: whoever waits for "listening on" has seen both.
    if let Some(addr) = server.metrics_addr() {
        println!("oz-server metrics at http://{addr}/metrics");
    }
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

async fn admin(data_dir: &Path, key_file: &Path, command: AdminCommand) -> Result<(), Error> {
    let store = open(data_dir).await?;
    let store: &dyn Store = store.as_ref();
    match command {
        AdminCommand::Secret { command: SecretCommand::Set { team: t, name } } => {
            let team = team(store, &t).await?;
            oz_core::wire::secrets::validate_secret_name("--name", &name)?;
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
            let value = value.strip_suffix('\n').unwrap_or(&value).trim_end_matches('\r').to_owned();
            if value.is_empty() {
                return Err("the value (on standard input) is empty".into());
            }
            let keys = keyring(key_file)?;
            let now = jiff::Timestamp::now();
            let created_at = store.secret(&team.id, &name).await?.map_or(now, |s| s.created_at);
            let sealed = keys.seal(&vault::secret_place(&team.id, &name), &value)?;
            store
                .put_secret(&SecretRecord {
                    team_id: team.id,
                    name: name.clone(),
                    sealed,
                    updated_by: None,
                    created_at,
                    updated_at: now,
                })
                .await?;
            println!("set secret {name} (sealed with key {})", keys.current_id());
        }
        AdminCommand::Secret { command: SecretCommand::List { team: t } } => {
            let team = team(store, &t).await?;
            for s in store.secrets(&team.id).await? {
                println!("{}\tupdated {}", s.name, s.updated_at);
            }
        }
        AdminCommand::Secret { command: SecretCommand::Delete { team: t, name } } => {
            let team = team(store, &t).await?;
            store.delete_secret(&team.id, &name).await?;
            println!("deleted secret {name}");
        }
        AdminCommand::SecretKey { command } => secret_keys(store, key_file, command).await?,
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
            print_key(&principals::rotate_key(store, &team.id, &id, true).await?);
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

async fn secret_keys(store: &dyn Store, key_file: &Path, command: SecretKeyCommand) -> Result<(), Error> {
    let keys = keyring(key_file)?;
    // How many stored values each key seals.
    let mut uses: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for s in store.all_secrets().await? {
        *uses.entry(Keyring::key_of(&s.sealed).unwrap_or("?").to_owned()).or_default() += 1;
    }
    for t in store.teams().await? {
        for i in store.integrations(&t.id).await? {
            *uses.entry(Keyring::key_of(&i.secret).unwrap_or("(in the clear)").to_owned()).or_default() += 1;
        }
    }
    match command {
        SecretKeyCommand::List => {
            for id in keys.ids() {
                let current = if id == keys.current_id() { "\tcurrent" } else { "" };
                println!("{id}\t{} value(s){current}", uses.get(id).copied().unwrap_or(0));
            }
        }
        SecretKeyCommand::Rotate { id } => {
            if std::env::var("OZ_SECRET_KEY").is_ok() {
                return Err("the keys come from OZ_SECRET_KEY: rotate by putting a key file in its place".into());
            }
            let id = id.unwrap_or_else(|| {
                (1..).map(|n| format!("k{n}")).find(|k| !keys.ids().contains(&k.as_str())).unwrap_or_default()
            });
            let next = keys.rotated(&id)?;
            next.write_file(key_file, true)?;
            println!(
                "{id} is now the current key in {}; restart the server to reseal the stored secrets,",
                key_file.display()
            );
            println!("then `oz-server admin secret-key drop {}` removes the old key", keys.current_id());
        }
        SecretKeyCommand::Drop { id } => {
            if let Some(n) = uses.get(&id).filter(|n| **n > 0) {
                return Err(format!(
                    "{n} stored value(s) are still sealed with {id:?}: restart the server to reseal them first"
                )
                .into());
            }
            keys.without(&id)?.write_file(key_file, true)?;
            println!("dropped key {id}");
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
