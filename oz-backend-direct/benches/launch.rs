//! Direct launch overhead against a bare fork/exec of the same command, measured in the same run.
//!
//! ```text
//! cargo bench -p oz-backend-direct --bench launch [-- ITERATIONS]
//! ```
//!
//! Each iteration runs `/bin/true` twice, interleaved so both see the same machine noise:
//! - bare: `tokio::process::Command::new("/bin/true")` spawned and waited for, stdio piped;
//! - direct: `DirectBackend::launch` of the same argv, waited for until its outcome (workspace made,
//!   minimal env, own process group, output drained, leftovers killed, workspace removed).
//!
//! Reported: round-trip latency percentiles for both, the difference, and the Direct backend's
//! accepted-to-process-started latency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use oz_backend_direct::{DirectBackend, DirectConfig};
use oz_core::backend::Backend;
use oz_core::task::TaskSpec;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let iterations: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let root = tempfile::tempdir().unwrap();
        let backend = DirectBackend::new(DirectConfig::new("bench", root.path().join("ws"))).unwrap();
        let mut bare = Vec::with_capacity(iterations);
        let mut direct = Vec::with_capacity(iterations);
        let mut to_start = Vec::with_capacity(iterations);
        for i in 0..(iterations + 20) {
            let t = Instant::now();
            let status = tokio::process::Command::new("/bin/true")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
                .wait()
                .await
                .unwrap();
            let bare_took = t.elapsed();
            assert!(status.success());

            let t = Instant::now();
            let outcome = backend
                .launch(TaskSpec::new(format!("bench-{i}"), vec!["/bin/true".into()]))
                .await
                .unwrap()
                .wait()
                .await;
            let direct_took = t.elapsed();
            assert!(outcome.succeeded(), "{outcome:?}");
            if i >= 20 {
                bare.push(bare_took);
                direct.push(direct_took);
                to_start.push(outcome.startup_latency().unwrap());
            }
        }
        bare.sort();
        direct.sort();
        to_start.sort();
        let row = |name: &str, v: &[Duration]| {
            println!(
                "| {name} | {:.2} | {:.2} | {:.2} |",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.9)),
                ms(percentile(v, 0.99))
            )
        };
        println!("iterations: {iterations} (after 20 warm-up), command: /bin/true");
        println!("| measurement (ms) | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        row("bare fork/exec, spawn to exit", &bare);
        row("Direct backend, launch to outcome", &direct);
        row("Direct backend, accepted to process started", &to_start);
        let p50_extra = ms(percentile(&direct, 0.5)) - ms(percentile(&bare, 0.5));
        println!();
        println!(
            "extra at p50: {p50_extra:.2} ms (ratio {:.2}x); extra at p99: {:.2} ms",
            ms(percentile(&direct, 0.5)) / ms(percentile(&bare, 0.5)),
            ms(percentile(&direct, 0.99)) - ms(percentile(&bare, 0.99))
        );
    });
}
