//! Warm start against cold start on the Direct backend, with a bare fork/exec as the floor, all in
//! the same run.
//!
//! ```text
//! cargo bench -p oz-cli --bench warm [-- ITERATIONS [BIG_ITERATIONS]]   (0 skips a section)
//! ```
//!
//! Measured: from the backend call that starts the task (`launch`, or `launch_prepared` for a warm
//! sandbox) to the first instruction of the agent's harness (it writes the wall-clock time, in
//! nanoseconds, as its first act). Interleaved per iteration:
//! - bare: `sh -c 'date +%s%N > t'` spawned directly (the floor);
//! - cold: `oz agent run` of an environment with one small repo and one setup command, on the
//!   Direct backend (clone, setup, harness);
//! - warm: the same task handed to a sandbox prepared beforehand (`oz agent warm`): the handoff, the
//!   runner's check that the repo's HEAD has not moved (one `ls-refs` on the connection the sandbox
//!   held open while it waited), the harness.
//!
//! Then, fewer times, the same cold and warm for a repo of 20,000 files and a 5-second setup command;
//! and a cold start of that repo (with a setup that does nothing) without and with the worker's git
//! mirror (`OZ_GIT_MIRROR_DIR`), the mirror one commit behind the remote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oz_backend_direct::{DirectBackend, DirectConfig};
use oz_core::backend::Backend;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::task::{SandboxSpec, TaskSpec};
use oz_core::warm::WarmSpec;

const OZ: &str = env!("CARGO_BIN_EXE_oz");

mod common;
use common::{git, now_ns, repo, report, stamp_script, started};

fn task(id: &str, env_file: &Path, git_base: &str, stamp: &Path) -> TaskSpec {
    let script = stamp_script(stamp);
    let argv = [
        OZ,
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
    TaskSpec::new(id, argv.iter().map(|s| (*s).to_owned()).collect())
}

struct Case {
    environment: EnvironmentConfig,
    env_file: PathBuf,
}

fn case(root: &Path, name: &str, setup: &str) -> Case {
    let environment = EnvironmentConfig {
        name: name.into(),
        github_repos: vec![RepoRef::new("acme", name).unwrap()],
        setup_commands: vec![setup.into()],
        ..Default::default()
    };
    let env_file = root.join(format!("{name}.json"));
    std::fs::write(&env_file, serde_json::to_vec(&environment).unwrap()).unwrap();
    Case { environment, env_file }
}

async fn measure(
    backend: &DirectBackend,
    root: &Path,
    git_base: &str,
    c: &Case,
    iterations: usize,
    label: &str,
    with_bare: bool,
) {
    let (mut bare, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        let stamp = root.join(format!("stamp-{}-{i}", fs_name(label)));
        if with_bare {
            let _ = std::fs::remove_file(&stamp);
            let t0 = now_ns();
            let mut child =
                tokio::process::Command::new("/bin/sh").args(["-c", &stamp_script(&stamp)]).spawn().unwrap();
            bare.push(started(&stamp, t0).await);
            child.wait().await.unwrap();
        }

        let _ = std::fs::remove_file(&stamp);
        let spec = task(&format!("cold-{}-{i}", fs_name(label)), &c.env_file, git_base, &stamp);
        let t0 = now_ns();
        let handle = backend.launch(spec).await.unwrap();
        cold.push(started(&stamp, t0).await);
        assert!(handle.wait().await.succeeded());

        let warm_spec = WarmSpec {
            sandbox: SandboxSpec::default(),
            entrypoint: OZ.into(),
            environment: c.environment.clone(),
            git_base_url: Some(git_base.into()),
            env: vec![],
            ready_within: Duration::from_secs(120),
        };
        let prepared = backend.prepare(warm_spec).await.unwrap();
        let _ = std::fs::remove_file(&stamp);
        let spec = task(&format!("warm-{}-{i}", fs_name(label)), &c.env_file, git_base, &stamp);
        let t0 = now_ns();
        let handle = backend.launch_prepared(prepared, spec).await.unwrap();
        warm.push(started(&stamp, t0).await);
        assert!(handle.wait().await.succeeded());
    }
    if with_bare {
        report(&format!("bare fork/exec ({label})"), &mut bare);
    }
    report(&format!("cold start, Direct ({label})"), &mut cold);
    report(&format!("warm start, Direct ({label})"), &mut warm);
}

/// Cold starts of `c` without and with the mirrors in `mirrors`, interleaved; with what each clone
/// fetched from the remote (the objects in its own packs, the rest being borrowed from the mirror).
async fn measure_mirror(backend: &DirectBackend, root: &Path, git_base: &str, c: &Case, mirrors: &Path, n: usize) {
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut fetched_without, mut fetched_with) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (samples, fetched, mirror) in
            [(&mut without, &mut fetched_without, false), (&mut with, &mut fetched_with, true)]
        {
            let stamp = root.join(format!("stamp-mirror-{mirror}-{i}"));
            let objects = root.join(format!("objects-mirror-{mirror}-{i}"));
            let _ = std::fs::remove_file(&stamp);
            let mut spec = task(&format!("mirror-{mirror}-{i}"), &c.env_file, git_base, &stamp);
            // The harness: the timestamp first, then what the clone holds itself.
            let script = format!("{}; git -C big count-objects -v > {}", stamp_script(&stamp), objects.display());
            *spec.argv.last_mut().unwrap() = script;
            if mirror {
                spec.env.push((oz_core::runner::env::GIT_MIRROR_DIR.into(), mirrors.display().to_string()));
            }
            let t0 = now_ns();
            let handle = backend.launch(spec).await.unwrap();
            samples.push(started(&stamp, t0).await);
            assert!(handle.wait().await.succeeded());
            let text = std::fs::read_to_string(&objects).unwrap();
            let field = |name: &str| {
                text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap()
            };
            fetched.push((field("in-pack:"), field("size-pack:")));
        }
    }
    report("cold start, Direct, no mirror (20,000 files)", &mut without);
    report("cold start, Direct, the worker's mirror one commit behind (20,000 files)", &mut with);
    for (label, fetched) in [("no mirror", &fetched_without), ("with the mirror", &fetched_with)] {
        let (objects, kib) = fetched[fetched.len() / 2];
        println!("fetched from the remote, {label}: {objects} objects, {kib} KiB (median clone)");
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let iterations = args.next().unwrap_or(100);
    let big_iterations = args.next().unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let root = tempfile::Builder::new().prefix("b").tempdir_in("/tmp").unwrap();
        repo(root.path(), "small", 10);
        repo(root.path(), "big", 20_000);
        let git_base = format!("file://{}", root.path().join("git").display());
        let backend = DirectBackend::new(DirectConfig::new("bench", root.path().join("ws"))).unwrap();
        let small = case(root.path(), "small", "echo set-up > setup.txt");
        let big = case(root.path(), "big", "sleep 5; echo set-up > setup.txt");
        println!("| task start to the harness's first instruction (ms) | p50 | p90 | p99 | n |");
        println!("|---|---|---|---|---|");
        // 0 iterations skips a section (`-- 0 0` runs only the mirror's).
        if iterations > 0 {
            measure(&backend, root.path(), &git_base, &small, 5, "warm-up", false).await;
            measure(&backend, root.path(), &git_base, &small, iterations, "small repo", true).await;
        }
        if big_iterations > 0 {
            measure(&backend, root.path(), &git_base, &big, big_iterations, "20,000 files, 5 s setup", false).await;
        }
        // The worker's mirror of the big repo, then one more commit on the remote.
        let mirrors = root.path().join("mirrors");
        let mirror = oz_core::runner::mirror_of(&mirrors, &RepoRef::new("acme", "big").unwrap());
        std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
        let bare = root.path().join("git/acme/big");
        // Cloned from the URL the tasks clone from, as the worker makes it: a mirror serves only
        // the URL it was cloned from.
        let url = oz_core::runner::clone_url(&git_base, &RepoRef::new("acme", "big").unwrap());
        git(root.path(), &["clone", "-q", "--mirror", &url, mirror.to_str().unwrap()]);
        let src = root.path().join("src/big");
        std::fs::write(src.join("new.txt"), "new\n").unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", "one more"]);
        git(&src, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);
        let big_no_setup = case(root.path(), "big", "true");
        measure_mirror(&backend, root.path(), &git_base, &big_no_setup, &mirrors, big_iterations.max(5)).await;
    });
}

/// `label` as a file and task name.
fn fs_name(label: &str) -> String {
    label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}
