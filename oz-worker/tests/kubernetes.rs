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
    std::fs::write(
        dir.path().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n",
            cluster.url()
        ),
    )
    .unwrap();
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
