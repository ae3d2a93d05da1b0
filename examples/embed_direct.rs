//! Embedding the Direct backend in your own program, with no server.
//!
//! A command harness clones a local git repo, the environment's setup command runs, the harness edits
//! a file and commits, and this program prints the event stream and the outcome.
//!
//! ```text
//! cargo run -p oz-examples --example embed_direct
//! ```
//!
//! The task runs `oz agent run` (the in-sandbox runner). This program *is* that runner too: invoked
//! as `<this binary> agent ...` it hands over to `oz_cli::cli::main`, so nothing else needs building.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use oz_backend_direct::{DirectBackend, DirectConfig};
use oz_core::backend::{Backend, TaskEvent};
use oz_core::task::TaskSpec;

/// What the "agent" does: a shell script standing in for a coding agent.
const HARNESS: &str = r#"set -e
cd hello
echo "agent: the prompt is: $OZ_PROMPT"
test -f .deps-installed && echo "agent: the setup command ran before me"
printf '\n%s\n' "$OZ_PROMPT" >> README.md
git add README.md
git commit -q -m "Apply: $OZ_PROMPT"
echo "agent: committed $(git rev-parse --short HEAD)""#;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("agent") {
        return oz_cli::cli::main();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .envs(IDENTITY.iter().copied())
        .status()
        .map_err(|e| format!("git is needed for this example: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("git {args:?} failed"))
}

const IDENTITY: [(&str, &str); 5] = [
    ("GIT_AUTHOR_NAME", "Example Agent"),
    ("GIT_AUTHOR_EMAIL", "agent@example.com"),
    ("GIT_COMMITTER_NAME", "Example Agent"),
    ("GIT_COMMITTER_EMAIL", "agent@example.com"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
];

async fn demo() -> Result<bool, Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let root = scratch.path();

    // 1. A small sample repository, published as a bare repo at <root>/git/acme/hello.
    let src = root.join("src");
    std::fs::create_dir_all(&src)?;
    git(&src, &["init", "-q", "-b", "main"])?;
    std::fs::write(src.join("README.md"), "# hello\n")?;
    git(&src, &["add", "."])?;
    git(&src, &["commit", "-q", "-m", "initial commit"])?;
    let bare = root.join("git/acme/hello");
    std::fs::create_dir_all(bare.parent().ok_or("no parent")?)?;
    git(root, &["clone", "-q", "--bare", src.to_str().ok_or("path")?, bare.to_str().ok_or("path")?])?;

    // 2. The environment: the repo to clone and a setup command.
    let environment = root.join("environment.json");
    std::fs::write(
        &environment,
        r#"{"name": "hello", "github_repos": [{"owner": "acme", "repo": "hello"}],
            "setup_commands": ["echo 'installing dependencies...' && touch hello/.deps-installed"]}"#,
    )?;

    // 3. The backend, embedded: no worker, no server.
    let mut config = DirectConfig::new("example-worker", root.join("workspaces"));
    config.stop_grace = Duration::from_secs(5);
    let backend = DirectBackend::new(config)?;

    // 4. The task: the runner, told to clone, set up and run the command harness.
    let me = std::env::current_exe()?.display().to_string();
    let base_url = format!("file://{}", root.join("git").display());
    let argv: Vec<String> = [
        me.as_str(),
        "agent",
        "run",
        "--output-format",
        "ndjson",
        "--environment-file",
        environment.to_str().ok_or("path")?,
        "--git-base-url",
        &base_url,
        "--harness",
        "command",
        "--",
        "/bin/sh",
        "-c",
        HARNESS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut spec = TaskSpec::new("example-run-1", argv)
        .env("OZ_PROMPT", "Say hello to the world")
        .timeout(Duration::from_secs(120));
    for (k, v) in IDENTITY {
        spec = spec.env(k, v);
    }

    println!("launching task {} on the {} backend", spec.task_id, backend.name());
    let mut handle = backend.launch(spec).await?;
    let mut events = handle.take_events().ok_or("no events")?;
    while let Some(event) = events.recv().await {
        match event {
            TaskEvent::Phase(phase) => println!("[phase]  {phase:?}"),
            TaskEvent::Progress(note) => println!("[note]   {note}"),
            TaskEvent::Stdout(bytes) => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    print_runner_event(line);
                }
            }
            TaskEvent::Stderr(bytes) => eprint!("[stderr] {}", String::from_utf8_lossy(&bytes)),
            TaskEvent::Exited(status) => println!("[exit]   {status:?}"),
        }
    }
    let outcome = handle.wait().await;
    println!();
    println!("outcome: {:?}", outcome.run_state());
    if let Some(f) = &outcome.failure {
        println!("failure: {} ({})", f.message, f.reason);
    }
    if let (Some(start), Ok(total)) =
        (outcome.startup_latency(), outcome.finished_at.duration_since(outcome.accepted_at))
    {
        println!(
            "timing: accepted -> process started {:.1} ms, total {:.1} ms",
            start.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }
    println!("workspace removed: {}", !root.join("workspaces/example-run-1").exists());
    Ok(outcome.succeeded())
}

/// The runner prints one JSON event per line; show them compactly.
fn print_runner_event(line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        println!("[stdout] {line}");
        return;
    };
    let kind = v["event"].as_str().unwrap_or("?");
    let detail = match kind {
        "output" => v["text"].as_str().unwrap_or("").trim_end().to_owned(),
        "clone_finished" => format!("{} in {} ms", v["repo"].as_str().unwrap_or(""), v["millis"]),
        "setup_started" => v["command"].as_str().unwrap_or("").to_owned(),
        "artifact" => format!("{} {}", v["reference_type"].as_str().unwrap_or(""), v["title"].as_str().unwrap_or("")),
        "finished" => format!("{} - {}", v["state"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or("")),
        _ => String::new(),
    };
    println!("[runner] {kind:<15} {detail}");
}
