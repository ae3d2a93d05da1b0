//! What the warm-start benchmarks share: a local git remote, the harness's timestamp, the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A bare repo `<root>/git/acme/<name>` with `files` files.
pub fn repo(root: &Path, name: &str, files: usize) {
    let src = root.join("src").join(name);
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    for i in 0..files {
        let dir = src.join(format!("d{}", i / 500));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "initial"]);
    let bare = root.join("git/acme").join(name);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(root, &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    // As GitHub does: partial clones are served (the runner asks for `--filter=tree:0`).
    git(&bare, &["config", "uploadpack.allowFilter", "true"]);
}

pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Waits for the harness's timestamp in `file`; the time from `t0` to it.
pub async fn started(file: &Path, t0: u128) -> Duration {
    for _ in 0..200_000 {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(at) = text.trim().parse::<u128>()
        {
            return Duration::from_nanos(u64::try_from(at.saturating_sub(t0)).unwrap());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    panic!("the harness never started");
}

pub fn stamp_script(stamp: &Path) -> String {
    format!("date +%s%N > {}", stamp.display())
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {} |",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.9)),
        ms(percentile(samples, 0.99)),
        samples.len()
    );
}
