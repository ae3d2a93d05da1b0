//! End to end over real sockets: the control plane, a worker on the Direct backend, and the `oz`
//! runner as the agent's entrypoint. A run clones a local repo, commits, and is reported back; a run
//! is cancelled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
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
use oz_worker::{CommandOptions, Worker, WorkerConfig};

const OZ: &str = env!("CARGO_BIN_EXE_oz");

mod support;
use support::git;

struct Stack {
    _dir: tempfile::TempDir,
    server: oz_server::RunningServer,
    client: oz_sdk::Client,
    worker: oz_worker::WorkerHandle,
    workspaces: std::path::PathBuf,
    git_base: String,
}

async fn stack() -> Stack {
    // Server errors are logged, not returned: show them in the test's output.
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    // A sample repo at <dir>/git/acme/app.
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
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "e2e").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "e2e", &["e2e-worker"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();

    let workspaces = dir.path().join("workspaces");
    let mut direct = DirectConfig::new("e2e-worker", &workspaces);
    direct.stop_grace = Duration::from_secs(2);
    let backend = Arc::new(DirectBackend::new(direct).unwrap());
    let command = CommandOptions {
        entrypoint: OZ.into(),
        server_root_url: server.url(),
        idle_on_complete: None,
        extra_env: vec![],
        package_caches: false,
    };
    let ws = format!("{}/api/v1/selfhosted/worker/ws", server.url().replace("http://", "ws://"));
    let worker = Worker::new(WorkerConfig::new("e2e-worker", ws, ApiKey::new(worker_key), command), backend).unwrap();
    let handle = worker.handle();
    tokio::spawn(worker.run());
    let git_base = format!("file://{}", dir.path().join("git").display());
    Stack { _dir: dir, server, client, worker: handle, workspaces, git_base }
}

async fn environment(s: &Stack) -> String {
    let env = EnvironmentConfig {
        name: "app".into(),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        setup_commands: vec!["echo set-up > setup.txt".into()],
        env_vars: [
            ("OZ_GIT_BASE_URL", s.git_base.as_str()),
            ("GIT_AUTHOR_NAME", "Agent"),
            ("GIT_AUTHOR_EMAIL", "agent@example.com"),
            ("GIT_COMMITTER_NAME", "Agent"),
            ("GIT_COMMITTER_EMAIL", "agent@example.com"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    };
    s.client.environments().create(&env).await.unwrap().uid
}

fn command_config(env_id: &str, script: &str) -> AgentConfig {
    AgentConfig {
        worker_host: Some("e2e-worker".into()),
        environment_id: Some(env_id.into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_from_the_api_through_a_worker_and_comes_back_with_its_commit() {
    let s = stack().await;
    let env_id = environment(&s).await;
    let script = "set -e; cd app; cat ../setup.txt; echo \"$OZ_PROMPT\" >> README.md; git add README.md; git commit -q -m 'agent: apply the prompt'; echo done";
    let run = s
        .client
        .runs()
        .create("add a line to the README")
        .agent_config(command_config(&env_id, script))
        .send()
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(60),
        s.client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>(),
    )
    .await
    .expect("the run ends");
    let states: Vec<RunState> = events.iter().filter_map(|e| e.state()).collect();
    assert_eq!(states.first(), Some(&RunState::Pending), "{states:?}");
    assert!(states.contains(&RunState::Claimed) && states.contains(&RunState::InProgress), "{states:?}");
    assert_eq!(states.last(), Some(&RunState::Succeeded), "{events:#?}");
    let output: String =
        events.iter().filter(|e| e.kind() == "output").filter_map(|e| e.event["text"].as_str()).collect();
    assert!(output.contains("set-up") && output.contains("done"), "{output}");
    let item = s.client.runs().get(&run.run_id).await.unwrap();
    let artifacts = item.artifacts.unwrap_or_default();
    assert!(format!("{artifacts:?}").contains("agent: apply the prompt"), "{artifacts:?}");
    assert!(item.started_at.is_some());
    // The run is reported as soon as the runner says so; the backend removes the workspace right after.
    for _ in 0..100 {
        if !s.workspaces.join(&run.run_id).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.workspaces.join(&run.run_id).exists(), "the workspace was removed");
    s.worker.shutdown();
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_through_the_api() {
    let s = stack().await;
    let env_id = environment(&s).await;
    let run = s
        .client
        .runs()
        .create("wait forever")
        .agent_config(command_config(&env_id, "echo started; sleep 300"))
        .send()
        .await
        .unwrap();
    let mut events = Box::pin(s.client.runs().events(&run.run_id));
    // Wait until the agent is running, then cancel.
    while let Some(e) = events.next().await {
        if e.unwrap().kind() == "harness_started" {
            break;
        }
    }
    for _ in 0..50 {
        match s.client.runs().cancel(&run.run_id).await {
            Ok(_) => break,
            Err(e) if e.status() == Some(409) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let rest: Vec<_> =
        tokio::time::timeout(Duration::from_secs(60), events.map(|e| e.unwrap()).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(rest.iter().rev().find_map(|e| e.state()), Some(RunState::Cancelled), "{rest:#?}");
    for _ in 0..100 {
        if !s.workspaces.join(&run.run_id).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.workspaces.join(&run.run_id).exists(), "the cancelled task's workspace was removed");
    s.worker.shutdown();
    s.server.shutdown().await;
}

/// The README's first command: `oz local quickstart` on a fresh data directory.
#[test]
fn the_quickstart_runs_the_main_job_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(OZ).args(["local", "quickstart", "--data-dir"]).arg(dir.path().join("data")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "CLAIMED     claimed by worker local",
        "cloned acme/hello",
        "agent: committed",
        "==> run SUCCEEDED",
        "git_commit",
        "submitted -> claimed",
        "total",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
    // Nothing left running or lying around: the workspace is gone, and no key is left in a file.
    let workspaces = dir.path().join("data/workspaces");
    assert_eq!(std::fs::read_dir(&workspaces).unwrap().count(), 0);
    assert!(!dir.path().join("data/api-key").exists(), "a key file nobody asked for");
    // A second run in the same data directory reuses the team and the sample.
    let again =
        Command::new(OZ).args(["local", "quickstart", "--data-dir"]).arg(dir.path().join("data")).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stdout));
}

/// `oz local quickstart --warm`: the run again, from a sandbox prepared meanwhile, with both timings;
/// nothing of the warm sandbox is left afterwards.
#[test]
fn the_quickstart_runs_again_from_a_warm_sandbox() {
    let dir = tempfile::Builder::new().prefix("q").tempdir_in("/tmp").unwrap();
    let out = Command::new(OZ)
        .args(["local", "quickstart", "--warm", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "timing (cold start)",
        "warming a sandbox",
        "timing (warm start)",
        "warm sandbox: cloned and set up",
        "warm pool: 1 hit(s), 0 miss(es)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
    assert_eq!(stdout.matches("==> run SUCCEEDED").count(), 2, "{stdout}");
    let workspaces = dir.path().join("data/workspaces");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&workspaces).unwrap().count() != 0 {
        assert!(std::time::Instant::now() < deadline, "a workspace outlived the quickstart");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The control plane restarts while a run is in progress: the worker reconnects and delivers the
/// outcome, and the run completes and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_restarts_mid_run_and_the_run_still_completes() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oz.db");
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "restart").await.unwrap();
    let worker_key =
        oz_server::mint_worker_credential(store.as_ref(), &team, "restart", &["restart-worker"]).await.unwrap();
    let config = || oz_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        lease_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let server = oz_server::start(config(), store).await.unwrap();
    let addr = server.local_addr();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();

    let backend = Arc::new(DirectBackend::new(DirectConfig::new("restart-worker", dir.path().join("ws"))).unwrap());
    let command = CommandOptions {
        entrypoint: OZ.into(),
        server_root_url: server.url(),
        idle_on_complete: None,
        extra_env: vec![],
        package_caches: false,
    };
    let ws = format!("ws://{addr}/api/v1/selfhosted/worker/ws");
    let mut worker_config = WorkerConfig::new("restart-worker", ws, ApiKey::new(worker_key), command);
    worker_config.backoff_min = Duration::from_millis(200);
    let worker = Worker::new(worker_config, backend).unwrap();
    let worker_handle = worker.handle();
    tokio::spawn(worker.run());

    let config_with = |script: &str| AgentConfig {
        worker_host: Some("restart-worker".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client
        .runs()
        .create("survive a restart")
        .agent_config(config_with("echo working; sleep 3; echo finished"))
        .send()
        .await
        .unwrap();
    // Wait until the agent runs, then take the control plane down.
    for _ in 0..200 {
        if client.runs().get(&run.run_id).await.unwrap().state == RunState::InProgress {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(client.runs().get(&run.run_id).await.unwrap().state, RunState::InProgress);
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same database, the same address.
    let mut config = config();
    config.listen = addr.to_string();
    let restarted = oz_server::start(config, Arc::new(SqliteStore::open(&db).await.unwrap())).await.unwrap();
    let mut state = RunState::InProgress;
    for _ in 0..400 {
        state = client.runs().get(&run.run_id).await.unwrap().state;
        if state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, RunState::Succeeded, "{:?}", client.runs().get(&run.run_id).await.unwrap());
    let transcript = client.runs().transcript(&run.run_id).await.unwrap();
    assert!(transcript.iter().any(|e| e["event"]["event"] == "started"), "events from before the restart are kept");
    worker_handle.shutdown();
    restarted.shutdown().await;
}

/// A TCP proxy on loopback whose link can be cut (all connections dropped, new ones refused) and
/// restored.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Self { addr, up, conns }
    }
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The network between the worker (and its runner) and the control plane drops mid-run and comes
/// back: the outcome still arrives, through the worker's outbox after it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_drops_mid_run_and_the_outcome_still_arrives() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "net").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "net", &["net-worker"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    let proxy = Proxy::start(server.local_addr()).await;
    let via_proxy = format!("http://{}", proxy.addr);

    let backend = Arc::new(DirectBackend::new(DirectConfig::new("net-worker", dir.path().join("ws"))).unwrap());
    let command = CommandOptions {
        entrypoint: OZ.into(),
        server_root_url: via_proxy.clone(),
        idle_on_complete: None,
        extra_env: vec![],
        package_caches: false,
    };
    let mut config = WorkerConfig::new(
        "net-worker",
        format!("ws://{}/api/v1/selfhosted/worker/ws", proxy.addr),
        ApiKey::new(worker_key),
        command,
    );
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    let worker = Worker::new(config, backend).unwrap();
    let handle = worker.handle();
    tokio::spawn(worker.run());

    let agent = AgentConfig {
        worker_host: Some("net-worker".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "echo started; sleep 1; echo done".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client.runs().create("through a flaky network").agent_config(agent).send().await.unwrap();
    // Wait until the agent itself runs (the runner has its prompt), however slow the machine.
    let mut running = false;
    for _ in 0..400 {
        let transcript = client.runs().transcript(&run.run_id).await.unwrap();
        if transcript.iter().any(|e| e["event"]["event"] == "harness_started") {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(running, "the agent never started");
    // Cut the link for longer than the task lasts and than the runner retries its reports.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        client.runs().get(&run.run_id).await.unwrap().state,
        RunState::InProgress,
        "nothing reached the server during the outage"
    );
    proxy.restore();
    let mut state = RunState::InProgress;
    for _ in 0..200 {
        state = client.runs().get(&run.run_id).await.unwrap().state;
        if state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, RunState::Succeeded, "{:?}", client.runs().get(&run.run_id).await.unwrap());
    handle.shutdown();
    server.shutdown().await;
}
