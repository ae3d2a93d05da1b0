//! Submit-to-agent-started through the whole local stack, against a bare fork/exec in the same run.
//!
//! ```text
//! cargo bench -p oz-cli --bench stack [-- RUNS]
//! cargo bench -p oz-cli --bench stack -- RUNS docker   # the Docker backend (busybox image, static sidecar)
//! ```
//!
//! With `docker`, tasks run in `oz-test/busybox:latest` containers with the static sidecar
//! (`target/sidecar/oz`), and the baseline is `docker run --rm --network none oz-test/busybox:latest true`.
//!
//! The stack is `oz local`'s: the control plane on SQLite (a file), a worker on the Direct backend,
//! the release `oz` binary as the runner. Each run has no repos and no setup; its command harness is
//! `/bin/true`. Measured: from just before `POST /agent/runs` to the `harness_started` event's
//! timestamp (the runner stamps it as it starts the harness; same host clock). Baseline: spawning and
//! reaping `/bin/true` from the bench process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let docker = std::env::args().any(|a| a == "docker");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let backend = if docker {
            let sidecar = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sidecar/oz");
            assert!(sidecar.exists(), "run scripts/build-sidecar-oz.sh first");
            oz_cli::local::LocalBackend::Docker { sidecar, mounts: vec![] }
        } else {
            oz_cli::local::LocalBackend::Direct
        };
        let stack = oz_cli::local::start_with(dir.path(), "127.0.0.1:0", env!("CARGO_BIN_EXE_oz").into(), backend)
            .await
            .unwrap();
        let client = stack.client().unwrap();
        let environment_id = if docker {
            let env = oz_core::environment::EnvironmentConfig {
                name: "bench".into(),
                docker_image: Some("oz-test/busybox:latest".into()),
                ..Default::default()
            };
            Some(client.environments().create(&env).await.unwrap().uid)
        } else {
            None
        };
        let config = AgentConfig {
            environment_id,
            worker_host: Some(oz_cli::local::LOCAL_WORKER.into()),
            harness: Some(HarnessConfig {
                kind: Some(oz_core::runner::HarnessKind::Command),
                command: Some(vec!["/bin/true".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut stack_latency = Vec::with_capacity(runs);
        let mut bare = Vec::with_capacity(runs);
        for i in 0..(runs + 10) {
            let t = Instant::now();
            if docker {
                let ok = tokio::process::Command::new("docker")
                    .args(["run", "--rm", "--network", "none", "oz-test/busybox:latest", "true"])
                    .status()
                    .await
                    .unwrap()
                    .success();
                assert!(ok, "docker run failed");
            } else {
                tokio::process::Command::new("/bin/true").status().await.unwrap();
            }
            let fork_exec = t.elapsed();

            let submitted = Timestamp::now();
            let run = client.runs().create("bench").agent_config(config.clone()).send().await.unwrap();
            let mut events = Box::pin(client.runs().events(&run.run_id));
            let mut started = None;
            while let Some(e) = events.next().await {
                let e = e.unwrap();
                if e.kind() == "harness_started" {
                    started = Some(e.at);
                }
            }
            let started = started.expect("the agent started");
            if i >= 10 {
                stack_latency.push(started.duration_since(submitted).try_into().unwrap());
                bare.push(fork_exec);
            }
        }
        stack_latency.sort();
        bare.sort();
        let backend = if docker { "Docker (busybox, static sidecar)" } else { "Direct" };
        println!("{runs} runs, one at a time, after 10 warm-up; {backend} backend; command harness /bin/true, no repos, no setup");
        println!("| measurement (ms) | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            if docker { "docker run --rm --network none busybox true" } else { "bare fork/exec of /bin/true" },
            pct(&bare, 0.5),
            pct(&bare, 0.9),
            pct(&bare, 0.99)
        );
        println!(
            "| submit to agent started, whole stack | {:.2} | {:.2} | {:.2} |",
            pct(&stack_latency, 0.5),
            pct(&stack_latency, 0.9),
            pct(&stack_latency, 0.99)
        );
        stack.stop().await;
    });
}
