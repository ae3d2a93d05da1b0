//! The engine connection (platform check, unreachable engines) and the pull policies, the hardening
//! and the OOM detection, against the real engine where one is needed; a fake engine (wiremock) stands
//! in only for what this machine cannot be (a Windows engine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use oz_backend_docker::{DockerBackend, DockerConfig, DockerError, PullPolicy};
use oz_core::backend::{Backend, TaskEvent, TaskOutcome};
use oz_core::failure::FailureReason;
use oz_core::image::ImageRef;
use oz_core::task::TaskSpec;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn an_engine_that_is_not_linux_is_refused_with_its_platform_named() {
    let engine = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^(/v[0-9.]+)?/version$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "ApiVersion": "1.41", "Os": "windows", "Arch": "amd64", "Version": "20.10.0"
        })))
        .mount(&engine)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^(/v[0-9.]+)?/info$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "OSType": "windows", "Architecture": "x86_64"
        })))
        .mount(&engine)
        .await;
    let mut config = DockerConfig::new("w");
    config.docker_host = Some(format!("tcp://{}", engine.address()));
    let err = DockerBackend::connect(config).await.unwrap_err();
    assert!(matches!(err, DockerError::UnsupportedPlatform { .. }), "{err:?}");
    assert!(err.to_string().contains("windows/x86_64"), "{err}");
}

#[tokio::test]
async fn an_unreachable_engine_or_a_bad_address_is_a_clear_error() {
    let mut config = DockerConfig::new("w");
    config.docker_host = Some("unix:///nonexistent/docker.sock".into());
    let err = DockerBackend::connect(config).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"), "{err}");
    let mut config = DockerConfig::new("w");
    config.docker_host = Some("ssh://somewhere".into());
    assert!(DockerBackend::connect(config).await.unwrap_err().to_string().contains("DOCKER_HOST"));
    let mut config = DockerConfig::new("w");
    config.volumes = vec!["/etc:/agent".into()];
    assert!(DockerBackend::connect(config).await.unwrap_err().to_string().contains("not over /agent"));
}

async fn run(backend: &DockerBackend, mut spec: TaskSpec) -> (TaskOutcome, Vec<String>, String) {
    spec.task_id = format!("{}-{}", spec.task_id, std::process::id());
    let mut handle = backend.launch(spec).await.unwrap();
    let mut events = handle.take_events().unwrap();
    let mut progress = Vec::new();
    let mut out = String::new();
    while let Some(e) = events.recv().await {
        match e {
            TaskEvent::Progress(p) => progress.push(p),
            TaskEvent::Stdout(b) | TaskEvent::Stderr(b) => out.push_str(&String::from_utf8_lossy(&b)),
            _ => {}
        }
    }
    (tokio::time::timeout(Duration::from_secs(60), handle.wait()).await.unwrap(), progress, out)
}

fn task(id: &str, image: &str, script: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(id, vec!["/bin/sh".into(), "-c".into(), script.into()]);
    spec.sandbox.image = Some(ImageRef::parse(image).unwrap());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policies_decide_whether_the_registry_is_asked() {
    let Some(probe) = support::backend(DockerConfig::new("pull-probe"), support::BUSYBOX).await else { return };
    // The same image under a registry that refuses connections on loopback: present locally, and any
    // pull attempt fails without leaving the machine.
    let local = "127.0.0.1:1/oz-test/busybox:pull-policy";
    let tag = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo("127.0.0.1:1/oz-test/busybox")
        .tag("pull-policy")
        .build();
    probe.docker().tag_image(support::BUSYBOX, Some(tag)).await.unwrap();

    let backend = |policy| async move {
        let mut config = DockerConfig::new("pull-test");
        config.pull_policy = policy;
        DockerBackend::connect(config).await.unwrap()
    };
    // if-not-present: present, so no pull.
    let (outcome, progress, _) = run(&backend(PullPolicy::IfNotPresent).await, task("pull-inp", local, "true")).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(progress.iter().all(|p| !p.contains("pulling")), "{progress:?}");
    // always: asks the registry even though the image is present, and says so.
    let (outcome, progress, _) = run(&backend(PullPolicy::Always).await, task("pull-always", local, "true")).await;
    assert_eq!(outcome.reason(), Some(FailureReason::ImagePull), "{outcome:?}");
    assert!(progress.iter().any(|p| p.contains("pulling 127.0.0.1:1/oz-test/busybox:pull-policy")), "{progress:?}");
    // never: a missing image is the user's error, named.
    let (outcome, _, _) =
        run(&backend(PullPolicy::Never).await, task("pull-never", "oz-test/no-such-image:1", "true")).await;
    assert_eq!(outcome.reason(), Some(FailureReason::InvalidImage), "{outcome:?}");
    assert!(outcome.failure.unwrap().message.contains("pull policy is never"));
    let _ = probe.docker().remove_image(local, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_really_is_hardened_and_limited() {
    let mut config = DockerConfig::new("hardening-test");
    config.pull_policy = PullPolicy::Never;
    let Some(backend) = support::backend(config, support::BUSYBOX).await else { return };
    let mut spec = task(
        "hardened",
        support::BUSYBOX,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; echo pid1=$(cat /proc/1/comm)",
    );
    spec.sandbox.resources.max_pids = Some(64);
    let (outcome, _, out) = run(&backend, spec).await;
    assert!(outcome.succeeded(), "{outcome:?}\n{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "no capabilities:\n{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "none to gain:\n{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "64"), "the pids limit applies:\n{out}");
    assert!(out.contains("pid1=docker-init") || out.contains("pid1=tini"), "an init is PID 1:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_memory_is_reported_as_oom() {
    let mut config = DockerConfig::new("oom-test");
    config.pull_policy = PullPolicy::Never;
    let Some(backend) = support::backend(config, support::BUSYBOX).await else { return };
    // `tail -n 1` keeps a line in memory until its newline: 256 MiB without one, under a 32 MiB limit.
    let mut spec = task("oom", support::BUSYBOX, "echo start; head -c 268435456 /dev/zero | tail -n 1 >/dev/null");
    spec.sandbox.resources.memory_bytes = Some(32 << 20);
    let (outcome, _, out) = run(&backend, spec).await;
    assert_eq!(outcome.reason(), Some(FailureReason::ContainerOom), "{outcome:?}\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_volumes_of_other_content_are_collected_unless_in_use() {
    let Some(backend) = support::backend(DockerConfig::new("gc-test"), support::BUSYBOX).await else { return };
    let docker = backend.docker();
    let make = |name: &str| bollard::models::VolumeCreateRequest {
        name: Some(name.to_owned()),
        labels: Some(std::collections::HashMap::from([
            (oz_backend_docker::sidecar::DIGEST_LABEL.to_owned(), name.to_owned()),
            (oz_core::task::labels::WORKER_ID.to_owned(), "gc-test".to_owned()),
        ])),
        ..Default::default()
    };
    let unused = format!("oz-sidecar-gc-unused-{}", std::process::id());
    let used = format!("oz-sidecar-gc-used-{}", std::process::id());
    docker.create_volume(make(&unused)).await.unwrap();
    docker.create_volume(make(&used)).await.unwrap();
    let holder = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(support::BUSYBOX.into()),
                host_config: Some(bollard::models::HostConfig {
                    binds: Some(vec![format!("{used}:/x")]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let removed = backend.collect_garbage().await;
    oz_backend_docker::task::remove(docker, &holder.id).await;
    let _ = docker.remove_volume(&used, None::<bollard::query_parameters::RemoveVolumeOptions>).await;
    assert!(removed.contains(&unused), "{removed:?}");
    assert!(!removed.contains(&used), "a volume in use stays: {removed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_probe_left_by_a_killed_worker_is_removed_on_recovery() {
    let worker_id = format!("probe-test-{}", std::process::id());
    let Some(backend) = support::backend(DockerConfig::new(&worker_id), support::BUSYBOX).await else { return };
    let docker = backend.docker();
    // What a worker killed while materializing the sidecar leaves: a created, never started
    // container with the sidecar's labels and no task.
    let labels = std::collections::HashMap::from([
        (oz_core::task::labels::MANAGED_BY.to_owned(), oz_core::task::labels::MANAGED_BY_VALUE.to_owned()),
        (oz_core::task::labels::WORKER_ID.to_owned(), worker_id.clone()),
        (oz_backend_docker::sidecar::DIGEST_LABEL.to_owned(), "oz-sidecar-probe-test".to_owned()),
    ]);
    docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(support::BUSYBOX.into()),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let left = support::labelled(docker, oz_core::task::labels::WORKER_ID, &worker_id).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let recovered = backend.recover().await.unwrap();
    assert!(recovered.is_empty(), "a probe is no task");
    let left = support::labelled(docker, oz_core::task::labels::WORKER_ID, &worker_id).await;
    assert!(left.is_empty(), "the probe is gone: {left:?}");
}

/// A package cache: containers of one key get the same host folder at `OZ_CACHE_DIR`, writable
/// whatever user the image runs as; another key has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_one_cache_key_share_a_host_folder() {
    let caches = tempfile::tempdir().unwrap();
    let config = |user: Option<&str>| {
        let mut config = DockerConfig::new("cache-test");
        config.pull_policy = PullPolicy::Never;
        config.cache_root = Some(caches.path().to_path_buf());
        config.user = user.map(str::to_owned);
        config
    };
    let Some(as_root) = support::backend(config(None), support::BUSYBOX).await else { return };
    let as_user = DockerBackend::connect(config(Some("1000:1000"))).await.unwrap();
    let cached = |id: &str, key: &str| {
        let mut spec = task(
            id,
            support::BUSYBOX,
            "touch \"$OZ_CACHE_DIR/$(hostname)\" && ls \"$OZ_CACHE_DIR\" | wc -l; echo \"at=$OZ_CACHE_DIR\"",
        );
        spec.sandbox.cache = Some(key.into());
        spec
    };
    let (outcome, _, out) = run(&as_root, cached("cache-1", "env-a")).await;
    assert!(outcome.succeeded(), "{outcome:?}\n{out}");
    assert!(out.contains("at=/oz-cache/env"), "{out}");
    let (outcome, _, out) = run(&as_user, cached("cache-2", "env-a")).await;
    assert!(outcome.succeeded(), "a non-root image user writes too: {outcome:?}\n{out}");
    assert_eq!(out.lines().next().map(str::trim), Some("2"), "the second container sees the first's file: {out}");
    let (_, _, out) = run(&as_root, cached("cache-3", "env-b")).await;
    assert_eq!(out.lines().next().map(str::trim), Some("1"), "another key has its own folder: {out}");
    assert_eq!(std::fs::read_dir(caches.path().join("env-a")).unwrap().count(), 2, "on the host, after the containers");
}
