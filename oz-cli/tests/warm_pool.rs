//! Warm pools end to end over real sockets: the control plane, a worker on the Direct backend with a
//! warm pool for one environment, and the `oz` runner in both halves (`oz agent warm`, then the
//! task). A hit runs in a sandbox that already has the repo and the setup's output, at the HEAD
//! pushed after it was prepared; a used sandbox is never handed a second task; a miss starts cold;
//! a warm sandbox holds no credential; a worker killed with SIGKILL leaves no warm sandbox behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oz_backend_direct::{DirectBackend, DirectConfig};
use oz_core::credentials::ApiKey;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::run::RunState;
use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;
use oz_server::store::sqlite::SqliteStore;
use oz_worker::pool::WarmPoolConfig;
use oz_worker::{CommandOptions, Worker, WorkerConfig};

const OZ: &str = env!("CARGO_BIN_EXE_oz");

mod support;
use support::git;

struct Stack {
    dir: tempfile::TempDir,
    server: oz_server::RunningServer,
    client: oz_sdk::Client,
    key: String,
    worker_key: String,
    git_base: String,
}

impl Stack {
    fn workspaces(&self) -> PathBuf {
        self.dir.path().join("ws")
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    /// A commit on the repo's main branch, as a push would make it.
    fn push(&self, subject: &str) {
        std::fs::write(self.src().join(format!("{subject}.txt")), subject).unwrap();
        git(&self.src(), &["add", "."]);
        git(&self.src(), &["commit", "-q", "-m", subject]);
        git(&self.src(), &["push", "-q", self.dir.path().join("git/acme/app").to_str().unwrap(), "HEAD:main"]);
    }
}

async fn stack() -> Stack {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let dir = tempfile::Builder::new().prefix("w").tempdir_in("/tmp").unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README.md"), "# app\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "initial"]);
    let bare = dir.path().join("git/acme/app");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(dir.path(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "warm").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "warm", &["warm-worker"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    let git_base = format!("file://{}", dir.path().join("git").display());
    Stack { dir, server, client, key, worker_key, git_base }
}

async fn environment(s: &Stack, setup: &str) -> String {
    let env = EnvironmentConfig {
        name: "app".into(),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        setup_commands: vec![setup.into()],
        env_vars: [("OZ_GIT_BASE_URL", s.git_base.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..Default::default()
    };
    s.client.environments().create(&env).await.unwrap().uid
}

fn worker(s: &Stack, pools: Vec<WarmPoolConfig>) -> Arc<Worker> {
    worker_with(s, pools, None, None)
}

/// A worker that keeps git mirrors in `mirrors` (which its tasks' clones reference) and package
/// caches in `caches`, as `oz-agent-worker` does for `git_mirrors:` and `package_caches:`.
fn worker_with(s: &Stack, pools: Vec<WarmPoolConfig>, mirrors: Option<&Path>, caches: Option<&Path>) -> Arc<Worker> {
    let mut direct = DirectConfig::new("warm-worker", s.workspaces());
    direct.stop_grace = Duration::from_secs(2);
    direct.cache_root = caches.map(Path::to_path_buf);
    let backend = Arc::new(DirectBackend::new(direct).unwrap());
    let command = CommandOptions {
        entrypoint: OZ.into(),
        server_root_url: s.server.url(),
        idle_on_complete: None,
        // What `oz-agent-worker` adds for `git_mirrors:` on Direct (backends::mount_git_mirrors).
        extra_env: mirrors
            .map(|m| (oz_core::runner::env::GIT_MIRROR_DIR.to_owned(), m.display().to_string()))
            .into_iter()
            .collect(),
        package_caches: caches.is_some(),
    };
    let ws = format!("{}/api/v1/selfhosted/worker/ws", s.server.url().replace("http://", "ws://"));
    let mut config = WorkerConfig::new("warm-worker", ws, ApiKey::new(s.worker_key.clone()), command);
    config.warm_pools = pools;
    // The test's remote is a local folder.
    config.local_git_remotes = true;
    config.git_mirrors = mirrors.map(Path::to_path_buf);
    Arc::new(Worker::new(config, backend).unwrap())
}

fn pool(environment: &str) -> WarmPoolConfig {
    WarmPoolConfig {
        environment: environment.into(),
        size: 1,
        max_size: None,
        idle_secs: 600,
        refresh_secs: 60,
        max_age_secs: 3600,
        ready_within_secs: 60,
        max_memory_mb: None,
    }
}

async fn ready(worker: &Worker, environment: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = worker.warm_pools().status();
        let pool = status.iter().find(|p| p.environment == environment).unwrap();
        assert!(pool.last_error.is_none(), "{pool:?}");
        if pool.ready >= want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pool never got ready: {pool:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn warm_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("warm-"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn marker_pid(dir: &Path) -> u32 {
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("oz-task.json")).unwrap()).unwrap();
    marker["pid"].as_u64().unwrap() as u32
}

fn command_config(env_id: &str, script: &str) -> AgentConfig {
    AgentConfig {
        worker_host: Some("warm-worker".into()),
        environment_id: Some(env_id.into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `script` in `env_id` to its end; its final state and its whole output.
async fn run(s: &Stack, env_id: &str, script: &str) -> (RunState, String) {
    let run = s.client.runs().create("go").agent_config(command_config(env_id, script)).send().await.unwrap();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(60),
        s.client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>(),
    )
    .await
    .expect("the run ends");
    let state = events.iter().filter_map(|e| e.state()).next_back().unwrap();
    let output = events.iter().filter(|e| e.kind() == "output").filter_map(|e| e.event["text"].as_str()).collect();
    (state, output)
}

const SCRIPT: &str = "cat setup.txt; git -C app log -1 --format=%s; pwd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_starts_from_the_prepared_repo_at_the_new_head_and_a_sandbox_serves_one_task() {
    let s = stack().await;
    let env_id = environment(&s, "echo set-up-at-$(date +%s%N) > setup.txt").await;
    let w = worker(&s, vec![pool(&env_id)]);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;

    // The ready sandbox: prepared, and nothing secret in it (the worker's key, any token).
    let first = warm_dirs(&s.workspaces());
    assert_eq!(first.len(), 1, "{first:?}");
    let prepared_setup = std::fs::read_to_string(first[0].join("workspace/setup.txt")).unwrap();
    let pid = marker_pid(&first[0]);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut seen = String::from_utf8_lossy(&environ).into_owned();
    for file in walk(&first[0]) {
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()));
    }
    assert!(!seen.contains(&s.worker_key), "the worker's key is in a warm sandbox");
    assert!(!seen.contains("OZ_WORKLOAD_TOKEN=") && !seen.contains("ozw_"), "a token is in a warm sandbox");

    // The control plane knows: the worker reported its ready sandbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers = s.client.workers().list().await.unwrap();
        let pools =
            workers.iter().find(|w| w.worker_id == "warm-worker").map(|w| w.warm_pools.clone()).unwrap_or_default();
        if pools.iter().any(|p| p.environment == env_id && p.ready == 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "GET /workers never showed the ready sandbox: {workers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // And `oz worker list` shows it.
    let listed = std::process::Command::new(OZ)
        .args(["worker", "list"])
        .env("WARP_API_KEY", &s.key)
        .env("OZ_API_BASE_URL", s.server.url())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{table}{}", String::from_utf8_lossy(&listed.stderr));
    assert!(table.contains("warm-worker") && table.contains(&format!("{env_id} 1/1+0 0:0 ")), "{table}");

    // A push after the preparation, then a task: it runs in that sandbox, from its setup, at the new HEAD.
    s.push("pushed-after-warming");
    let (state, output) = run(&s, &env_id, SCRIPT).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.contains(prepared_setup.trim()), "the setup's output from the warm sandbox: {output}");
    assert!(output.contains("pushed-after-warming"), "the new HEAD: {output}");
    assert!(output.contains(first[0].file_name().unwrap().to_str().unwrap()), "ran in the warm sandbox: {output}");
    assert!(output.contains("warm sandbox: cloned and set up"), "{output}");
    let status = &w.warm_pools().status()[0];
    assert_eq!((status.hits, status.misses), (1, 0), "{status:?}");

    // The used sandbox is gone (removed right after its task), never handed a second task: the next
    // hit runs in a new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first[0].exists() {
        assert!(tokio::time::Instant::now() < deadline, "the used sandbox was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready(&w, &env_id, 1).await;
    let second = warm_dirs(&s.workspaces());
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "a used sandbox came back to the pool");
    let (state, output) = run(&s, &env_id, SCRIPT).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.contains(second[0].file_name().unwrap().to_str().unwrap()), "{output}");
    assert!(!output.contains(prepared_setup.trim()), "the first sandbox's setup output: {output}");

    // Two tasks at once with one sandbox ready: one hit, one cold start, both right.
    ready(&w, &env_id, 1).await;
    let (a, b) = tokio::join!(run(&s, &env_id, SCRIPT), run(&s, &env_id, SCRIPT));
    for (state, output) in [&a, &b] {
        assert_eq!(*state, RunState::Succeeded, "{output}");
        assert!(output.contains("set-up-at-") && output.contains("pushed-after-warming"), "{output}");
    }
    let status = &w.warm_pools().status()[0];
    assert_eq!(status.hits + status.misses, 4, "{status:?}");
    assert!(status.misses >= 1, "{status:?}");
    let metrics = w.metrics().render();
    assert!(metrics.contains("oz_worker_warm_hits_total{environment=\""), "{metrics}");
    assert!(metrics.contains("oz_worker_warm_handoff_seconds_bucket"), "{metrics}");
    w.handle().shutdown();
    // Shutting down discards what is ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !warm_dirs(&s.workspaces()).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "a warm sandbox outlived the worker's shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.server.shutdown().await;
}

/// A setup command that fails: the pool backs off and says why, instead of retrying in a hot loop;
/// runs still start cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_backs_the_pool_off_and_runs_start_cold() {
    let s = stack().await;
    let env_id = environment(&s, "echo attempt >> /tmp/never-here-$$; exit 7").await;
    let w = worker(&s, vec![pool(&env_id)]);
    tokio::spawn(w.clone().run_shared());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = w.warm_pools().status()[0].clone();
        if status.last_error.is_some() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failure was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status.last_error.clone().unwrap();
    assert!(error.contains("setup_commands[0] exited with code 7"), "{error}");
    // The environment says so on the API (`setup_failed`), from the worker's report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !s.client.environments().get(&env_id).await.unwrap().setup_failed {
        assert!(tokio::time::Instant::now() < deadline, "setup_failed never showed on the environment");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Backed off: within the next 800 ms no second attempt (the first delay is 1 s).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let failures = w.metrics().render();
    assert!(
        failures.contains("oz_worker_warm_failures_total{environment=\"") && failures.contains("} 1\n"),
        "{failures}"
    );
    assert!(warm_dirs(&s.workspaces()).is_empty(), "a failed warm sandbox was left behind");
    let (state, output) = run(&s, &env_id, "echo cold").await;
    assert_eq!(state, RunState::Failed, "the run's own setup fails the same way: {output}");
    w.handle().shutdown();
    s.server.shutdown().await;
}

/// `kill -9` of a worker process with a ready warm sandbox: the waiting runner lives on, and the
/// restarted worker stops it and removes its workspace before preparing a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_ready_sandbox_leaves_none_behind_after_its_restart() {
    let s = stack().await;
    let env_id = environment(&s, "echo ok > setup.txt").await;
    let bin = Path::new(OZ).with_file_name("oz-agent-worker");
    assert!(bin.is_file(), "{} is built with the workspace (cargo build --workspace --bins)", bin.display());
    let config = s.dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "worker_id: warm-worker\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {OZ}\nwarm_pools:\n  - environment: {env_id}\n",
            s.workspaces().display()
        ),
    )
    .unwrap();
    let spawn = || {
        KillOnDrop(
            std::process::Command::new(&bin)
                .arg("--config-file")
                .arg(&config)
                .args(["--server-root-url", &s.server.url(), "--log-level", "warn"])
                .arg("--outbox-file")
                .arg(s.dir.path().join("worker.outbox"))
                .env("WARP_API_KEY", &s.worker_key)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut worker = spawn();
    let old = ready_dir(&s.workspaces(), None).await;
    let old_pid = marker_pid(&old);
    worker.kill();
    assert!(Path::new(&format!("/proc/{old_pid}")).exists(), "the waiting runner outlives its worker's SIGKILL");
    let mut worker = spawn();
    let fresh = ready_dir(&s.workspaces(), Some(&old)).await;
    assert_ne!(fresh, old);
    assert!(!old.exists(), "the old warm sandbox's workspace is removed");
    let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "the old warm runner is stopped: {stat}");
    // A worker stopped gracefully (SIGTERM) discards what is ready.
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.0.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = worker.0.wait();
    })
    .await;
    assert!(!fresh.exists(), "a worker shut down gracefully left a warm sandbox");
    s.server.shutdown().await;
}

/// A warm workspace whose runner waits for its task (its socket is there), other than `not`.
async fn ready_dir(root: &Path, not: Option<&PathBuf>) -> PathBuf {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = warm_dirs(root).into_iter().find(|d| Some(d) != not && d.join("warm/handoff.sock").exists());
        if let Some(d) = found {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no warm sandbox got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker process, killed (SIGKILL) when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

/// A warm sandbox that refuses its task (here: an argv that is not a runner's) is given up at once:
/// the backend's call fails, and its waiting runner and its workspace are gone, not left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_refuses_its_task_is_removed_with_its_runner() {
    use oz_core::backend::Backend;
    let s = stack().await;
    let backend = DirectBackend::new(DirectConfig::new("warm-worker", s.workspaces())).unwrap();
    let environment = EnvironmentConfig {
        name: "app".into(),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        ..Default::default()
    };
    let spec = oz_core::warm::WarmSpec {
        sandbox: oz_core::task::SandboxSpec::default(),
        entrypoint: OZ.into(),
        environment,
        git_base_url: Some(s.git_base.clone()),
        env: vec![],
        ready_within: Duration::from_secs(30),
    };
    let prepared = backend.prepare(spec).await.unwrap();
    let dir = s.workspaces().join(&prepared.id);
    let pid = marker_pid(&dir);
    assert!(dir.join("workspace/app/README.md").is_file());
    let task = oz_core::task::TaskSpec::new("refused", vec!["/bin/true".into()]);
    let error = backend.launch_prepared(prepared, task).await.unwrap_err();
    assert!(error.message.contains("not a runner's"), "{error}");
    assert!(!dir.exists(), "the refused sandbox's workspace is left");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the refused sandbox's runner is still running: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_clone_borrows_from_the_workers_mirror_and_still_gets_a_newer_push() {
    let s = stack().await;
    let env_id = environment(&s, "true").await;
    let mirrors = s.dir.path().join("mirrors");
    let w = worker_with(&s, vec![], Some(&mirrors), None);
    tokio::spawn(w.clone().run_shared());
    let script =
        "cat app/.git/objects/info/alternates 2>/dev/null || echo no-alternates; git -C app log -1 --format=%s";
    // The first task of the environment has the worker make its mirror.
    let (state, _) = run(&s, &env_id, script).await;
    assert_eq!(state, RunState::Succeeded);
    let mirror = oz_core::runner::mirror_of(&mirrors, &RepoRef::new("acme", "app").unwrap());
    for _ in 0..200 {
        if mirror.join("HEAD").is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mirror.join("HEAD").is_file(), "the worker made no mirror at {}", mirror.display());
    // A push the mirror has not seen (it is fetched at most every 30 s): the clone borrows what the
    // mirror has and fetches the rest from the remote.
    s.push("pushed after the mirror");
    let (state, output) = run(&s, &env_id, script).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(
        output.contains(&format!("{}/objects", mirror.display())),
        "the clone borrows the mirror's objects: {output}"
    );
    assert!(output.contains("pushed after the mirror"), "the clone is at the remote's HEAD: {output}");
    assert!(output.contains("referencing the worker's mirror"), "the history says so: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_grows_the_pool_up_to_max_size_and_idleness_shrinks_it_back() {
    let s = stack().await;
    let env_id = environment(&s, "echo set-up > setup.txt").await;
    let config = WarmPoolConfig { max_size: Some(2), idle_secs: 2, ..pool(&env_id) };
    let w = worker(&s, vec![config]);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;
    let status = || w.warm_pools().status().into_iter().find(|p| p.environment == env_id).unwrap();
    assert_eq!(status().target, 1);
    // Two tasks at once: one takes the ready sandbox, the other misses and the pool grows.
    let (a, b) = tokio::join!(run(&s, &env_id, "sleep 1"), run(&s, &env_id, "sleep 1"));
    assert_eq!((a.0, b.0), (RunState::Succeeded, RunState::Succeeded));
    let after = status();
    assert!(after.hits >= 1 && after.misses >= 1, "{after:?}");
    assert_eq!(after.target, 2, "a miss raised the target: {after:?}");
    ready(&w, &env_id, 2).await;
    assert!(status().oldest_ready_secs.is_some());
    // Never above max_size, and back to size once idle (2 s), the surplus sandbox removed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = status();
        assert!(now.ready + now.warming <= 2, "{now:?}");
        if now.target == 1 && now.ready == 1 && now.warming == 0 && warm_dirs(&s.workspaces()).len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the idle pool never shrank: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.warm_pools().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_replaces_the_ready_sandbox_with_one_at_the_new_head() {
    let s = stack().await;
    let env_id = environment(&s, "git -C app log -1 --format=%s > setup.txt").await;
    let w = worker(&s, vec![WarmPoolConfig { refresh_secs: 1, ..pool(&env_id) }]);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;
    let first = warm_dirs(&s.workspaces());
    assert_eq!(first.len(), 1, "{first:?}");
    s.push("pushed-while-ready");
    // Within a check or two (1 s), a sandbox at the new HEAD is ready and the old one is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let replaced = loop {
        let dirs = warm_dirs(&s.workspaces());
        let status = w.warm_pools().status();
        if dirs.len() == 1 && dirs[0] != first[0] && status[0].ready == 1 {
            break dirs[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never replaced: {dirs:?} {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let setup = std::fs::read_to_string(replaced.join("workspace/setup.txt")).unwrap();
    assert_eq!(setup.trim(), "pushed-while-ready", "the replacement ran its setup at the new HEAD");
    // A task takes it with nothing to catch up.
    let (state, output) = run(&s, &env_id, "cat setup.txt").await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.contains("warm sandbox: cloned and set up"), "{output}");
    assert!(!output.contains("moved since the sandbox was prepared"), "{output}");
    w.warm_pools().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repos_pushed_tells_the_worker_at_once_to_replace_its_sandbox() {
    let s = stack().await;
    let env_id = environment(&s, "git -C app log -1 --format=%s > setup.txt").await;
    // No polling: only the control plane's word moves it.
    let w = worker(&s, vec![WarmPoolConfig { refresh_secs: 0, ..pool(&env_id) }]);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;
    // Connected: the first report of its pools reached the control plane.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.client.workers().list().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = warm_dirs(&s.workspaces());
    s.push("pushed-and-told");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(warm_dirs(&s.workspaces()), first, "without being told, the pool keeps its sandbox");
    let told = s.client.workers().repos_pushed(&[RepoRef::new("acme", "app").unwrap()]).await.unwrap();
    assert_eq!(told, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dirs = warm_dirs(&s.workspaces());
        if dirs.len() == 1 && dirs[0] != first[0] && w.warm_pools().status()[0].ready == 1 {
            let setup = std::fs::read_to_string(dirs[0].join("workspace/setup.txt")).unwrap();
            assert_eq!(setup.trim(), "pushed-and-told");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never replaced after being told: {dirs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bad input: no repos, or a malformed one, is a 400 that tells no one.
    let bad = s.client.workers().repos_pushed(&[]).await.unwrap_err();
    assert!(bad.to_string().contains("repos"), "{bad}");
    w.warm_pools().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preparation_abandoned_half_way_leaves_no_runner_and_no_workspace() {
    use oz_core::backend::Backend;
    let dir = tempfile::Builder::new().prefix("w").tempdir_in("/tmp").unwrap();
    let root = dir.path().join("ws");
    let backend = Arc::new(DirectBackend::new(DirectConfig::new("abandon-worker", &root)).unwrap());
    let warm = oz_core::warm::WarmSpec {
        sandbox: oz_core::task::SandboxSpec::default(),
        entrypoint: OZ.into(),
        environment: EnvironmentConfig {
            name: "slow".into(),
            setup_commands: vec!["sleep 60".into()],
            ..Default::default()
        },
        git_base_url: None,
        env: vec![],
        ready_within: Duration::from_secs(120),
    };
    let preparing = tokio::spawn({
        let backend = backend.clone();
        async move { backend.prepare(warm).await }
    });
    // Its runner is up (its pid in the marker), its setup under way: then the wait is given up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(dir) = warm_dirs(&root).first()
            && let Ok(text) = std::fs::read(dir.join("oz-task.json"))
            && let Some(pid) = serde_json::from_slice::<serde_json::Value>(&text).ok().and_then(|m| m["pid"].as_u64())
        {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "the warm runner never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    preparing.abort();
    let _ = preparing.await;
    assert!(warm_dirs(&root).is_empty(), "the workspace is removed");
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "the waiting runner is gone: {state}");
}

/// `package_caches:`: every sandbox of an environment, warm or cold, gets the environment's own
/// folder at `OZ_CACHE_DIR`, which outlives them: what a warm setup put there is in it for the runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_package_cache_outlives_its_sandboxes_warm_or_cold() {
    let s = stack().await;
    let caches = s.dir.path().join("caches");
    let env_id = environment(&s, "echo setup-$(date +%s%N) >> \"$OZ_CACHE_DIR/setups\"").await;
    let w = worker_with(&s, vec![pool(&env_id)], None, Some(&caches));
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;
    let script = "echo \"at=$OZ_CACHE_DIR\"; echo run >> \"$OZ_CACHE_DIR/runs\"; wc -l < \"$OZ_CACHE_DIR/runs\"";
    let (state, output) = run(&s, &env_id, script).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.contains(&format!("at={}", caches.join(&env_id).display())), "the environment's folder: {output}");
    let setups = std::fs::read_to_string(caches.join(&env_id).join("setups")).unwrap();
    assert!(!setups.is_empty(), "the warm setup wrote into the cache");
    // With the pool emptied (the worker stopped), a cold run finds what the first run left.
    w.handle().shutdown();
    let cold = worker_with(&s, vec![], None, Some(&caches));
    tokio::spawn(cold.clone().run_shared());
    let (state, output) = run(&s, &env_id, script).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.lines().any(|l| l.trim() == "2"), "the second run sees the first's entry: {output}");
    cold.handle().shutdown();
    s.server.shutdown().await;
}

/// `max_memory_mb`: the pool measures each sandbox once ready and prepares no more once one more
/// like them would pass the cap, but always keeps one. The memory shows on `GET /workers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_cap_stops_the_pool_growing_but_keeps_one_sandbox() {
    let s = stack().await;
    let env_id = environment(&s, "echo ok > setup.txt").await;
    // A cap of 1 MiB: a ready sandbox (its waiting runner alone) passes it.
    let capped = WarmPoolConfig { size: 3, max_memory_mb: Some(1), ..pool(&env_id) };
    let w = worker(&s, vec![capped]);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = w.warm_pools().status()[0].clone();
    assert_eq!((status.ready, status.warming, status.target), (1, 0, 3), "held at one by the cap: {status:?}");
    let memory = status.memory_bytes.expect("measured");
    assert!(memory > 1024 * 1024, "the runner's group is measured: {memory}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers = s.client.workers().list().await.unwrap();
        let shown = workers.iter().flat_map(|w| w.warm_pools.iter()).find(|p| p.environment == env_id).cloned();
        if shown.as_ref().and_then(|p| p.memory_bytes).is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "GET /workers never showed the memory: {shown:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without the cap, the same pool fills to its size.
    w.handle().shutdown();
    let uncapped = worker(&s, vec![WarmPoolConfig { size: 3, ..pool(&env_id) }]);
    tokio::spawn(uncapped.clone().run_shared());
    ready(&uncapped, &env_id, 3).await;
    uncapped.handle().shutdown();
    s.server.shutdown().await;
}

const PRIVATE_TOKEN: &str = "ghp_private-repo-only-3b9d7e";

/// A private repo (a git server that wants a token) is warmed: the worker mirrors it with the
/// read-only credential the control plane issues it, the warm sandbox clones from that mirror
/// without reaching the remote and holds no credential, and the task, handed the run's own
/// credential, brings it to the HEAD pushed after the preparation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repo_is_warmed_from_the_workers_mirror_and_no_sandbox_holds_its_credential() {
    use base64::Engine;
    let s = stack().await;
    let base = support::git_http_server(s.dir.path().join("git"), "x-access-token", PRIVATE_TOKEN).await;
    let host = base.strip_prefix("http://").unwrap().split('/').next().unwrap().to_owned();
    s.client.secrets().set("git-token", PRIVATE_TOKEN).await.unwrap();
    let provider = oz_core::wire::admin::GitProvider::Static {
        token_secret: "git-token".into(),
        username: Some("x-access-token".into()),
    };
    s.client.git_providers().set(&host, &provider).await.unwrap();
    let env = EnvironmentConfig {
        name: "private".into(),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        setup_commands: vec!["echo set-up > setup.txt".into()],
        env_vars: [("OZ_GIT_BASE_URL".to_owned(), base.clone())].into_iter().collect(),
        ..Default::default()
    };
    let env_id = s.client.environments().create(&env).await.unwrap().uid;
    let mirrors = s.dir.path().join("mirrors");
    let w = worker_with(&s, vec![pool(&env_id)], Some(&mirrors), None);
    tokio::spawn(w.clone().run_shared());
    ready(&w, &env_id, 1).await;

    // The worker mirrored the private repo with its preparation credential.
    let mirror = oz_core::runner::mirror_of(&mirrors, &RepoRef::new("acme", "app").unwrap());
    assert!(mirror.join("HEAD").is_file(), "no mirror of the private repo at {}", mirror.display());
    // The warm sandbox cloned it from there, and holds no credential: not in its runner's
    // environment or argv, not in a file of its workspace, not in the mirror it borrows from.
    let first = warm_dirs(&s.workspaces());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].join("workspace/app/README.md").is_file(), "the repo is not in the warm sandbox");
    let pid = marker_pid(&first[0]);
    let mut seen = Vec::new();
    for proc_file in ["environ", "cmdline"] {
        seen.extend(std::fs::read(format!("/proc/{pid}/{proc_file}")).unwrap());
    }
    for file in walk(&first[0]).into_iter().chain(walk(&mirror)) {
        seen.extend(std::fs::read(file).unwrap_or_default());
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{PRIVATE_TOKEN}"));
    for secret in [PRIVATE_TOKEN, basic.as_str()] {
        assert!(
            !seen.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the repo's credential is in the warm sandbox or the mirror"
        );
    }

    // A push after the preparation; the task starts in that sandbox at the new HEAD.
    s.push("pushed-to-the-private-repo");
    let (state, output) = run(&s, &env_id, SCRIPT).await;
    assert_eq!(state, RunState::Succeeded, "{output}");
    assert!(output.contains(first[0].file_name().unwrap().to_str().unwrap()), "not the warm sandbox: {output}");
    assert!(output.contains("cloning from the worker's mirror"), "{output}");
    assert!(output.contains("pushed-to-the-private-repo"), "not at the new HEAD: {output}");
    assert!(!output.contains(PRIVATE_TOKEN), "the token is in the run's output");
    let status = &w.warm_pools().status()[0];
    assert_eq!((status.hits, status.misses), (1, 0), "{status:?}");

    // A mirror owned by another user (the worker's, read by a container that runs as someone
    // else): git refuses to clone such a repository, so the warm clone only borrows its objects.
    if nix::unistd::geteuid().is_root() {
        let chown = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&mirror).status().unwrap();
        assert!(chown.success());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while first[0].exists() {
            assert!(tokio::time::Instant::now() < deadline, "the used sandbox was not removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ready(&w, &env_id, 1).await;
        let second = warm_dirs(&s.workspaces());
        let (state, output) = run(&s, &env_id, SCRIPT).await;
        assert_eq!(state, RunState::Succeeded, "{output}");
        assert!(output.contains(second[0].file_name().unwrap().to_str().unwrap()), "not the warm sandbox: {output}");
        assert!(output.contains("cloning from the worker's mirror"), "{output}");
        let status = &w.warm_pools().status()[0];
        assert_eq!((status.hits, status.misses), (2, 0), "{status:?}");
    }
    w.handle().shutdown();
    s.server.shutdown().await;
}
