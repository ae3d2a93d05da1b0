//! `oz-agent-worker --backend kubernetes`, the real program, against the real control plane and the
//! fake Kubernetes API server: a run becomes a Job in the configured namespace, and the Pod's end
//! becomes the run's outcome; a worker restarted mid-run reattaches to the Job.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use oz_core::wire::api::AgentConfig;
use oz_k8s_fake::{FakeCluster, WatchKind};
use oz_server::store::sqlite::SqliteStore;
use serde_json::json;

fn spawn_worker(dir: &std::path::Path, server: &str, key: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--config-file")
        .arg(dir.join("worker.yaml"))
        .args(["--server-root-url", server, "--log-level", "warn"])
        .env("WARP_API_KEY", key)
        .env("OZ_WORKER_OUTBOX_FILE", dir.join("worker.outbox"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// A kubeconfig at `<dir>/kubeconfig` pointing at the fake API server.
fn write_kubeconfig(dir: &std::path::Path, cluster: &FakeCluster) {
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n",
            cluster.url()
        ),
    )
    .unwrap();
}

async fn pod_of(cluster: &FakeCluster, run_id: &str) -> String {
    for _ in 0..400 {
        if let Some(p) = cluster
            .objects(WatchKind::Pod, "agents")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["oz.dev/task-id"] == run_id)
        {
            return p["metadata"]["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pod for run {run_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_becomes_a_job_and_a_restarted_worker_reattaches_to_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = FakeCluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_kubeconfig(dir.path(), &cluster);
    std::fs::write(
        dir.path().join("worker.yaml"),
        format!(
            "worker_id: k8s-e2e\nbackend:\n  kubernetes:\n    namespace: agents\n    kubeconfig: {}\n    sidecar_image: acme/oz-sidecar:1\n    extra_labels: {{team: infra}}\n",
            dir.path().join("kubeconfig").display()
        ),
    )
    .unwrap();
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "t").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "k8s", &["k8s-e2e"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    // A kubelet for the preflight Jobs: each worker start runs one and waits for it.
    let preflights = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kubelet = {
        let cluster = cluster.clone();
        let preflights = preflights.clone();
        tokio::spawn(async move {
            loop {
                for p in cluster.objects(WatchKind::Pod, "agents") {
                    let task = p["metadata"]["labels"]["oz.dev/task-id"].as_str().unwrap_or("");
                    if task.starts_with("preflight-") && p["status"]["phase"] == "Pending" {
                        let name = p["metadata"]["name"].as_str().unwrap();
                        cluster.set_pod_status("agents", name, json!({"phase": "Succeeded"}));
                        preflights.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut worker = spawn_worker(dir.path(), &server.url(), &worker_key);

    let config = AgentConfig { worker_host: Some("k8s-e2e".into()), ..Default::default() };
    let run = client.runs().create("on kubernetes").agent_config(config).send().await.unwrap();
    let pod = pod_of(&cluster, &run.run_id).await;
    assert_eq!(preflights.load(std::sync::atomic::Ordering::SeqCst), 1, "the preflight Job ran before any task");
    let jobs = cluster.objects(WatchKind::Job, "agents");
    let job = jobs.iter().find(|j| j["metadata"]["labels"]["oz.dev/task-id"] == run.run_id.as_str()).unwrap();
    assert_eq!(job["metadata"]["labels"]["team"], "infra");
    let command = &job["spec"]["template"]["spec"]["containers"][0]["command"];
    assert_eq!(command[0], "/agent/entrypoint.sh", "the sidecar's entrypoint runs the agent");
    assert_eq!(command[4], run.run_id.as_str());
    cluster.set_pod_status(
        "agents",
        &pod,
        json!({"phase": "Running", "containerStatuses": [{"name": "task", "image": "ubuntu:22.04", "imageID": "",
               "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
    );

    // The worker dies mid-run; its restart finds the Job and follows it.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut restarted = spawn_worker(dir.path(), &server.url(), &worker_key);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.set_pod_status(
        "agents",
        &pod,
        json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "ubuntu:22.04", "imageID": "",
               "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
    );
    let mut item = client.runs().get(&run.run_id).await.unwrap();
    for _ in 0..400 {
        item = client.runs().get(&run.run_id).await.unwrap();
        if item.state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(item.state.as_str(), "FAILED", "{item:?}");
    assert_eq!(preflights.load(std::sync::atomic::Ordering::SeqCst), 2, "the restart ran it again");
    assert!(item.status_message.unwrap().message.contains("out of memory"));
    Command::new("kill").args(["-TERM", &restarted.id().to_string()]).status().unwrap();
    // Jobs outlive the worker: a graceful shutdown leaves them and exits.
    assert!(restarted.wait().unwrap().success());
    kubelet.abort();
    server.shutdown().await;
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `oz` binary next to this test's build (cargo builds every workspace binary for the tests).
fn oz_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("oz");
    assert!(bin.exists(), "{} is missing: build the workspace (cargo build --workspace) first", bin.display());
    bin
}

/// The names of the warm Jobs in the namespace.
fn warm_jobs(cluster: &FakeCluster) -> Vec<String> {
    cluster
        .objects(WatchKind::Job, "agents")
        .iter()
        .filter(|j| j["metadata"]["labels"]["oz.dev/warm-id"] == j["metadata"]["labels"]["oz.dev/task-id"])
        .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the worker reports `ready` warm Pods for `environment` and a warm Job exists that is
/// not in `not`; returns the warm Jobs.
async fn pool_ready(client: &oz_sdk::Client, cluster: &FakeCluster, environment: &str, not: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let workers = client.workers().list().await.unwrap();
        let pool = workers.iter().flat_map(|w| w.warm_pools.iter()).find(|p| p.environment == environment).cloned();
        let jobs = warm_jobs(cluster);
        if pool.as_ref().is_some_and(|p| p.ready >= 1) && jobs.iter().any(|j| !not.contains(j)) {
            return jobs;
        }
        assert!(tokio::time::Instant::now() < deadline, "the warm pool never got ready: {pool:?} {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `oz-agent-worker --backend kubernetes` with a warm pool, the real runner in the fake kubelet's
/// Pods: a run is handed the ready warm Pod (its setup's output, the HEAD pushed after it was
/// prepared); a run with no ready Pod starts cold; a worker killed with SIGKILL and restarted
/// removes the warm Pod it left and prepares a new one; a graceful stop removes the ready one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_on_kubernetes_hands_a_run_its_pod_and_a_killed_worker_leaves_none_behind() {
    use futures::StreamExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::Builder::new().prefix("k8s-pool").tempdir_in("/tmp").unwrap();
    // The remote, a bare repo; the sidecar's `/agent` (this build's `oz`) for the fake kubelet.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README.md"), "# app\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "initial"]);
    let bare = dir.path().join("git/acme/app");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(dir.path(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    let agent = dir.path().join("agent");
    std::fs::create_dir_all(agent.join("bin")).unwrap();
    std::os::unix::fs::symlink(oz_binary(), agent.join("bin/oz")).unwrap();
    std::fs::write(
        agent.join("entrypoint.sh"),
        oz_core::sidecar::SidecarLayout::at(agent.display().to_string()).unwrap().entrypoint_script(),
    )
    .unwrap();
    std::fs::set_permissions(agent.join("entrypoint.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cluster = FakeCluster::start().await.unwrap();
    // The claims: the worker's git mirrors (where the worker's Pod mounts it: `git_mirrors:`) and
    // the package caches.
    let (mirrors, caches) = (dir.path().join("mirrors"), dir.path().join("caches"));
    std::fs::create_dir_all(&caches).unwrap();
    std::fs::create_dir_all(&mirrors).unwrap();
    let preloaded = [("agent", agent), ("oz-git-mirrors", mirrors.clone()), ("oz-package-cache", caches.clone())];
    cluster.enable_kubelet_with(dir.path().join("node"), preloaded.map(|(name, dir)| (name.to_owned(), dir)));

    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "t").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "k8s", &["k8s-warm"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    let git_base = format!("file://{}", dir.path().join("git").display());
    let environment = oz_core::environment::EnvironmentConfig {
        name: "app".into(),
        github_repos: vec![oz_core::environment::RepoRef::new("acme", "app").unwrap()],
        setup_commands: vec!["echo set-up-at-$(date +%s%N) | tee setup.txt >> \"$OZ_CACHE_DIR/setups\"".into()],
        env_vars: [(oz_core::runner::env::GIT_BASE_URL.to_owned(), git_base)].into_iter().collect(),
        ..Default::default()
    };
    let env_id = client.environments().create(&environment).await.unwrap().uid;
    write_kubeconfig(dir.path(), &cluster);
    std::fs::write(
        dir.path().join("worker.yaml"),
        format!(
            "worker_id: k8s-warm\nlocal_git_remotes: true\ngit_mirrors: {}\nwarm_pools:\n  - environment: {env_id}\n    size: 1\n\
             backend:\n  kubernetes:\n    namespace: agents\n    kubeconfig: {}\n    sidecar_image: acme/oz-sidecar:1\n\
             \x20   git_mirror_claim: oz-mirrors\n    package_cache_claim: oz-caches\n",
            mirrors.display(),
            dir.path().join("kubeconfig").display()
        ),
    )
    .unwrap();
    let mut worker = spawn_worker(dir.path(), &server.url(), &worker_key);
    let first = pool_ready(&client, &cluster, &env_id, &[]).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let everything = |cluster: &FakeCluster| {
        [WatchKind::Job, WatchKind::Pod, WatchKind::Secret]
            .iter()
            .map(|k| serde_json::Value::Array(cluster.objects(*k, "agents")).to_string())
            .collect::<String>()
    };
    assert!(!everything(&cluster).contains("ozw_"), "a token in the cluster before any run");
    let prepared_setup = {
        let pod = cluster
            .objects(WatchKind::Pod, "agents")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["job-name"] == first[0].as_str())
            .unwrap();
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        std::fs::read_to_string(dir.path().join(format!("node/agents-{name}.work/volumes/workspace/setup.txt")))
            .unwrap()
    };

    // A push, then a run: it gets the warm Pod, with its setup's output, at the new HEAD.
    std::fs::write(src.join("pushed.txt"), "pushed").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "pushed-after-warming"]);
    git(&src, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);
    let run_script = |script: &str| AgentConfig {
        worker_host: Some("k8s-warm".into()),
        environment_id: Some(env_id.clone()),
        harness: Some(oz_core::wire::worker::HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let script = "cat setup.txt; git -C app log -1 --format=%s; echo \"tokens in env: [$(env | grep -c oz[w]_)]\"";
    let run_to_end = |config: AgentConfig| {
        let client = client.clone();
        async move {
            let run = client.runs().create("go").agent_config(config).send().await.unwrap();
            let events: Vec<_> = tokio::time::timeout(
                Duration::from_secs(60),
                client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>(),
            )
            .await
            .expect("the run ends");
            let state = events.iter().filter_map(|e| e.state()).next_back().unwrap();
            let output: String =
                events.iter().filter(|e| e.kind() == "output").filter_map(|e| e.event["text"].as_str()).collect();
            (state, output)
        }
    };
    let (state, output) = run_to_end(run_script(script)).await;
    assert_eq!(state.as_str(), "SUCCEEDED", "{output}");
    assert!(output.contains(prepared_setup.trim()), "the warm Pod's setup output: {output}");
    assert!(output.contains("pushed-after-warming"), "the new HEAD: {output}");
    assert!(output.contains("warm sandbox: cloned and set up"), "{output}");
    assert!(output.contains("tokens in env: [0]"), "{output}");
    assert!(!warm_jobs(&cluster).contains(&first[0]), "the used warm Pod went back to the pool");
    // The warm Pod cloned from the worker's mirror (its environment's subPath of the claim), and
    // the setup filled the environment's folder of the caches claim.
    assert!(output.contains("cloning from the worker's mirror"), "{output}");
    let setups = std::fs::read_to_string(caches.join(&env_id).join("setups")).unwrap();
    assert!(setups.contains(prepared_setup.trim()), "{setups}");

    // Two runs at once with one Pod ready: one hit, one cold start (a Job of its own), both right.
    pool_ready(&client, &cluster, &env_id, &first).await;
    let (a, b) = tokio::join!(run_to_end(run_script(script)), run_to_end(run_script(script)));
    for (state, output) in [&a, &b] {
        assert_eq!(state.as_str(), "SUCCEEDED", "{output}");
        assert!(output.contains("set-up-at-") && output.contains("pushed-after-warming"), "{output}");
    }
    let workers = client.workers().list().await.unwrap();
    let pool = workers.iter().flat_map(|w| w.warm_pools.iter()).find(|p| p.environment == env_id).unwrap();
    assert_eq!(pool.hits + pool.misses, 3, "{pool:?}");
    assert!(pool.misses >= 1 && pool.hits >= 1, "{pool:?}");
    assert!(!everything(&cluster).contains("ozw_"), "a token reached a Job, a Pod or a stored Secret");

    // SIGKILL with a warm Pod ready: the restarted worker removes it and prepares another.
    let left = pool_ready(&client, &cluster, &env_id, &first).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut restarted = spawn_worker(dir.path(), &server.url(), &worker_key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while warm_jobs(&cluster).iter().any(|j| left.contains(j)) {
        assert!(tokio::time::Instant::now() < deadline, "the killed worker's warm Pod was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool_ready(&client, &cluster, &env_id, &left).await;
    // A graceful stop removes the ready one too: nothing of the pool outlives the worker.
    Command::new("kill").args(["-TERM", &restarted.id().to_string()]).status().unwrap();
    assert!(restarted.wait().unwrap().success());
    assert!(warm_jobs(&cluster).is_empty(), "a warm Pod outlived its worker: {:?}", warm_jobs(&cluster));
    server.shutdown().await;
}
