//! End to end with the Docker backend, over real sockets and the real engine: the quickstart, a run in
//! a bare busybox image (no git, no CA certificates, no package manager) that still clones and runs its
//! harness, a worker killed mid-run whose restart reattaches and leaves nothing behind, and a warm
//! pool whose container is handed its task on stdin (a killed worker's warm container is removed).
//!
//! Needs the Docker engine, the local test images (`.ci/prepare-docker.sh`) and the static sidecar
//! (`scripts/build-sidecar-oz.sh`). Without them the tests skip loudly, unless `OZ_REQUIRE_DOCKER=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use oz_cli::local::LocalBackend;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::run::RunState;
use oz_core::task::labels;
use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;

const OZ: &str = env!("CARGO_BIN_EXE_oz");

mod support;
use support::git;

/// The static sidecar and a reachable engine with the test images, or `None` (skip, said loudly).
fn prerequisites() -> Option<PathBuf> {
    let required = std::env::var("OZ_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let sidecar = std::env::var_os("OZ_SIDECAR_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sidecar/oz"));
    let engine = Command::new("docker")
        .args(["image", "inspect", "oz-test/busybox:latest", "oz-test/debian-git:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let problem = if !engine {
        Some("no Docker engine with the test images (run .ci/prepare-docker.sh)".to_owned())
    } else if !sidecar.exists() {
        Some(format!("no static sidecar at {} (run scripts/build-sidecar-oz.sh)", sidecar.display()))
    } else {
        None
    };
    match problem {
        None => Some(sidecar),
        Some(p) if required => panic!("OZ_REQUIRE_DOCKER=1 but {p}"),
        Some(p) => {
            eprintln!("\n*** SKIPPED: {p}. Set OZ_REQUIRE_DOCKER=1 to make this a failure. ***\n");
            None
        }
    }
}

/// A bare repo at `<root>/git/acme/app`; returns the `file://` base URL.
fn remote(root: &Path) -> String {
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README.md"), "# app\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "initial"]);
    let bare = root.join("git/acme/app");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(root, &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    format!("file://{}", root.join("git").display())
}

fn containers_of(task_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label={}={task_id}", labels::TASK_ID)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_on_the_docker_backend() {
    let Some(sidecar) = prerequisites() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(OZ)
        .args(["local", "quickstart", "--backend", "docker", "--sidecar"])
        .arg(&sidecar)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["on the Docker backend", "cloned acme/hello", "agent: committed", "==> run SUCCEEDED"] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_busybox_image_still_clones_and_runs_the_harness() {
    let Some(sidecar) = prerequisites() else { return };
    let dir = tempfile::tempdir().unwrap();
    remote(dir.path());
    // Over authenticated smart HTTP, as from GitHub: the built-in git speaks it without a git binary.
    let token = "ghs_docker_e2e_token_0123456789abcdef";
    let git_base = support::git_http_server(dir.path().join("git"), "x-access-token", token).await;
    let host = git_base.trim_start_matches("http://").trim_end_matches("/git").to_owned();
    let backend = LocalBackend::Docker { sidecar, mounts: vec![] };
    let stack = oz_cli::local::start_with(&dir.path().join("data"), "127.0.0.1:0", OZ.into(), backend).await.unwrap();
    let client = stack.client().unwrap();
    // The git token and an npm token are team secrets; the git host's provider hands out the first.
    let npm_token = "npm_docker_e2e_secret_fedcba9876543210";
    client.secrets().set("git-token", token).await.unwrap();
    client.secrets().set("npm-token", npm_token).await.unwrap();
    let provider = oz_core::wire::admin::GitProvider::Static { token_secret: "git-token".into(), username: None };
    client.git_providers().set(&host, &provider).await.unwrap();
    let mut env = EnvironmentConfig {
        name: "bare".into(),
        docker_image: Some("oz-test/busybox:latest".into()),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        ..Default::default()
    };
    env.env_vars.insert("OZ_GIT_BASE_URL".into(), git_base);
    env.secrets.insert("NPM_TOKEN".into(), "npm-token".into());
    let env_id = client.environments().create(&env).await.unwrap().uid;
    // The harness names the variables holding a token in its own and its runner's environment (the
    // patterns do not match themselves in OZ_HARNESS_COMMAND), then waits a moment so the
    // test can inspect the running container.
    let script = "set -e; test ! -e /usr/bin/git; test ! -e /etc/ssl/certs/ca-certificates.crt; \
                  head -1 app/README.md; echo \"in $(pwd) as $(id -u)\"; \
                  echo \"tokens in env: [$(env | grep -e 'oz[w]_' -e 'gh[s]_' | cut -d= -f1 | tr '\\n' ' ')]\"; \
                  echo \"tokens in the runner's env: [$(tr '\\0' '\\n' < /proc/$PPID/environ | grep -e 'oz[w]_' -e 'gh[s]_' | cut -d= -f1 | tr '\\n' ' ')]\"; \
                  echo \"runner readable: $(cat /proc/$PPID/environ >/dev/null 2>&1 && echo yes || echo no)\"; \
                  echo \"npm=$NPM_TOKEN\"; sleep 2";
    let config = AgentConfig {
        worker_host: Some("local".into()),
        environment_id: Some(env_id),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client.runs().create("look around").agent_config(config).send().await.unwrap();
    let run_id = run.run_id.clone();
    let inspected = tokio::spawn(async move {
        for _ in 0..600 {
            // Listed, then inspected: one that went in between (a container being replaced) is
            // looked for again.
            if let Some(name) = containers_of(&run_id).first() {
                let out = Command::new("docker").args(["inspect", name]).output().unwrap();
                let inspect = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && inspect.trim() != "[]" {
                    return inspect;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no container for the run");
    });
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(120),
        client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>(),
    )
    .await
    .expect("the run ends");
    let item = client.runs().get(&run.run_id).await.unwrap();
    let output: String = events
        .iter()
        .filter(|e| e.kind() == "output")
        .map(|e| e.event["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(item.state, RunState::Succeeded, "{item:?}\n{output}");
    assert!(output.contains("# app"), "the repo was cloned without git: {output}");
    assert!(output.contains("in /workspace as 0"), "{output}");
    assert!(output.contains("tokens in env: []"), "{output}");
    assert!(output.contains("tokens in the runner's env: []"), "{output}");
    assert!(
        output.contains("runner readable: no"),
        "the runner is non-dumpable: its children cannot read it: {output}"
    );
    assert!(output.contains("npm="), "{output}");
    for secret in [token, npm_token] {
        assert!(events.iter().all(|e| !e.event.to_string().contains(secret)), "a secret reached the transcript");
    }
    let inspect = inspected.await.unwrap();
    assert!(inspect.contains("OZ_SECRET_INPUT"), "not the container of the run: {inspect}");
    for secret in [token, npm_token, "ozw_"] {
        assert!(!inspect.contains(secret), "docker inspect shows {secret:?}:\n{inspect}");
    }
    // The run ends when the runner reports; the worker removes the container just after.
    for _ in 0..200 {
        if containers_of(&run.run_id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(containers_of(&run.run_id).is_empty(), "the container was removed");
    stack.stop().await;
}

/// A control plane on loopback with a team, and the credential a worker of `worker_id` joins with.
struct Plane {
    server: oz_server::RunningServer,
    client: oz_sdk::Client,
    worker_id: String,
    worker_key: String,
}

async fn plane(worker_id: String) -> Plane {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "t").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "docker", &[&worker_id]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    Plane { server, client, worker_id, worker_key }
}

impl Plane {
    /// Writes `dir/worker.yaml`: this worker on the Docker backend (the sidecar, the host's network,
    /// no pulls), then `more` (top-level keys, or `    ...` lines under `docker:`).
    fn worker_config(&self, dir: &Path, sidecar: &Path, more: &str) {
        let yaml = format!(
            "worker_id: {}\nbackend:\n  docker:\n    sidecar_binary: {}\n    network: host\n    pull_policy: never\n{more}",
            self.worker_id,
            sidecar.display()
        );
        std::fs::write(dir.join("worker.yaml"), yaml).unwrap();
    }

    /// Starts the real `oz-agent-worker` with `dir/worker.yaml` (its outbox in `dir`).
    fn spawn_worker(&self, dir: &Path) -> std::process::Child {
        Command::new(Path::new(OZ).with_file_name("oz-agent-worker"))
            .arg("--config-file")
            .arg(dir.join("worker.yaml"))
            .args(["--server-root-url", &self.server.url(), "--log-level", "warn"])
            .env("WARP_API_KEY", &self.worker_key)
            .env("OZ_WORKER_OUTBOX_FILE", dir.join("worker.outbox"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_reattaches_after_restart_and_leaves_nothing() {
    let Some(sidecar) = prerequisites() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = plane(format!("docker-reattach-{}", std::process::id())).await;
    let Plane { client, worker_id, .. } = &p;
    p.worker_config(dir.path(), &sidecar, "");
    let spawn = || p.spawn_worker(dir.path());
    let mut worker = spawn();
    let config = AgentConfig {
        worker_host: Some(worker_id.clone()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "echo started; sleep 4; echo finished".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let environment = EnvironmentConfig {
        name: "busybox".into(),
        docker_image: Some("oz-test/busybox:latest".into()),
        ..Default::default()
    };
    let env_id = client.environments().create(&environment).await.unwrap().uid;
    let config = AgentConfig { environment_id: Some(env_id), ..config };
    let run = client.runs().create("outlive the worker").agent_config(config).send().await.unwrap();
    for _ in 0..600 {
        if client.runs().get(&run.run_id).await.unwrap().state == RunState::InProgress {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.runs().get(&run.run_id).await.unwrap().state, RunState::InProgress);
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    assert_eq!(containers_of(&run.run_id).len(), 1, "the container outlives its worker");

    let restarted = spawn();
    let mut item = client.runs().get(&run.run_id).await.unwrap();
    for _ in 0..600 {
        item = client.runs().get(&run.run_id).await.unwrap();
        if item.state.is_terminal() && containers_of(&run.run_id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(item.state, RunState::Succeeded, "{item:?}");
    assert!(containers_of(&run.run_id).is_empty(), "the reattached worker removed the container");
    Command::new("kill").args(["-TERM", &restarted.id().to_string()]).status().unwrap();
    let out = restarted.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("found 1 task(s) left by an earlier run"), "{stderr}");
    p.server.shutdown().await;
}

/// The names of the containers of `worker_id` that are warm sandboxes (`oz.dev/warm-id`).
fn warm_containers(worker_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .args(["--filter", &format!("label={}={worker_id}", labels::WORKER_ID)])
        .args(["--filter", "label=oz.dev/warm-id"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    names.sort();
    names
}

fn docker_inspect(name: &str) -> String {
    String::from_utf8_lossy(&Command::new("docker").args(["inspect", name]).output().unwrap().stdout).into_owned()
}

/// Waits until the worker reports one ready warm sandbox in `env_id`'s pool (a container listed
/// before that may still be preparing); a preparation that failed fails the test, saying why.
async fn pool_ready(client: oz_sdk::Client, env_id: String) -> oz_core::wire::worker::WarmPoolState {
    for _ in 0..1200 {
        let workers = client.workers().list().await.unwrap();
        let pool = workers.iter().flat_map(|w| &w.warm_pools).find(|p| p.environment == env_id).cloned();
        if let Some(pool) = pool {
            assert!(pool.last_error.is_none(), "{pool:?}");
            if pool.ready == 1 {
                return pool;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the warm pool never got ready");
}

/// Waits until `pred` holds for the worker's warm containers; returns them.
async fn warm_until(worker_id: &str, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    for _ in 0..1200 {
        let found = warm_containers(worker_id);
        if pred(&found) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {:?}", warm_containers(worker_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_container_is_handed_its_task_on_stdin_and_a_killed_worker_leaves_none() {
    let Some(sidecar) = prerequisites() else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let git_base = remote(dir.path());
    let p = plane(format!("docker-warm-{}", std::process::id())).await;
    let Plane { client, worker_id, worker_key, .. } = &p;
    let mut environment = EnvironmentConfig {
        name: "warm".into(),
        docker_image: Some("oz-test/debian-git:latest".into()),
        github_repos: vec![RepoRef::new("acme", "app").unwrap()],
        setup_commands: vec!["echo \"set up in $(pwd)\" > setup.txt".into()],
        ..Default::default()
    };
    environment.env_vars.insert("OZ_GIT_BASE_URL".into(), git_base);
    let env_id = client.environments().create(&environment).await.unwrap().uid;
    let git_dir = dir.path().join("git");
    // The worker's mirrors, with one of a repo this environment does not have (another
    // environment's private one): its sandboxes must not see it.
    let mirrors = dir.path().join("mirrors");
    std::fs::create_dir_all(mirrors.join("acme/other-private.git")).unwrap();
    std::fs::write(mirrors.join("acme/other-private.git/HEAD"), "ref: refs/heads/main\n").unwrap();
    p.worker_config(
        dir.path(),
        &sidecar,
        &format!(
            "    volumes: [\"{0}:{0}:ro\"]\nlocal_git_remotes: true\ngit_mirrors: {1}\nwarm_pools:\n  - environment: {env_id}\n    size: 1\n",
            git_dir.display(),
            mirrors.display()
        ),
    );
    let spawn = || p.spawn_worker(dir.path());
    let mut worker = spawn();
    pool_ready(client.clone(), env_id.clone()).await;
    let first = warm_containers(worker_id);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("oz-warm-"), "{first:?}");
    // Nothing secret in the waiting container: its spec, its processes' environments, its files.
    assert!(!docker_inspect(&first[0]).contains("ozw_"), "a warm container's spec holds no token");
    let inside = Command::new("docker")
        .args(["exec", &first[0], "sh", "-c"])
        .arg("cat /proc/[0-9]*/environ; find /workspace /oz-warm /tmp -type f -exec cat {} +")
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&inside.stdout);
    assert!(seen.contains("OZ_GIT_BASE_URL") && seen.contains("set up in"), "what was read: {seen:.400}");
    for secret in [worker_key.as_str(), "ozw_", "OZ_WORKLOAD_TOKEN="] {
        assert!(!seen.contains(secret), "the warm container holds {secret:?}");
    }
    // It was cloned from the worker's mirror of its repo, the only mirror it can see.
    let listed = Command::new("docker").args(["exec", &first[0], "ls", "/oz-cache/git/acme"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "app.git", "{listed:?}");
    let alternates = Command::new("docker")
        .args(["exec", &first[0], "cat", "/workspace/app/.git/objects/info/alternates"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&alternates.stdout).trim(),
        "/oz-cache/git/acme/app.git/objects",
        "{alternates:?}"
    );

    // A push after the sandbox was prepared: the task sees it.
    let src = dir.path().join("src");
    std::fs::write(src.join("pushed.txt"), "pushed after warming\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "after warming"]);
    git(&src, &["push", "-q", dir.path().join("git/acme/app").to_str().unwrap(), "HEAD:main"]);
    let script = "cat setup.txt; cat app/pushed.txt; \
                  echo \"tokens in env: [$(env | grep -e 'oz[w]_' | cut -d= -f1 | tr '\\n' ' ')]\"; sleep 1";
    let config = AgentConfig {
        worker_host: Some(worker_id.clone()),
        environment_id: Some(env_id.clone()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = client.runs().create("warm").agent_config(config).send().await.unwrap();
    // The server gives the run an execution id: the name is the run's, then the execution's.
    let assigned = oz_backend_docker::container::assigned_name(&run.run_id, None);
    let watched = first[0].clone();
    let inspected = tokio::spawn(async move {
        for _ in 0..600 {
            let out = Command::new("docker")
                .args(["ps", "--format", "{{.Names}}", "--filter", &format!("name={assigned}-")])
                .output()
                .unwrap();
            if let Some(name) = String::from_utf8_lossy(&out.stdout).lines().next() {
                let (task, execution) = oz_backend_docker::container::parse_assigned_name(name).unwrap();
                assert!(task == assigned.trim_start_matches("oz-run-36-") && execution.is_some(), "{name}");
                let inspect = docker_inspect(name);
                // Its log, read until the container is removed: the last one read is the whole run's.
                let mut logs = String::new();
                loop {
                    let out = Command::new("docker").args(["logs", name]).output().unwrap();
                    if !out.status.success() {
                        break;
                    }
                    logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return (inspect, logs);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the warm container {watched} was never renamed to {assigned}-<execution>");
    });
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(120),
        client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>(),
    )
    .await
    .expect("the run ends");
    let item = client.runs().get(&run.run_id).await.unwrap();
    let output: String =
        events.iter().filter(|e| e.kind() == "output").filter_map(|e| e.event["text"].as_str()).collect();
    assert_eq!(item.state, RunState::Succeeded, "{item:?}\n{output}");
    assert!(output.contains("warm sandbox: cloned and set up"), "{output}");
    assert!(output.contains("set up in /workspace"), "the setup ran before the task: {output}");
    assert!(output.contains("pushed after warming"), "the repo moved to the new HEAD: {output}");
    assert!(output.contains("tokens in env: []"), "the harness holds no token, as in a cold run: {output}");
    let transcript = client.runs().transcript(&run.run_id).await.unwrap();
    assert!(!transcript.is_empty());
    for entry in transcript.iter().chain(events.iter().map(|e| &e.event)) {
        assert!(!entry.to_string().contains("ozw_"), "a workload token reached the run's history: {entry}");
    }
    let (inspect, logs) = inspected.await.unwrap();
    assert!(logs.contains("oz agent warm: ready"), "the container's log, before and after its handoff: {logs}");
    assert!(!logs.contains("ozw_"), "the token is not in the container's log");
    assert!(inspect.contains(&format!("\"oz.dev/warm-id\": \"{}\"", first[0].trim_start_matches("oz-"))), "{inspect}");
    assert!(!inspect.contains("ozw_"), "the token came on stdin, not in the spec:\n{inspect}");
    let pool = pool_ready(client.clone(), env_id.clone()).await;
    assert_eq!((pool.hits, pool.misses), (1, 0), "{pool:?}");
    // Served one task: it is gone, and a new one took its place.
    let refilled = warm_until(worker_id, "a new warm container", |w| w.len() == 1 && w[0] != first[0]).await;

    // SIGKILL with a warm container waiting: the restarted worker removes it and makes its own.
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(warm_containers(worker_id), refilled, "the warm container outlives its killed worker");
    let restarted = spawn();
    warm_until(worker_id, "the left warm container removed", |w| w.len() == 1 && w[0] != refilled[0]).await;
    Command::new("kill").args(["-TERM", &restarted.id().to_string()]).status().unwrap();
    let out = restarted.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(warm_containers(worker_id), Vec::<String>::new(), "a stopped worker discards its warm containers");
    p.server.shutdown().await;
}

fn image_id(reference: &str) -> String {
    let out = Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", reference]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn container_image(name: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", "{{.Image}}", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_container_of_a_retagged_image_is_replaced_by_one_of_the_new_image() {
    let Some(sidecar) = prerequisites() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("oz-test/warm-retag-{}:latest", std::process::id());
    assert!(Command::new("docker").args(["tag", "oz-test/debian-git:latest", &tag]).status().unwrap().success());
    let p = plane(format!("docker-retag-{}", std::process::id())).await;
    let Plane { client, worker_id, .. } = &p;
    let environment = EnvironmentConfig {
        name: "retag".into(),
        docker_image: Some(tag.clone()),
        setup_commands: vec!["echo set-up > setup.txt".into()],
        ..Default::default()
    };
    let env_id = client.environments().create(&environment).await.unwrap().uid;
    p.worker_config(dir.path(), &sidecar, &format!("warm_pools:\n  - environment: {env_id}\n    refresh_secs: 1\n"));
    let worker = p.spawn_worker(dir.path());
    pool_ready(client.clone(), env_id.clone()).await;
    let first = warm_until(worker_id, "a warm container", |w| w.len() == 1).await;
    assert_eq!(container_image(&first[0]), image_id("oz-test/debian-git:latest"), "{first:?}");
    // The tag now names another image: within a check (1 s) a container of it replaces the old one.
    assert!(Command::new("docker").args(["tag", "oz-test/busybox:latest", &tag]).status().unwrap().success());
    let busybox = image_id("oz-test/busybox:latest");
    let replaced = warm_until(worker_id, "a warm container of the new image", |w| {
        w.len() == 1 && w[0] != first[0] && container_image(&w[0]) == busybox
    })
    .await;
    Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    let out = worker.wait_with_output().unwrap();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!replaced.is_empty());
    assert_eq!(warm_containers(worker_id), Vec::<String>::new());
    p.server.shutdown().await;
}
