//! Cold start of a task (image present, sidecar cached) against a raw `docker run --rm` in the same run.
//!
//! ```text
//! cargo bench -p oz-backend-docker --bench cold_start [-- RUNS]
//! ```
//!
//! Each iteration runs `true` in `oz-test/busybox:latest` with no network, twice, alternating:
//! - baseline: `docker run --rm --network none oz-test/busybox:latest true` (the CLI, start to exit);
//! - backend: `launch` to the outcome (create, attach, start, wait, remove), with the sidecar volume
//!   mounted when `target/sidecar/oz` exists; the first task pays for the sidecar (reported apart).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use oz_backend_docker::{DockerBackend, DockerConfig, PullPolicy};
use oz_core::backend::{Backend, TaskEvent, TaskPhase};
use oz_core::image::ImageRef;
use oz_core::task::TaskSpec;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let sidecar = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sidecar/oz");
        let mut config = DockerConfig::new("bench-docker");
        config.pull_policy = PullPolicy::Never;
        if sidecar.exists() {
            config.sidecar_binary = Some(sidecar);
        }
        let with_sidecar = config.sidecar_binary.is_some();
        let backend = DockerBackend::connect(config).await.expect("a Docker engine");
        // Pay for the sidecar once, so the loop measures the cached path; report what it cost.
        let _ = backend
            .docker()
            .remove_volume(
                &backend.sidecar().map(|s| s.volume_name()).unwrap_or_default(),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
        let first = Instant::now();
        run_task(&backend, "bench-warm").await;
        let first_task = first.elapsed();

        let mut raw = Vec::new();
        let mut ours = Vec::new();
        let mut to_running = Vec::new();
        for i in 0..(runs + 3) {
            let t = Instant::now();
            let ok = tokio::process::Command::new("docker")
                .args(["run", "--rm", "--network", "none", "oz-test/busybox:latest", "true"])
                .status()
                .await
                .unwrap()
                .success();
            assert!(ok);
            let raw_elapsed = t.elapsed();
            let (total, running) = run_task(&backend, &format!("bench-{i}")).await;
            if i >= 3 {
                raw.push(raw_elapsed);
                ours.push(total);
                to_running.push(running);
            }
        }
        raw.sort();
        ours.sort();
        to_running.sort();
        println!(
            "{runs} iterations after 3 warm-up; image present; sidecar {}",
            if with_sidecar { "mounted (cached)" } else { "not configured" }
        );
        println!("first task (prepares the sidecar volume once): {:.1} ms", first_task.as_secs_f64() * 1e3);
        println!("| measurement (ms) | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        for (name, v) in [
            ("docker run --rm --network none busybox true", &raw),
            ("backend: launch to outcome (container removed)", &ours),
            ("backend: launch to running", &to_running),
        ] {
            println!("| {name} | {:.1} | {:.1} | {:.1} |", pct(v, 0.5), pct(v, 0.9), pct(v, 0.99));
        }
        println!("ratio of p50 (backend / docker run): {:.2}", pct(&ours, 0.5) / pct(&raw, 0.5));
    });
}

/// Runs `true`; returns (launch to outcome, launch to the Running phase).
async fn run_task(backend: &DockerBackend, id: &str) -> (Duration, Duration) {
    let mut spec = TaskSpec::new(format!("{id}-{}", std::process::id()), vec!["true".into()]);
    spec.sandbox.image = Some(ImageRef::parse("oz-test/busybox:latest").unwrap());
    let t = Instant::now();
    let mut handle = backend.launch(spec).await.unwrap();
    let mut events = handle.take_events().unwrap();
    let mut running = Duration::ZERO;
    while let Some(e) = events.recv().await {
        if e == TaskEvent::Phase(TaskPhase::Running) {
            running = t.elapsed();
        }
    }
    let outcome = handle.wait().await;
    assert!(outcome.succeeded(), "{outcome:?}");
    (t.elapsed(), running)
}
