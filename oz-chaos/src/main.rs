//! `oz-chaos`: the soak. Starts the real `oz-server` and `oz-agent-worker` (on the Direct or the
//! Docker backend, with the real `oz` runner), keeps runs flowing through them while it kills the
//! worker and the server with SIGKILL, freezes the worker or the server (SIGSTOP, then SIGCONT) and cancels runs;
//! then checks, for every run the server has:
//!
//! - it ended (none stuck), in the state it should have: CANCELLED when a cancel was answered 200,
//!   SUCCEEDED when none was sent (the harness always succeeds), either when the cancel's answer
//!   was lost or said it had ended;
//! - its history is complete: the runner's reports numbered from 1 with no gap, and for a run that
//!   succeeded `started`, `harness_started` and `finished`, in that order;
//! - nothing it made is left: no process of the run (Direct), no container or network of the
//!   worker (Docker), no workspace.
//!
//! It prints a Markdown table of the figures and exits 1 if any check failed.

mod processes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use oz_core::environment::EnvironmentConfig;
use oz_core::run::RunState;
use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;
use processes::{Server, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Direct,
    Docker,
}

/// Runs through the real programs while they are killed; checks nothing was lost.
#[derive(Parser, Debug)]
#[command(name = "oz-chaos")]
struct Args {
    /// The backend the worker runs tasks on.
    #[arg(long, value_enum, default_value = "direct")]
    backend: Backend,
    /// How many runs to make.
    #[arg(long, default_value_t = 60)]
    runs: usize,
    /// How many SIGKILLs (of the worker or the server, at random) while the runs flow.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// How many times the worker is frozen (SIGSTOP) for a while.
    #[arg(long, default_value_t = 2)]
    freezes: usize,
    /// How many times the server is frozen (SIGSTOP) for a while (see docs/reliability.md: open).
    #[arg(long, default_value_t = 0)]
    server_freezes: usize,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// The share of runs that are cancelled at a random moment (0-1).
    #[arg(long, default_value_t = 0.1)]
    cancel_share: f64,
    /// The random seed (printed, so a failure can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where oz-server, oz-agent-worker and oz are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The static runner for Docker sandboxes (default: target/sidecar/oz).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// The image Docker runs tasks in.
    #[arg(long, default_value = "oz-test/busybox:latest")]
    image: String,
    /// How long to wait, after the chaos, for every run to end.
    #[arg(long, default_value = "180s", value_parser = humantime_secs)]
    settle: Duration,
    /// Keep a warm pool of this many sandboxes for the runs' environment (0: none). While the worker
    /// runs, at most this many warm sandboxes may exist; once it stops, none.
    #[arg(long, default_value_t = 0)]
    warm: usize,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let secs = text.trim_end_matches('s').parse::<u64>().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(Duration::from_secs(secs))
}

/// What the driver knows about a run it made.
#[derive(Clone, Debug, Default)]
struct Made {
    /// The answer to its cancel, if one was sent: `Some(true)` 200, `Some(false)` refused (it had
    /// ended, maybe by an earlier attempt of the same cancel), `None` with `cancel_unknown` when the
    /// answer was lost.
    cancel_answered: Option<bool>,
    cancel_unknown: bool,
}

/// One run's part of the plan.
#[derive(Clone, Copy, Debug)]
struct RunPlan {
    /// How long its harness sleeps.
    sleep: Duration,
    /// When, after it is made, it is cancelled (if it is).
    cancel_after: Option<Duration>,
}

/// What the chaos does, in order: wait `after`, then do it.
#[derive(Clone, Copy, Debug)]
enum Blow {
    KillWorker { down: Duration },
    KillServer { down: Duration },
    FreezeWorker { frozen: Duration },
    FreezeServer { frozen: Duration },
}

/// Everything random, drawn up front from the seed, so a run of the soak can be replayed.
struct Plan {
    runs: Vec<RunPlan>,
    blows: Vec<(Duration, Blow)>,
}

impl Plan {
    fn new(args: &Args, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let runs: Vec<RunPlan> = (0..args.runs)
            .map(|_| RunPlan {
                sleep: Duration::from_millis(300 + rng.u64(..1500)),
                cancel_after: (rng.f64() < args.cancel_share).then(|| Duration::from_millis(rng.u64(..2000))),
            })
            .collect();
        // The blows are spread over about the time the runs take to flow through, so they land on
        // runs in flight: each run is its sleep plus about half a second of the platform's own.
        let busy: Duration = runs.iter().map(|r| r.sleep + Duration::from_millis(500)).sum();
        let span = busy / args.concurrency.max(1) as u32;
        let count = args.kills + args.freezes + args.server_freezes;
        let gap = span / (count as u32 + 2);
        // 0: a kill, 1: a worker freeze, 2: a server freeze.
        let mut kinds: Vec<u8> = std::iter::repeat_n(0, args.kills)
            .chain(std::iter::repeat_n(1, args.freezes))
            .chain(std::iter::repeat_n(2, args.server_freezes))
            .collect();
        rng.shuffle(&mut kinds);
        let blows = kinds
            .into_iter()
            .map(|kind| {
                let after = gap.mul_f64(0.5 + rng.f64() / 2.0).max(Duration::from_millis(500));
                let blow = match (kind, rng.bool()) {
                    (0, true) => Blow::KillWorker { down: Duration::from_millis(200 + rng.u64(..1500)) },
                    (0, false) => Blow::KillServer { down: Duration::from_millis(200 + rng.u64(..1500)) },
                    (1, _) => Blow::FreezeWorker { frozen: Duration::from_millis(1000 + rng.u64(..3000)) },
                    _ => Blow::FreezeServer { frozen: Duration::from_millis(1000 + rng.u64(..3000)) },
                };
                (after, blow)
            })
            .collect();
        Self { runs, blows }
    }
}

#[derive(Default, Debug)]
struct Figures {
    worker_kills: usize,
    server_kills: usize,
    freezes: usize,
    cancels: usize,
}

const WORKER_ID: &str = "chaos-worker";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    match soak(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("oz-chaos: {e}");
            std::process::exit(2);
        }
    }
}

async fn soak(args: Args) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let plan = Plan::new(&args, seed);
    let bin_dir = processes::bin_dir(args.bin_dir.clone())?;
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
    let data_dir = dir.path().join("server");
    let workspaces = dir.path().join("workspaces");
    eprintln!(
        "oz-chaos: {:?}, {} runs, {} kills, {} freezes, seed {seed}, in {}",
        args.backend,
        args.runs,
        args.kills,
        args.freezes,
        dir.path().display()
    );

    let server = Server::start(&bin_dir, &data_dir)?;
    let credential = server.worker_credential(WORKER_ID)?;
    let client = oz_sdk::Client::builder()
        .base_url(server.url())
        .api_key(&server.admin_key)
        .build()
        .map_err(|e| format!("the SDK client: {e}"))?;
    // The runs' environment: Docker's image; with a warm pool, a setup command to run ahead of them.
    let environment = if args.backend == Backend::Docker || args.warm > 0 {
        let env = EnvironmentConfig {
            name: "chaos".into(),
            docker_image: (args.backend == Backend::Docker).then(|| args.image.clone()),
            setup_commands: if args.warm > 0 { vec!["echo warmed > warmed.txt".into()] } else { vec![] },
            ..Default::default()
        };
        let made = retry(|| {
            let (client, env) = (client.clone(), env.clone());
            async move { client.environments().create(&env).await }
        })
        .await;
        Some(made.uid)
    } else {
        None
    };
    let config_file = dir.path().join("worker.yaml");
    let mut yaml = match args.backend {
        Backend::Direct => format!(
            "worker_id: {WORKER_ID}\nmax_concurrent_tasks: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
            args.concurrency * 2,
            workspaces.display(),
            bin_dir.join("oz").display()
        ),
        Backend::Docker => {
            let sidecar = args.sidecar.clone().unwrap_or_else(|| PathBuf::from("target/sidecar/oz"));
            if !sidecar.is_file() {
                return Err(format!("no static runner at {} (scripts/build-sidecar-oz.sh)", sidecar.display()));
            }
            let sidecar = std::fs::canonicalize(&sidecar).map_err(|e| format!("{}: {e}", sidecar.display()))?;
            format!(
                "worker_id: {WORKER_ID}\nmax_concurrent_tasks: {}\nbackend:\n  docker:\n    sidecar_binary: {}\n    network: host\n    pull_policy: never\n",
                args.concurrency * 2,
                sidecar.display()
            )
        }
    };
    if let (Some(id), true) = (&environment, args.warm > 0) {
        yaml.push_str(&format!("warm_pools:\n  - environment: {id}\n    size: {}\n", args.warm));
    }
    std::fs::write(&config_file, yaml).map_err(|e| format!("cannot write the worker's configuration: {e}"))?;
    let worker = Worker::start(&bin_dir, &config_file, &server.url(), &credential, dir.path())?;

    let made: Arc<Mutex<BTreeMap<String, Made>>> = Arc::default();
    let started = Instant::now();
    let procs = Arc::new(tokio::sync::Mutex::new((server, worker)));
    let submitting = tokio::spawn(submit(client.clone(), plan.runs, args.concurrency, environment, made.clone()));
    let chaos = tokio::spawn(chaos(procs.clone(), plan.blows, submitting.abort_handle()));
    let submitted = submitting.await.map_err(|e| format!("the submitter failed: {e}"))?;
    let mut figures = chaos.await.map_err(|e| format!("the chaos failed: {e}"))??;
    figures.cancels = made
        .lock()
        .map_err(|_| "poisoned")?
        .values()
        .filter(|m| m.cancel_answered.is_some() || m.cancel_unknown)
        .count();
    eprintln!(
        "oz-chaos: {submitted} runs made, chaos over after {:.0?}; waiting for every run to end",
        started.elapsed()
    );

    let runs = settle(&client, args.settle).await;
    let made = made.lock().map_err(|_| "poisoned")?.clone();
    let mut report = check(&client, &runs, &made, args.backend, &workspaces, args.warm).await;
    {
        let mut procs = procs.lock().await;
        procs.1.stop();
        procs.0.kill();
    }
    if args.warm > 0 {
        // A stopped worker discards its warm sandboxes: nothing at all is left now.
        let left = leftovers(&runs, args.backend, &workspaces, 0);
        report.leaks += left.len();
        report.problems.extend(left);
    }
    print_table(&args, seed, &figures, &report, runs.len(), made.len(), started.elapsed());
    if args.warm > 0 {
        eprintln!("oz-chaos: {} of the runs started in a warm sandbox", report.warm_starts);
    }
    if !report.ok() {
        for problem in report.problems.iter().take(40) {
            eprintln!("oz-chaos: {problem}");
        }
        eprintln!("oz-chaos: logs kept in {}", dir.keep().display());
        return Ok(false);
    }
    Ok(true)
}

/// Retries `call` until it works (the server may be down for a moment).
async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = oz_sdk::Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Makes the planned runs, `concurrency` in flight at a time, and cancels those planned to be.
async fn submit(
    client: oz_sdk::Client,
    runs: Vec<RunPlan>,
    concurrency: usize,
    environment: Option<String>,
    made: Arc<Mutex<BTreeMap<String, Made>>>,
) -> usize {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for (i, plan) in runs.into_iter().enumerate() {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let client = client.clone();
        let made = made.clone();
        let environment = environment.clone();
        let sleep_ms = plan.sleep.as_millis();
        tasks.push(tokio::spawn(async move {
            let script =
                format!("echo run {i} started; sleep {}.{:03}; echo run {i} done", sleep_ms / 1000, sleep_ms % 1000);
            let config = AgentConfig {
                worker_host: Some(WORKER_ID.into()),
                environment_id: environment,
                harness: Some(HarnessConfig {
                    kind: Some(oz_core::runner::HarnessKind::Command),
                    command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let run = retry(|| client.runs().create(format!("chaos {i}")).agent_config(config.clone()).send()).await;
            if let Ok(mut made) = made.lock() {
                made.insert(run.run_id.clone(), Made::default());
            }
            if let Some(cancel_after) = plan.cancel_after {
                tokio::time::sleep(cancel_after).await;
                let answer = client.runs().cancel(&run.run_id).await;
                if let Ok(mut made) = made.lock()
                    && let Some(m) = made.get_mut(&run.run_id)
                {
                    match answer {
                        Ok(_) => m.cancel_answered = Some(true),
                        Err(e) if e.status() == Some(400) => m.cancel_answered = Some(false),
                        Err(_) => m.cancel_unknown = true,
                    }
                }
            }
            // The slot is held until the run ends, so `concurrency` runs are in flight.
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(item) = client.runs().get(&run.run_id).await
                    && item.state.is_terminal()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            drop(slot);
        }));
    }
    let count = tasks.len();
    futures::future::join_all(tasks).await;
    count
}

/// Deals the planned blows while the submitter works (the rest are skipped once it is done, with
/// nothing left in flight to hit); ends with both programs up.
async fn chaos(
    procs: Arc<tokio::sync::Mutex<(Server, Worker)>>,
    blows: Vec<(Duration, Blow)>,
    submitting: tokio::task::AbortHandle,
) -> Result<Figures, String> {
    let mut figures = Figures::default();
    for (after, blow) in blows {
        tokio::time::sleep(after).await;
        if submitting.is_finished() {
            eprintln!("oz-chaos: the runs were all through before the last blows; they are skipped");
            break;
        }
        let mut procs = procs.lock().await;
        match blow {
            Blow::KillWorker { down } => {
                procs.1.kill();
                tokio::time::sleep(down).await;
                procs.1.restart()?;
                figures.worker_kills += 1;
            }
            Blow::KillServer { down } => {
                procs.0.kill();
                tokio::time::sleep(down).await;
                procs.0.restart()?;
                figures.server_kills += 1;
            }
            Blow::FreezeWorker { frozen } => {
                procs.1.freeze(true);
                tokio::time::sleep(frozen).await;
                procs.1.freeze(false);
                figures.freezes += 1;
            }
            Blow::FreezeServer { frozen } => {
                procs.0.freeze(true);
                tokio::time::sleep(frozen).await;
                procs.0.freeze(false);
                figures.freezes += 1;
            }
        }
    }
    Ok(figures)
}

/// Every run the server has, once all ended or `within` passed.
async fn settle(client: &oz_sdk::Client, within: Duration) -> Vec<oz_core::wire::api::RunItem> {
    let deadline = Instant::now() + within;
    loop {
        let runs: Vec<_> =
            client.runs().list().limit(500).stream().filter_map(|r| async move { r.ok() }).collect().await;
        if runs.iter().all(|r| r.state.is_terminal()) || Instant::now() > deadline {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Default, Debug)]
struct Checked {
    by_state: BTreeMap<String, usize>,
    lost: usize,
    stuck: usize,
    wrong_end: usize,
    incomplete: usize,
    leaks: usize,
    /// Runs whose history says they started in a warm sandbox.
    warm_starts: usize,
    problems: Vec<String>,
}

impl Checked {
    fn ok(&self) -> bool {
        self.lost + self.stuck + self.wrong_end + self.incomplete + self.leaks == 0
    }
}

async fn check(
    client: &oz_sdk::Client,
    runs: &[oz_core::wire::api::RunItem],
    made: &BTreeMap<String, Made>,
    backend: Backend,
    workspaces: &std::path::Path,
    warm: usize,
) -> Checked {
    let mut checked = Checked::default();
    let on_server: HashMap<&str, &oz_core::wire::api::RunItem> = runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
    for id in made.keys() {
        if !on_server.contains_key(id.as_str()) {
            checked.lost += 1;
            checked.problems.push(format!("run {id} was made but the server does not have it"));
        }
    }
    for run in runs {
        *checked.by_state.entry(run.state.to_string()).or_default() += 1;
        let message = run.status_message.as_ref().map(|m| m.message.clone()).unwrap_or_default();
        if !run.state.is_terminal() {
            checked.stuck += 1;
            checked.problems.push(format!("run {} is stuck {}: {message}", run.run_id, run.state));
            continue;
        }
        let intent = made.get(&run.run_id).cloned().unwrap_or_default();
        let expected: &[RunState] = match (intent.cancel_answered, intent.cancel_unknown) {
            (Some(true), _) => &[RunState::Cancelled],
            // A 400 says the run had ended, possibly by the same cancel sent once before (the SDK
            // resends a request whose answer was lost to a frozen server), or its answer was lost.
            (Some(false), _) | (_, true) => &[RunState::Cancelled, RunState::Succeeded],
            _ => &[RunState::Succeeded],
        };
        if !expected.contains(&run.state) {
            checked.wrong_end += 1;
            checked.problems.push(format!("run {} ended {} (expected {expected:?}): {message}", run.run_id, run.state));
        }
        let transcript = retry(|| {
            let (client, id) = (client.clone(), run.run_id.clone());
            async move { client.runs().transcript(&id).await }
        })
        .await;
        if transcript.iter().any(|e| e["event"]["text"].as_str().is_some_and(|t| t.contains("warm sandbox: cloned"))) {
            checked.warm_starts += 1;
        }
        if let Err(why) = complete(&transcript, run.state) {
            checked.incomplete += 1;
            checked.problems.push(format!("run {}'s history is incomplete: {why}", run.run_id));
        }
    }
    // Removal follows a run's end (and a worker restarted at the last moment first recovers what
    // its predecessor left): what is left must be gone within the grace, while the worker runs.
    let deadline = Instant::now() + LEAK_GRACE;
    let left = loop {
        let left = leftovers(runs, backend, workspaces, warm);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    checked.leaks += left.len();
    checked.problems.extend(left);
    checked
}

/// How long what a run made may outlive the run.
const LEAK_GRACE: Duration = Duration::from_secs(30);

/// What is left of the runs now: their processes, workspaces, and (Docker) the worker's containers
/// and networks; one line each. Up to `warm` warm sandboxes (a running worker's pool) are not left.
fn leftovers(
    runs: &[oz_core::wire::api::RunItem],
    backend: Backend,
    workspaces: &std::path::Path,
    warm: usize,
) -> Vec<String> {
    let mut left = Vec::new();
    let mut warm_seen = 0;
    let mut pooled = |name: &str| {
        let is_warm = name.starts_with("warm-") || name.starts_with("oz-warm-");
        if is_warm && warm_seen < warm {
            warm_seen += 1;
            return true;
        }
        false
    };
    for run in runs {
        let processes = oz_backend_direct::process::processes_of_task(&run.run_id);
        if !processes.is_empty() {
            left.push(format!("run {} left processes {processes:?}", run.run_id));
        }
    }
    if let Ok(entries) = std::fs::read_dir(workspaces) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !pooled(&name) {
                left.push(format!("workspace left: {name}"));
            }
        }
    }
    if backend == Backend::Docker {
        let label = format!("{}={WORKER_ID}", oz_core::task::labels::WORKER_ID);
        for what in [&["ps", "-a", "--format", "{{.Names}}"][..], &["network", "ls", "--format", "{{.Name}}"][..]] {
            let out =
                std::process::Command::new("docker").args(what).args(["--filter", &format!("label={label}")]).output();
            for name in out
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if what[0] == "ps" && pooled(&name) {
                    continue;
                }
                left.push(format!("docker {} left {name}", what[0]));
            }
        }
    }
    left
}

/// Whether a run's stored history is whole: the runner's reports numbered 1..n with no gap, and for
/// a run that succeeded, `started`, `harness_started` and `finished` in that order.
fn complete(transcript: &[serde_json::Value], state: RunState) -> Result<(), String> {
    let reports: Vec<&serde_json::Value> =
        transcript.iter().map(|e| &e["event"]).filter(|b| b["seq"].is_u64()).collect();
    let mut seqs: Vec<u64> = reports.iter().filter_map(|b| b["seq"].as_u64()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    if seqs.iter().enumerate().any(|(i, s)| *s != i as u64 + 1) {
        return Err(format!("the runner's reports have gaps: {seqs:?}"));
    }
    if state == RunState::Succeeded {
        let position = |kind: &str| reports.iter().position(|b| b["event"] == kind);
        match (position("started"), position("harness_started"), position("finished")) {
            (Some(a), Some(b), Some(c)) if a < b && b < c => {}
            found => return Err(format!("started, harness_started, finished at {found:?}")),
        }
    }
    Ok(())
}

fn print_table(args: &Args, seed: u64, f: &Figures, c: &Checked, on_server: usize, made: usize, took: Duration) {
    let states: Vec<String> = c.by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "| backend | runs made | on the server | SIGKILLs (worker + server) | freezes | cancels | ends | lost | stuck | wrong end | incomplete histories | leaks | seed | took |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {:?} | {made} | {on_server} | {} ({} + {}) | {} | {} | {} | {} | {} | {} | {} | {} | {seed} | {:.0?} |",
        args.backend,
        f.worker_kills + f.server_kills,
        f.worker_kills,
        f.server_kills,
        f.freezes,
        f.cancels,
        states.join(", "),
        c.lost,
        c.stuck,
        c.wrong_end,
        c.incomplete,
        c.leaks,
        took
    );
}
