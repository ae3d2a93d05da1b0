//! The local stack (feature `local-stack`): the control plane on SQLite under a data directory, and an
//! embedded worker on the Direct backend whose tasks run this same `oz` binary as their runner.
//!
//! - `oz local up`: starts it and prints how to use it, until Ctrl-C.
//! - `oz local quickstart`: starts it, registers an environment from a small sample repository, submits
//!   a run whose command harness changes the code and commits, follows it live, and prints the result
//!   with a timing breakdown.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use oz_backend_direct::DirectConfig;
use oz_backend_docker::{DefaultNetwork, DockerConfig};
use oz_core::backend::RecoveryAction;
use oz_core::credentials::ApiKey;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::run::RunState;
use oz_core::wire::admin::{NewKey, NewTeam, Role};
use oz_core::wire::api::{AgentConfig, RunStreamEvent};
use oz_core::wire::worker::HarnessConfig;
use oz_server::principals;
use oz_server::store::Store;
use oz_server::store::sqlite::SqliteStore;
use oz_worker::config::BackendConfig;
use oz_worker::{CommandOptions, Worker, WorkerConfig, WorkerHandle};

/// The worker id of the embedded worker.
pub const LOCAL_WORKER: &str = "local";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A running local stack.
pub struct LocalStack {
    /// The control plane.
    pub server: oz_server::RunningServer,
    /// The embedded worker.
    pub worker: WorkerHandle,
    /// An admin API key of the team for this session (revoked when the stack next starts).
    pub api_key: String,
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// Where tasks run.
    pub backend: LocalBackend,
    /// The embedded worker's warm pools.
    pub warm_pools: oz_worker::pool::WarmPools,
}

impl LocalStack {
    /// An SDK client for the stack.
    pub fn client(&self) -> Result<oz_sdk::Client, Error> {
        Ok(oz_sdk::Client::builder().base_url(self.server.url()).api_key(&self.api_key).build()?)
    }

    /// Stops the worker (cancelling its tasks) and the server.
    pub async fn stop(self) {
        self.warm_pools.stop().await;
        self.worker.shutdown();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.server.shutdown().await;
    }
}

/// Where the local worker runs tasks.
#[derive(Debug, Clone, Default)]
pub enum LocalBackend {
    /// Processes on this machine (the default; needs nothing but this binary).
    #[default]
    Direct,
    /// Containers on the local Docker engine, with the static `oz` as the sidecar. Containers use the
    /// host's network so they reach the control plane on loopback.
    Docker {
        /// The statically linked `oz` (`scripts/build-sidecar-oz.sh` makes `target/sidecar/oz`).
        sidecar: PathBuf,
        /// Host folders to mount at the same path (read-only), e.g. a local git remote.
        mounts: Vec<PathBuf>,
    },
}

impl LocalBackend {
    /// The static sidecar `oz`: `OZ_SIDECAR_BINARY`, else `target/sidecar/oz` next to this build.
    pub fn default_sidecar() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("OZ_SIDECAR_BINARY") {
            return Some(PathBuf::from(p));
        }
        let exe = std::env::current_exe().ok()?;
        let candidate = exe.parent()?.parent()?.join("sidecar/oz");
        candidate.exists().then_some(candidate)
    }

    fn name(&self) -> &'static str {
        match self {
            LocalBackend::Direct => "Direct",
            LocalBackend::Docker { .. } => "Docker",
        }
    }

    /// The worker configuration of this choice: workspaces under `data_dir` and `runner` as the
    /// tasks' runner (Direct); the sidecar, the host's network and read-only mounts (Docker).
    fn config(&self, data_dir: &Path, runner: &Path) -> BackendConfig {
        match self {
            LocalBackend::Direct => {
                let mut direct = DirectConfig::new(LOCAL_WORKER, data_dir.join("workspaces"));
                direct.oz_path = Some(runner.to_owned());
                BackendConfig::Direct(Box::new(direct))
            }
            LocalBackend::Docker { sidecar, mounts } => {
                let mut docker = DockerConfig::new(LOCAL_WORKER);
                docker.sidecar_binary = Some(sidecar.clone());
                docker.network = DefaultNetwork::Named("host".into());
                docker.volumes = mounts.iter().map(|m| format!("{0}:{0}:ro", m.display())).collect();
                BackendConfig::Docker(Box::new(docker))
            }
        }
    }
}

/// Starts the stack in `data_dir` (created if missing), listening on `listen`; tasks run this binary
/// as their runner.
pub async fn start(data_dir: &Path, listen: &str) -> Result<LocalStack, Error> {
    start_with_runner(data_dir, listen, std::env::current_exe()?).await
}

/// [`start`] with another `oz` binary as the tasks' runner (benchmarks, tests).
pub async fn start_with_runner(data_dir: &Path, listen: &str, runner: PathBuf) -> Result<LocalStack, Error> {
    start_with(data_dir, listen, runner, LocalBackend::Direct).await
}

/// [`start`] with a runner and a backend.
pub async fn start_with(
    data_dir: &Path,
    listen: &str,
    runner: PathBuf,
    backend_choice: LocalBackend,
) -> Result<LocalStack, Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| format!("could not create {}: {e}", data_dir.display()))?;
    let store = Arc::new(SqliteStore::open(&data_dir.join("oz.db")).await?);
    let credentials = session_credentials(store.as_ref(), data_dir).await?;
    let api_key = credentials.api_key;
    let (secret_keys, _) = oz_server::vault::Keyring::load_or_create(&data_dir.join("secret-keys"), None)?;
    let config = oz_server::ServerConfig {
        listen: listen.to_owned(),
        default_worker_host: Some(LOCAL_WORKER.into()),
        secret_keys: Some(secret_keys),
        // One person's machine, on loopback: nobody to protect it from.
        run_limits: oz_server::limits::RunLimits::unlimited(),
        // Integrations may call a provider's stand-in on this machine (a fake, a proxy).
        provider_api_urls: vec!["http://127.0.0.1:".into(), "http://localhost:".into()],
        ..Default::default()
    };
    let server = oz_server::start(config, store).await?;

    let built = oz_worker::backends::build(backend_choice.config(data_dir, &runner), LOCAL_WORKER, true)
        .await
        .map_err(|e| format!("the {} backend is not available: {e}", backend_choice.name()))?;
    let (backend, entrypoint) = (built.backend, built.runner_entrypoint);
    let recovered = backend.recover().await?;
    for leftover in &recovered {
        match &leftover.action {
            RecoveryAction::Removed(f) => {
                eprintln!("oz: cleaned up task {} left by an earlier run: {}", leftover.task_id, f.message)
            }
            RecoveryAction::Reattached(_) => {
                eprintln!("oz: reattached to task {} left running by an earlier run", leftover.task_id)
            }
            RecoveryAction::NotStarted(why) => {
                eprintln!(
                    "oz: task {} had not started when an earlier run ended; it runs again: {why}",
                    leftover.task_id
                )
            }
        }
    }
    let command = CommandOptions {
        entrypoint,
        server_root_url: server.url(),
        idle_on_complete: None,
        extra_env: Vec::new(),
        package_caches: false,
    };
    let ws = format!("{}/api/v1/selfhosted/worker/ws", server.url().replacen("http://", "ws://", 1));
    let mut config = WorkerConfig::new(LOCAL_WORKER, ws, ApiKey::new(credentials.worker_key), command);
    // The local stack's sample remote is a local folder; its warm pools check its HEAD.
    config.local_git_remotes = true;
    let worker = Arc::new(Worker::new(config, backend)?);
    worker.adopt_recovered(recovered);
    let handle = worker.handle();
    let warm_pools = worker.warm_pools().clone();
    tokio::spawn(async move {
        if let Err(e) = worker.run_shared().await {
            eprintln!("oz: the local worker stopped: {e}");
        }
    });
    Ok(LocalStack {
        server,
        worker: handle,
        api_key,
        data_dir: data_dir.to_owned(),
        backend: backend_choice,
        warm_pools,
    })
}

/// The name of the API key each start of the stack mints for this session.
const SESSION_KEY: &str = "oz local session";
/// The name of the worker credential each start mints for the embedded worker.
const WORKER_KEY: &str = "oz local worker";

/// What one start of the stack works with; their secrets live only in this process.
struct SessionCredentials {
    api_key: String,
    worker_key: String,
}

/// The stack's team (made on the first start) and fresh credentials for this session: an admin API
/// key and the embedded worker's credential. The ones of earlier starts are revoked (their secrets
/// died with that process), and so is a key file an older version left in the clear.
async fn session_credentials(store: &dyn Store, data_dir: &Path) -> Result<SessionCredentials, Error> {
    let team_id = match store.teams().await?.into_iter().next() {
        Some(team) => team.id,
        None => {
            let created = principals::create_team(store, &NewTeam { name: "local".into() }, true).await?;
            // Its first key is never shown: each session gets its own.
            store.revoke_api_key(&created.team_id, &created.key.item.id, Timestamp::now()).await?;
            created.team_id
        }
    };
    let old_file = data_dir.join("api-key");
    let old_file_key = std::fs::read_to_string(&old_file).ok().and_then(|text| {
        let text = text.trim().to_owned();
        text.strip_prefix("oz_").and_then(|rest| rest.split_once('.')).map(|(id, _)| id.to_owned())
    });
    for key in store.api_keys(&team_id).await? {
        let earlier_session = key.name == SESSION_KEY || key.name == WORKER_KEY;
        if key.revoked_at.is_none() && (earlier_session || old_file_key.as_deref() == Some(key.id.as_str())) {
            store.revoke_api_key(&team_id, &key.id, Timestamp::now()).await?;
        }
    }
    if old_file.exists() {
        std::fs::remove_file(&old_file)?;
        eprintln!("oz: removed {} (a key an older version kept in the clear) and revoked its key", old_file.display());
    }
    let admin = store
        .users(&team_id)
        .await?
        .into_iter()
        .find(|u| u.role == Role::Admin && !u.disabled)
        .ok_or("the local team has no admin left")?;
    let session = NewKey { name: SESSION_KEY.into(), ..Default::default() };
    let api_key = principals::create_key(store, &team_id, Some(&admin.id), &session).await?.key;
    let worker_key = oz_server::mint_worker_credential(store, &team_id, WORKER_KEY, &[LOCAL_WORKER]).await?;
    Ok(SessionCredentials { api_key, worker_key })
}

/// `oz local up`; with `key_file`, the session's API key is also written there (mode 0600).
pub async fn up(data_dir: &Path, listen: &str, backend: LocalBackend, key_file: Option<&Path>) -> Result<(), Error> {
    let stack = start_with(data_dir, listen, std::env::current_exe()?, backend).await?;
    println!("oz local stack is up");
    println!("  control plane  {}/api/v1   (database {})", stack.server.url(), stack.data_dir.join("oz.db").display());
    match &stack.backend {
        LocalBackend::Direct => println!(
            "  worker         {LOCAL_WORKER} (Direct backend, workspaces under {})",
            stack.data_dir.join("workspaces").display()
        ),
        LocalBackend::Docker { sidecar, .. } => {
            println!("  worker         {LOCAL_WORKER} (Docker backend, sidecar {}, host network)", sidecar.display())
        }
    }
    println!("  API key        {} (an admin's; valid until this stack stops or restarts)", stack.api_key);
    if let Some(path) = key_file {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        writeln!(f, "{}", stack.api_key)?;
        println!("                 also written to {} (mode 0600)", path.display());
    }
    println!();
    println!("  export OZ_API_BASE_URL={}/api/v1", stack.server.url());
    match key_file {
        Some(path) => println!("  export WARP_API_KEY=$(cat {})", path.display()),
        None => println!("  export WARP_API_KEY={}", stack.api_key),
    }
    println!("  curl -s -H \"Authorization: Bearer $WARP_API_KEY\" $OZ_API_BASE_URL/agent/runs");
    println!();
    println!("Ctrl-C to stop.");
    wait_for_signal().await;
    println!("stopping");
    stack.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

fn git(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "oz quickstart")
        .env("GIT_AUTHOR_EMAIL", "quickstart@oz.invalid")
        .env("GIT_COMMITTER_NAME", "oz quickstart")
        .env("GIT_COMMITTER_EMAIL", "quickstart@oz.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("the quickstart needs git: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("git {args:?} failed").into()) }
}

/// Makes the sample repository `acme/hello` under `<root>/git` (once); returns the git base URL.
fn sample_repo(root: &Path) -> Result<String, Error> {
    let bare = root.join("git/acme/hello");
    if !bare.exists() {
        let src = root.join("src/hello");
        std::fs::create_dir_all(&src)?;
        git(&src, &["init", "-q", "-b", "main"])?;
        std::fs::write(src.join("greeting.txt"), "Hello\n")?;
        std::fs::write(src.join("README.md"), "# hello\n\nA tiny sample project for the oz quickstart.\n")?;
        git(&src, &["add", "."])?;
        git(&src, &["commit", "-q", "-m", "Initial commit"])?;
        std::fs::create_dir_all(bare.parent().ok_or("no parent")?)?;
        git(root, &["clone", "-q", "--bare", &src.display().to_string(), &bare.display().to_string()])?;
    }
    Ok(format!("file://{}", root.join("git").display()))
}

/// The sample agent: reads the prompt, changes the code, commits.
const SAMPLE_AGENT: &str = r#"set -e
cd hello
echo "agent: the task is: $OZ_PROMPT"
echo "agent: setup left: $(cat ../.setup-done)"
printf 'Hello, world!\n' > greeting.txt
git add greeting.txt
git commit -q -m "Greet the whole world"
echo "agent: committed $(git rev-parse --short HEAD): $(git log -1 --format=%s)""#;

fn at(events: &[RunStreamEvent], pred: impl Fn(&RunStreamEvent) -> bool) -> Option<Timestamp> {
    events.iter().find(|e| pred(e)).map(|e| e.at)
}

fn ms(from: Option<Timestamp>, to: Option<Timestamp>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!("{:>8.1} ms", b.duration_since(a).as_secs_f64() * 1e3),
        _ => "       -   ".into(),
    }
}

/// `oz local quickstart`: one run from a cold start; with `warm`, then a second one from a warm
/// sandbox, prepared meanwhile, with both timings. Returns whether the runs succeeded.
pub async fn quickstart(
    data_dir: &Path,
    backend: LocalBackend,
    image: Option<String>,
    warm: bool,
) -> Result<bool, Error> {
    println!("==> starting the local stack in {}", data_dir.display());
    std::fs::create_dir_all(data_dir).map_err(|e| format!("could not create {}: {e}", data_dir.display()))?;
    let data_dir = &std::fs::canonicalize(data_dir)?;
    let git_base = sample_repo(&data_dir.join("sample"))?;
    // In containers, the sample remote is mounted at the same path, read-only.
    let backend = match backend {
        LocalBackend::Docker { sidecar, mut mounts } => {
            mounts.push(data_dir.join("sample/git"));
            LocalBackend::Docker { sidecar, mounts }
        }
        direct => direct,
    };
    let stack = start_with(data_dir, "127.0.0.1:0", std::env::current_exe()?, backend).await?;
    let client = stack.client()?;
    println!(
        "    control plane {} with worker {LOCAL_WORKER:?} on the {} backend",
        stack.server.url(),
        stack.backend.name()
    );

    let mut env = EnvironmentConfig {
        name: "hello".into(),
        description: Some("The quickstart's sample repository".into()),
        github_repos: vec![RepoRef::new("acme", "hello")?],
        setup_commands: vec!["echo 'dependencies installed' > .setup-done".into()],
        docker_image: image,
        ..Default::default()
    };
    for (k, v) in [
        ("OZ_GIT_BASE_URL", git_base.as_str()),
        ("GIT_AUTHOR_NAME", "oz agent"),
        ("GIT_AUTHOR_EMAIL", "agent@oz.invalid"),
        ("GIT_COMMITTER_NAME", "oz agent"),
        ("GIT_COMMITTER_EMAIL", "agent@oz.invalid"),
    ] {
        env.env_vars.insert(k.into(), v.into());
    }
    let environment = client.environments().create(&env).await?;
    println!("==> registered environment {} (repo acme/hello from {git_base})", environment.uid);

    let config = AgentConfig {
        worker_host: Some(LOCAL_WORKER.into()),
        environment_id: Some(environment.uid.clone()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), SAMPLE_AGENT.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ok = submit_and_follow(&client, config.clone(), "cold start").await?;
    if warm {
        stack.warm_pools.add(oz_worker::pool::WarmPoolConfig {
            environment: environment.uid.clone(),
            size: 1,
            max_size: None,
            idle_secs: 600,
            refresh_secs: 60,
            max_age_secs: 3600,
            ready_within_secs: 300,
            max_memory_mb: None,
        })?;
        println!("==> warming a sandbox for environment {} (clone and setup, before any task)", environment.uid);
        let started = std::time::Instant::now();
        loop {
            let status = stack.warm_pools.status().into_iter().find(|p| p.environment == environment.uid);
            match status {
                Some(p) if p.ready > 0 => break,
                Some(p) if p.last_error.is_some() => {
                    return Err(format!(
                        "the warm sandbox could not be prepared: {}",
                        p.last_error.unwrap_or_default()
                    )
                    .into());
                }
                _ if started.elapsed() > Duration::from_secs(300) => {
                    return Err("no warm sandbox within 5 minutes".into());
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        println!("    ready in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        ok &= submit_and_follow(&client, config, "warm start").await?;
        let status = stack.warm_pools.status();
        if let Some(p) = status.first() {
            println!("==> warm pool: {} hit(s), {} miss(es)", p.hits, p.misses);
        }
    }
    stack.stop().await;
    Ok(ok)
}

/// Submits the quickstart's run, follows it to its end, and prints its timing; whether it succeeded.
async fn submit_and_follow(client: &oz_sdk::Client, config: AgentConfig, label: &str) -> Result<bool, Error> {
    let submitted = Timestamp::now();
    let run = client
        .runs()
        .create("Make the greeting say hello to the whole world")
        .agent_config(config)
        .title("quickstart")
        .send()
        .await?;
    println!("==> submitted run {} ({label})", run.run_id);

    let followed = tokio::time::timeout(
        Duration::from_secs(300),
        crate::remote::follow::follow(client, &run.run_id, crate::remote::Format::Text),
    )
    .await
    .map_err(|_| "the run did not finish within 5 minutes")??;
    let (events, item) = (followed.events, followed.run);
    println!("==> run {}: {}", item.state, item.status_message.as_ref().map(|m| m.message.as_str()).unwrap_or(""));
    let queued = Some(submitted);
    let claimed = at(&events, |e| e.state() == Some(RunState::Claimed));
    let sandbox_ready = at(&events, |e| e.kind() == "started");
    let agent_started = at(&events, |e| e.kind() == "harness_started");
    let finished = at(&events, |e| e.state().is_some_and(|s| s.is_terminal()));
    println!("==> timing ({label})");
    println!("    submitted -> claimed        {}", ms(queued, claimed));
    println!("    claimed   -> sandbox ready  {}", ms(claimed, sandbox_ready));
    println!("    sandbox   -> agent started  {}", ms(sandbox_ready, agent_started));
    println!("    agent     -> finished       {}", ms(agent_started, finished));
    println!("    total                       {}", ms(queued, finished));
    Ok(item.state == RunState::Succeeded)
}
