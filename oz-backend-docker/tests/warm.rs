//! Warm containers against the real engine, in the isolated network mode (a network and an egress
//! proxy of their own): prepared, found and removed with everything they made by a restarted
//! worker's `recover`, handed a task (which runs where the setup ran, behind the proxy), refused for
//! another sandbox, and leaving nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
use oz_backend_docker::{DockerBackend, DockerConfig, PullPolicy};
use oz_core::backend::{Backend, TaskEvent};
use oz_core::environment::EnvironmentConfig;
use oz_core::image::ImageRef;
use oz_core::task::{NetworkMode, SandboxSpec, TaskSpec, labels};
use oz_core::warm::WarmSpec;

fn sandbox() -> SandboxSpec {
    SandboxSpec {
        image: Some(ImageRef::parse(support::DEBIAN_GIT).unwrap()),
        network: NetworkMode::Isolated { allowed_domains: vec!["upstream.test".into()] },
        ..SandboxSpec::default()
    }
}

fn warm_spec() -> WarmSpec {
    WarmSpec {
        sandbox: sandbox(),
        entrypoint: "/agent/bin/oz".into(),
        environment: EnvironmentConfig {
            name: "warm".into(),
            setup_commands: vec!["echo warmed-at-setup > setup.txt".into()],
            ..Default::default()
        },
        git_base_url: None,
        env: vec![],
        ready_within: Duration::from_secs(60),
    }
}

/// An unmanaged runner (no control plane) running `script` as its command harness.
fn runner_task(id: &str, script: &str) -> TaskSpec {
    let argv = [
        "/agent/bin/oz",
        "agent",
        "run",
        "--task-id",
        id,
        "--environment-file",
        "/oz-warm/environment.json",
        "--harness",
        "command",
        "--",
        "/bin/sh",
        "-c",
        script,
    ];
    let mut spec = TaskSpec::new(id, argv.iter().map(|s| (*s).to_owned()).collect());
    spec.sandbox = sandbox();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_warm_container_is_recovered_handed_one_task_and_leaves_nothing() {
    let Some(sidecar) = support::sidecar() else { return };
    let Some(probe) = support::backend(DockerConfig::new("warm-probe"), support::DEBIAN_GIT).await else { return };
    let docker = probe.docker().clone();
    let worker_id = format!("warm-test-{}", std::process::id());
    // The proxy's side: an internal network of the test's own (nothing leaves the machine).
    let world = format!("oz-test-warm-world-{}", std::process::id());
    docker
        .create_network(NetworkCreateRequest {
            name: world.clone(),
            internal: Some(true),
            labels: Some(HashMap::from([("oz.dev/test".to_owned(), worker_id.clone())])),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = || {
        let mut config = DockerConfig::new(&worker_id);
        config.sidecar_binary = Some(sidecar.clone());
        config.pull_policy = PullPolicy::Never;
        config.egress_network = world.clone();
        config
    };
    let backend = DockerBackend::connect(config()).await.unwrap();

    // Prepared: the warm container and its proxy, on a network of their own, all labelled.
    let prepared = backend.prepare(warm_spec()).await.unwrap();
    let warm_id = prepared.id.clone();
    let memory = backend.sandbox_memory(&prepared).await.expect("the engine measures a warm container");
    assert!(memory > 0, "{memory}");
    let made = support::labelled(&docker, labels::TASK_ID, &warm_id).await;
    assert_eq!(made.iter().filter(|m| m.starts_with("container")).count(), 2, "{made:?}");
    assert_eq!(made.iter().filter(|m| m.starts_with("network")).count(), 1, "{made:?}");

    // A restarted worker (the same id) finds it waiting: it is no task, and all of it goes.
    let restarted = DockerBackend::connect(config()).await.unwrap();
    assert!(restarted.recover().await.unwrap().is_empty());
    let left = support::labelled(&docker, labels::TASK_ID, &warm_id).await;
    assert!(left.is_empty(), "recover removed the waiting container, its proxy and network: {left:?}");
    drop(prepared);

    // Another one is handed a task: it runs where the setup ran, behind the proxy.
    let prepared = restarted.prepare(warm_spec()).await.unwrap();
    let warm_id = prepared.id.clone();
    let task_id = format!("warm-task-{}", std::process::id());
    let spec = runner_task(&task_id, "cat setup.txt; echo \"proxy=$HTTPS_PROXY\"");
    let mut handle = restarted.launch_prepared(prepared, spec).await.unwrap();
    let mut events = handle.take_events().unwrap();
    let mut out = String::new();
    while let Some(e) = events.recv().await {
        if let TaskEvent::Stdout(b) | TaskEvent::Stderr(b) = e {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait()).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}\n{out}");
    assert!(out.contains("warmed-at-setup"), "the setup's output, from before the task: {out}");
    assert!(out.contains("proxy=http://"), "behind the egress proxy: {out}");
    assert!(out.contains("warm sandbox: cloned and set up"), "{out}");
    let left = support::labelled(&docker, labels::TASK_ID, &warm_id).await;
    assert!(left.is_empty(), "the task's end removed the container, its proxy and network: {left:?}");

    // A task that asks for another sandbox is refused, and the warm container is removed.
    let prepared = restarted.prepare(warm_spec()).await.unwrap();
    let warm_id = prepared.id.clone();
    let mut other = runner_task(&format!("{task_id}-other"), "true");
    other.sandbox.network = NetworkMode::None;
    assert!(restarted.launch_prepared(prepared, other).await.is_err());
    let left = support::labelled(&docker, labels::TASK_ID, &warm_id).await;
    assert!(left.is_empty(), "a refused warm container goes: {left:?}");

    let _ = docker.remove_network(&world).await;
    let all = support::labelled(&docker, labels::WORKER_ID, &worker_id).await;
    assert!(all.iter().all(|m| m.starts_with("volume")), "only the sidecar volume stays: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preparation_abandoned_half_way_leaves_no_container() {
    let Some(sidecar) = support::sidecar() else { return };
    let worker_id = format!("warm-abandon-{}", std::process::id());
    let mut config = DockerConfig::new(&worker_id);
    config.sidecar_binary = Some(sidecar);
    config.pull_policy = PullPolicy::Never;
    let Some(backend) = support::backend(config, support::DEBIAN_GIT).await else { return };
    let docker = backend.docker().clone();
    let mut warm = warm_spec();
    warm.sandbox.network = NetworkMode::None;
    warm.environment.setup_commands = vec!["sleep 60".into()];
    let backend = std::sync::Arc::new(backend);
    let preparing = tokio::spawn({
        let backend = backend.clone();
        async move { backend.prepare(warm).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while support::labelled(&docker, labels::WORKER_ID, &worker_id).await.iter().all(|m| !m.starts_with("container")) {
        assert!(tokio::time::Instant::now() < deadline, "no warm container was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    preparing.abort();
    let _ = preparing.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = support::labelled(&docker, labels::WORKER_ID, &worker_id).await;
        if left.iter().all(|m| m.starts_with("volume")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the abandoned warm container stays: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
