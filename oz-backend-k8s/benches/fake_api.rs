//! The Kubernetes backend against the fake API server (in this process, on loopback):
//!
//! 1. assignment to Job created: `KubernetesBackend::launch` until it returns (the Job exists), against
//!    a bare `Api<Job>::create` of the same manifest in the same run;
//! 2. the cost of following 500 concurrent Jobs: memory and CPU while idle, and the time from every Pod
//!    finishing to every outcome being reported.
//!
//! ```text
//! cargo bench -p oz-backend-k8s --bench fake_api [-- JOBS]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use oz_backend_k8s::{KubernetesBackend, KubernetesConfig, manifest};
use oz_core::backend::Backend;
use oz_core::task::TaskSpec;
use oz_k8s_fake::{FakeCluster, WatchKind};
use serde_json::json;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let jobs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let cluster = FakeCluster::start().await.unwrap();
        // As a real API server: a bookmark about once a minute per idle watch.
        cluster.set_bookmark_interval(Duration::from_secs(60));
        let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
        let mut config = KubernetesConfig::new("bench", "acme/oz-sidecar:1");
        config.namespace = "bench".into();
        let backend = KubernetesBackend::new(client.clone(), config.clone()).unwrap();
        let raw: Api<Job> = Api::namespaced(client, "bench");

        // 1. Launch latency against a bare create, alternating, 200 each.
        let mut ours = Vec::new();
        let mut bare = Vec::new();
        for i in 0..210 {
            let spec = TaskSpec::new(format!("raw-{i}"), vec!["true".into()]);
            let job = manifest::job(&spec, &config).unwrap();
            let t = Instant::now();
            raw.create(&PostParams::default(), &job).await.unwrap();
            let b = t.elapsed();
            let t = Instant::now();
            let handle = backend.launch(TaskSpec::new(format!("lat-{i}"), vec!["true".into()])).await.unwrap();
            let o = t.elapsed();
            handle.canceller().cancel(oz_core::backend::CancelReason::Requested);
            handle.wait().await;
            if i >= 10 {
                ours.push(o);
                bare.push(b);
            }
        }
        ours.sort();
        bare.sort();
        println!("assignment to Job created, 200 runs after 10 warm-up (ms):");
        println!("| measurement | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        println!(
            "| bare `Api<Job>::create` | {:.2} | {:.2} | {:.2} |",
            pct(&bare, 0.5),
            pct(&bare, 0.9),
            pct(&bare, 0.99)
        );
        println!(
            "| `KubernetesBackend::launch` | {:.2} | {:.2} | {:.2} |",
            pct(&ours, 0.5),
            pct(&ours, 0.9),
            pct(&ours, 0.99)
        );

        // 2. Following many Jobs at once.
        let before = rss_kib();
        let mut handles = Vec::new();
        for i in 0..jobs {
            handles.push(backend.launch(TaskSpec::new(format!("many-{i}"), vec!["true".into()])).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let following = rss_kib();
        let cpu0 = cpu_seconds();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_cpu = cpu_seconds() - cpu0;
        let pods: Vec<String> = cluster
            .objects(WatchKind::Pod, "bench")
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["oz.dev/task-id"].as_str().is_some_and(|t| t.starts_with("many-")))
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        let t = Instant::now();
        for pod in &pods {
            cluster.set_pod_status("bench", pod, json!({"phase": "Succeeded"}));
        }
        for h in handles {
            assert!(h.wait().await.succeeded());
        }
        let drained = t.elapsed();
        println!("\nfollowing {jobs} Jobs at once (2 watches each, the fake in the same process):");
        println!("| measurement | value |");
        println!("|---|---|");
        println!(
            "| resident memory growth while following | {:.1} MiB ({:.1} KiB per Job) |",
            (following.saturating_sub(before)) as f64 / 1024.0,
            following.saturating_sub(before) as f64 / jobs as f64
        );
        println!("| CPU while idle, 10 s | {:.2} s ({:.1}% of one core) |", idle_cpu, idle_cpu * 10.0);
        println!("| all Pods finished to all {jobs} outcomes reported | {:.0} ms |", drained.as_secs_f64() * 1e3);
    });
}
