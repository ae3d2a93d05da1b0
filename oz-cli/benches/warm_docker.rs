//! Warm start against cold start on the Docker backend, with `docker exec` into a running container
//! as the floor (what a pool that reuses containers pays per task), all in the same run.
//!
//! ```text
//! bash .ci/prepare-docker.sh && bash scripts/build-sidecar-oz.sh
//! cargo bench -p oz-cli --bench warm_docker [-- ITERATIONS]
//! ```
//!
//! Measured: from the backend call that starts the task (`launch`, `launch_prepared`, or the exec's
//! create) to the first instruction of the harness, which writes the wall-clock time in nanoseconds
//! to a file on a bind mount as its first act. Interleaved per iteration, in `oz-test/debian-git`
//! with no network:
//! - exec: `sh -c 'date +%s%N > t'` by `docker exec` in a container that runs already;
//! - cold: `oz agent run` (the sidecar's) of an environment with one small repo and one setup
//!   command: create and start the container, clone, setup, harness;
//! - warm: the same task handed to a container prepared beforehand (`oz agent warm`): the rename,
//!   the attach and the handoff on stdin, the runner's check that the repo's HEAD has not moved, the
//!   harness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use oz_backend_docker::{DefaultNetwork, DockerBackend, DockerConfig, PullPolicy};
use oz_core::backend::Backend;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::image::ImageRef;
use oz_core::task::{SandboxSpec, TaskSpec};
use oz_core::warm::WarmSpec;

const IMAGE: &str = "oz-test/debian-git:latest";
const RUNNER: &str = "/agent/bin/oz";

mod common;
use common::{now_ns, repo, report, stamp_script, started};

fn sandbox() -> SandboxSpec {
    SandboxSpec { image: Some(ImageRef::parse(IMAGE).unwrap()), ..SandboxSpec::default() }
}

fn task(id: &str, env_file: &Path, git_base: &str, stamp: &Path) -> TaskSpec {
    let script = stamp_script(stamp);
    let argv = [
        RUNNER,
        "agent",
        "run",
        "--task-id",
        id,
        "--environment-file",
        env_file.to_str().unwrap(),
        "--git-base-url",
        git_base,
        "--harness",
        "command",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ];
    let mut spec = TaskSpec::new(id, argv.iter().map(|s| (*s).to_owned()).collect());
    spec.sandbox = sandbox();
    spec
}

/// `docker exec` of the harness's first instruction in `container`, to its end.
async fn exec(docker: &bollard::Docker, container: &str, stamp: &Path) {
    let created = docker
        .create_exec(
            container,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), stamp_script(stamp)]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.unwrap()
    {
        while output.next().await.is_some() {}
    }
}

fn main() {
    let iterations = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(50);
    let sidecar = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sidecar/oz");
    let images = Command::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success());
    if !sidecar.exists() || !images {
        eprintln!(
            "*** SKIPPED: needs the Docker engine with {IMAGE} (.ci/prepare-docker.sh) and the static sidecar \
             (scripts/build-sidecar-oz.sh) ***"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let root = tempfile::Builder::new().prefix("bd").tempdir_in("/tmp").unwrap();
        let root_path = root.path().to_path_buf();
        repo(&root_path, "small", 10);
        let git_base = format!("file://{}", root_path.join("git").display());
        let environment = EnvironmentConfig {
            name: "small".into(),
            github_repos: vec![RepoRef::new("acme", "small").unwrap()],
            setup_commands: vec!["echo set-up > setup.txt".into()],
            ..Default::default()
        };
        let env_file: PathBuf = root_path.join("small.json");
        std::fs::write(&env_file, serde_json::to_vec(&environment).unwrap()).unwrap();
        // Containers run as root and write the stamps: the folder is everybody's.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }

        let mut config = DockerConfig::new("bench-warm-docker");
        config.sidecar_binary = Some(sidecar);
        config.network = DefaultNetwork::None;
        config.pull_policy = PullPolicy::Never;
        config.volumes = vec![format!("{0}:{0}", root_path.display())];
        let backend = DockerBackend::connect(config).await.unwrap();
        let docker = backend.docker().clone();

        // The floor: a running container that execs the harness's first instruction.
        let floor = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                bollard::models::ContainerCreateBody {
                    image: Some(IMAGE.into()),
                    cmd: Some(vec!["sleep".into(), "infinity".into()]),
                    network_disabled: Some(true),
                    host_config: Some(bollard::models::HostConfig {
                        binds: Some(vec![format!("{0}:{0}", root_path.display())]),
                        network_mode: Some("none".into()),
                        init: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        docker.start_container(&floor.id, None::<bollard::query_parameters::StartContainerOptions>).await.unwrap();

        println!("| Docker: task start to the harness's first instruction (ms) | p50 | p90 | p99 | n |");
        println!("|---|---|---|---|---|");
        for (label, n) in [("warm-up", 3), ("measured", iterations)] {
            let (mut floor_samples, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                let stamp = root_path.join(format!("stamp-{label}-{i}"));
                let _ = std::fs::remove_file(&stamp);
                let t0 = now_ns();
                exec(&docker, &floor.id, &stamp).await;
                floor_samples.push(started(&stamp, t0).await);

                let _ = std::fs::remove_file(&stamp);
                let spec = task(&format!("cold-{label}-{i}"), &env_file, &git_base, &stamp);
                let t0 = now_ns();
                let handle = backend.launch(spec).await.unwrap();
                cold.push(started(&stamp, t0).await);
                let outcome = handle.wait().await;
                assert!(outcome.succeeded(), "{outcome:?}");

                let warm_spec = WarmSpec {
                    sandbox: sandbox(),
                    entrypoint: RUNNER.into(),
                    environment: environment.clone(),
                    git_base_url: Some(git_base.clone()),
                    env: vec![],
                    ready_within: Duration::from_secs(120),
                };
                let prepared = backend.prepare(warm_spec).await.unwrap();
                let _ = std::fs::remove_file(&stamp);
                let spec = task(&format!("warm-{label}-{i}"), &env_file, &git_base, &stamp);
                let t0 = now_ns();
                let handle = backend.launch_prepared(prepared, spec).await.unwrap();
                warm.push(started(&stamp, t0).await);
                let outcome = handle.wait().await;
                assert!(outcome.succeeded(), "{outcome:?}");
            }
            if label == "measured" {
                report("docker exec in a running container (floor)", &mut floor_samples);
                report("cold start, Docker", &mut cold);
                report("warm start, Docker", &mut warm);
            }
        }
        oz_backend_docker::task::remove(&docker, &floor.id).await;
    });
}
