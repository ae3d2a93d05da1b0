//! The flow of `oz agent run`: load the environment, clone the repos, run the setup commands, run the
//! harness, collect artifacts, report the end. Exit status: the harness's; 2 for bad input; 3 when a
//! repo could not be cloned; 4 when a setup command failed; 130 when cancelled.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use oz_core::environment::EnvironmentConfig;
use oz_core::redact::Redactor;
use oz_core::run::RunState;
use oz_core::wire::api::Steering;
use oz_core::wire::callbacks::{Artifact, Continuation, RunnerEvent};
use secrecy::SecretString;
use tokio::sync::watch;
use tracing::{Instrument, info_span};

use crate::args::RunArgs;
use crate::clone::{self, Cloned};
use crate::control::{self, ControlPlane, Detached};
use crate::credentials::{self, CredentialServer};
use crate::exec;
use crate::harness::Harness;
use crate::log::EventLog;
use oz_core::credentials::GitCredential;
use oz_core::runner::{HarnessKind, UnknownHarness, env};

/// Exit status for bad input.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when a repo could not be cloned.
pub const EXIT_CLONE: i32 = 3;
/// Exit status when a setup command failed.
pub const EXIT_SETUP: i32 = 4;
/// Exit status when the run was cancelled.
pub const EXIT_CANCELLED: i32 = 130;

/// Variables never passed on to setup commands or the harness, wherever they come from (the
/// process, the environment's variables, its secrets): the workload token, and git tokens, which
/// reach git and `gh` only through the credential helper.
const WITHHELD: [&str; 7] = [
    env::WORKLOAD_TOKEN,
    env::API_KEY,
    env::GIT_CREDENTIALS,
    env::GITHUB_TOKEN,
    env::GH_TOKEN,
    env::SECRET_INPUT,
    crate::handover::HANDOVER,
];

/// Whether `name` is one of the variables never passed on to a child ([`WITHHELD`]).
pub(crate) fn is_withheld(name: &str) -> bool {
    WITHHELD.contains(&name)
}

/// Whether a variable's name says it holds a secret (its value is then masked in all output): one of
/// its `_`-separated words is TOKEN, SECRET, PASSWORD, ... or it ends in `_KEY` (`API_KEY`,
/// `AWS_SECRET_ACCESS_KEY`). `GIT_AUTHOR_NAME` is not a secret; `NPM_AUTH_TOKEN` is.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    const WORDS: [&str; 11] = [
        "TOKEN",
        "TOKENS",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "APIKEY",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "PAT",
    ];
    n.split('_').any(|w| WORDS.contains(&w)) || n.ends_with("_KEY") || n == "KEY"
}

/// Everything the runner takes from its surroundings, so tests can run it in-process.
pub struct Context {
    /// The process environment.
    pub env: Vec<(String, String)>,
    /// The control plane, or `None` to decide from the flags and `OZ_WORKLOAD_TOKEN`.
    pub control: Option<Arc<dyn ControlPlane>>,
    /// The `oz` binary that git's credential helper calls.
    pub oz_binary: PathBuf,
    /// Cancellation (SIGTERM/SIGINT in the real binary).
    pub cancel: watch::Receiver<bool>,
}

impl Context {
    pub(crate) fn var(&self, name: &str) -> Option<String> {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

/// Runs the agent; returns the process exit status.
pub async fn run(args: RunArgs, warnings: Vec<String>, ctx: Context) -> i32 {
    run_in(args, warnings, ctx, None).await
}

/// [`run`] in a warm sandbox that `prepared` made ready (`oz agent warm`): its clone and setup are
/// not done again if the run's environment is the one prepared.
pub async fn run_prepared(args: RunArgs, warnings: Vec<String>, ctx: Context, prepared: Prepared) -> i32 {
    run_in(args, warnings, ctx, Some(prepared)).await
}

async fn run_in(mut args: RunArgs, warnings: Vec<String>, mut ctx: Context, prepared: Option<Prepared>) -> i32 {
    crate::install_crypto_provider();
    let mut token = ctx.var(env::WORKLOAD_TOKEN).filter(|t| !t.is_empty());
    let api_key = ctx.var(env::API_KEY).filter(|k| !k.is_empty());
    // An unmanaged run given a control plane and an API key registers itself, then goes on as a
    // managed one does: its reports, its session and its steering go through the run's token.
    let mut registered = false;
    if let (None, Some(url), None, None, Some(key)) =
        (&ctx.control, &args.server_root_url, &args.task_id, &token, &api_key)
    {
        match crate::register::register(url, key, &args, &ctx).await {
            Ok(created) => {
                eprintln!(
                    "oz agent run: registered run {}{}",
                    created.run_id,
                    created.session_link.as_deref().map(|l| format!("; watch it at {l}")).unwrap_or_default()
                );
                args.task_id = Some(created.run_id);
                token = Some(created.workload_token);
                registered = true;
            }
            Err(e) => {
                eprintln!("oz agent run: could not register the run with {url}: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let control: Arc<dyn ControlPlane> = match (&ctx.control, &args.server_root_url, &args.task_id, &token) {
        (Some(c), ..) => c.clone(),
        (None, Some(url), Some(task_id), Some(token)) => {
            match control::connect(url, task_id, SecretString::from(token.clone())) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    eprintln!("oz: {}", oz_core::error::error_chain(&e));
                    return EXIT_USAGE;
                }
            }
        }
        _ => Arc::new(Detached),
    };
    // A cancel asked on the control plane stops the run as a signal does (a managed run's worker
    // also stops its sandbox; a registered run has only this).
    let (stop, merged) = watch::channel(*ctx.cancel.borrow());
    let stop = Arc::new(stop);
    let mut signalled = ctx.cancel.clone();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if signalled.wait_for(|c| *c).await.is_ok() {
            let _ = on_signal.send(true);
        }
    });
    ctx.cancel = merged;
    // A registered run has no worker: its runner keeps its lease.
    let heartbeat = registered.then(|| {
        let control = control.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::register::HEARTBEAT_EVERY).await;
                let _ = control.heartbeat().await;
            }
        })
    });
    // What the run needs is gathered before anything is printed, so that every secret in it is
    // masked from the first byte of output.
    let mut start = gather(&args, &ctx, control.as_ref()).await;
    if let Ok(start) = &mut start {
        start.keeps_conversation = control.is_connected() && !registered;
    }
    let mut secrets: Vec<String> = token.iter().chain(api_key.iter()).cloned().collect();
    secrets.extend(ctx.env.iter().filter(|(k, _)| looks_secret(k)).map(|(_, v)| v.clone()));
    if let Ok(start) = &start {
        secrets.extend(start.secrets());
    }
    let redactor = Redactor::new(secrets.iter().map(String::as_bytes));
    let log = EventLog::new(args.output_format, control.clone(), redactor);
    log.emit(RunnerEvent::Started { version: env!("CARGO_PKG_VERSION").into() }).await;
    for w in &warnings {
        log.note(w);
    }
    if !control.is_connected() && (args.server_root_url.is_some() || args.task_id.is_some()) && ctx.control.is_none() {
        log.note("running unmanaged: reporting needs --server-root-url, --task-id and a workload token");
    }

    let span = info_span!("agent_run", task_id = args.task_id.as_deref().unwrap_or("unmanaged"));
    let outcome = match start {
        Ok(start) => prepare_and_run(&args, &ctx, &control, &log, start, prepared, &stop).instrument(span).await,
        Err(failure) => Err(failure),
    };
    let code = match outcome {
        Ok(code) => code,
        Err((code, message)) => {
            let state = if code == EXIT_CANCELLED { RunState::Cancelled } else { RunState::Failed };
            log.emit(RunnerEvent::Finished { state, exit_code: None, message: log.redact(&message) }).await;
            code
        }
    };
    // The history is the product: wait for the control plane to have all of it.
    let flush = ctx
        .var(env::REPORT_FLUSH_SECS)
        .and_then(|s| s.parse().ok())
        .map_or(crate::log::FLUSH_WITHIN, std::time::Duration::from_secs);
    log.close(flush).await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.abort();
    }
    code
}

pub(crate) type Failure = (i32, String);

/// What a run starts from: its environment, its prompt (when the control plane has one), the
/// variables whose values are secrets, and the git credentials for the credential helper.
struct Start {
    environment: EnvironmentConfig,
    prompt: Option<String>,
    secret_env: Vec<(String, String)>,
    git_credentials: Vec<GitCredential>,
    /// Set when this execution continues the run after it ended.
    continuation: Option<Continuation>,
    /// Whether what the agent keeps of its conversation goes to the control plane at the end, for
    /// a next execution (a managed run; one registered from where it runs is never continued).
    keeps_conversation: bool,
}

impl Start {
    /// Every secret value it holds (for the redactor).
    fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.git_credentials.iter().map(|c| c.expose().to_owned()).collect();
        secrets.extend(self.secret_env.iter().map(|(_, v)| v.clone()));
        secrets.extend(self.environment.env_vars.iter().filter(|(k, _)| looks_secret(k)).map(|(_, v)| v.clone()));
        secrets
    }
}

/// What a warm sandbox did before its task came (`oz agent warm`): the environment it prepared, where,
/// and the events of that preparation, which become the first events of the run's history.
pub struct Prepared {
    /// The environment whose repos were cloned and whose setup commands ran.
    pub environment: EnvironmentConfig,
    /// Where the repos were cloned from.
    pub git_base_url: String,
    /// The folder they were cloned into.
    pub workdir: PathBuf,
    /// The preparation's events (clone, setup output), in order.
    pub events: Vec<RunnerEvent>,
    /// The clones it made, with their HEADs.
    pub cloned: Vec<Cloned>,
    /// When it was ready.
    pub ready_at: std::time::Instant,
    /// Connections to the clones' remotes held open while the sandbox waits, by clone folder (see
    /// [`crate::remote_head::OpenRemote`]); a clone without one is asked on a new connection.
    pub open_remotes: std::collections::HashMap<PathBuf, crate::remote_head::OpenRemote>,
}

impl Prepared {
    /// Whether a run of `environment` cloned from `git_base_url` into `workdir` can start from it.
    fn serves(&self, environment: &EnvironmentConfig, git_base_url: &str, workdir: &Path) -> bool {
        self.environment.github_repos == environment.github_repos
            && self.environment.setup_commands == environment.setup_commands
            && self.environment.env_vars == environment.env_vars
            && environment.secrets.is_empty()
            && self.git_base_url == git_base_url
            && same_folder(&self.workdir, workdir)
    }
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Fetches the run's configuration from the control plane (if any) and reads the environment file
/// (if given), then collects the git credentials: the control plane's first, then the ones named in
/// `OZ_GIT_CREDENTIALS` or `GITHUB_TOKEN`/`GH_TOKEN`, from the secrets, the environment's variables
/// or the process.
async fn gather(args: &RunArgs, ctx: &Context, control: &dyn ControlPlane) -> Result<Start, Failure> {
    // Without the run's configuration a run can still go ahead when its command line says all it
    // needs (a prompt, no environment to fetch): reports are best-effort in the same way.
    let self_sufficient = (args.prompt.is_some() || ctx.var(env::PROMPT).is_some()) && args.environment.is_none();
    let resolved = match control.resolved().await {
        Ok(resolved) => resolved,
        Err(e) if self_sufficient => {
            eprintln!("oz agent run: {}; going on with the command line's prompt", oz_core::error::error_chain(&e));
            None
        }
        Err(e) => return Err((EXIT_USAGE, oz_core::error::error_chain(&e))),
    };
    let (environment, prompt, secret_env, mut git_credentials, continuation) = match resolved {
        Some(r) => (
            r.environment,
            Some(r.prompt).filter(|p| !p.is_empty()),
            r.secret_env.into_iter().collect::<Vec<_>>(),
            r.git_credentials.iter().map(|c| c.to_credential()).collect::<Vec<_>>(),
            r.continuation,
        ),
        None => (None, None, Vec::new(), Vec::new(), None),
    };
    let environment = if let Some(path) = &args.environment_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| (EXIT_USAGE, format!("could not read {}: {e}", path.display())))?;
        serde_json::from_str::<EnvironmentConfig>(&text)
            .map_err(|e| (EXIT_USAGE, format!("{} is not a valid environment: {e}", path.display())))?
    } else if let Some(id) = &args.environment {
        match environment {
            Some(environment) => environment,
            None if control.is_connected() => {
                return Err((EXIT_USAGE, format!("the control plane has no environment {id:?} for this run")));
            }
            None => {
                return Err((
                    EXIT_USAGE,
                    format!(
                        "environment {id:?} cannot be fetched without a control plane: pass --server-root-url with a workload token, or --environment-file"
                    ),
                ));
            }
        }
    } else {
        environment.unwrap_or_else(|| EnvironmentConfig { name: "none".into(), ..Default::default() })
    };
    environment.validate().map_err(|e| (EXIT_USAGE, format!("the environment is invalid: {e}")))?;
    let lookup = |name: &str| {
        secret_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| environment.env_vars.get(name).cloned())
            .or_else(|| ctx.var(name))
    };
    for credential in credentials::from_env(lookup).map_err(|e| (EXIT_USAGE, e))? {
        if !git_credentials.iter().any(|c| c.host == credential.host) {
            git_credentials.push(credential);
        }
    }
    Ok(Start { environment, prompt, secret_env, git_credentials, continuation, keeps_conversation: false })
}

async fn prepare_and_run(
    args: &RunArgs,
    ctx: &Context,
    control: &Arc<dyn ControlPlane>,
    log: &Arc<EventLog>,
    start: Start,
    prepared: Option<Prepared>,
    stop: &Arc<watch::Sender<bool>>,
) -> Result<i32, Failure> {
    clone::validate_base_url(&args.git_base_url).map_err(|e| (EXIT_USAGE, e))?;
    let Start { environment, prompt: resolved_prompt, secret_env, git_credentials, continuation, keeps_conversation } =
        start;
    let kind: HarnessKind = args.harness.parse().map_err(|e: UnknownHarness| (EXIT_USAGE, e.to_string()))?;
    let default_kind = ctx.var(env::DEFAULT_HARNESS).and_then(|k| k.parse().ok());
    let command = if args.command.is_empty() {
        match ctx.var(env::HARNESS_COMMAND) {
            Some(json) => serde_json::from_str::<Vec<String>>(&json)
                .map_err(|e| (EXIT_USAGE, format!("{} must be a JSON array of strings: {e}", env::HARNESS_COMMAND)))?,
            None => Vec::new(),
        }
    } else {
        args.command.clone()
    };
    let harness = Harness::resolve(kind, command, default_kind).map_err(|e| (EXIT_USAGE, e))?;
    let prompt = args.prompt.clone().or_else(|| ctx.var(env::PROMPT)).or(resolved_prompt).unwrap_or_default();

    let workdir = match &args.workdir {
        Some(w) => {
            std::fs::create_dir_all(w)
                .map_err(|e| (EXIT_USAGE, format!("could not create --workdir {}: {e}", w.display())))?;
            w.clone()
        }
        None => std::env::current_dir().map_err(|e| (EXIT_USAGE, format!("no current directory: {e}")))?,
    };
    let tmp = ctx
        .var("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 70)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let credential_server = CredentialServer::start(git_credentials.clone(), &tmp)
        .map_err(|e| (EXIT_USAGE, format!("could not start the git credential helper: {e}")))?;
    // The files the runner shares with the harness, in a folder of its own (0700, a random name):
    // nobody else on the host can plant or read them.
    let run_dir = tempfile::Builder::new()
        .prefix("oz-run-")
        .tempdir_in(&tmp)
        .map_err(|e| (EXIT_USAGE, format!("could not make a private folder in {}: {e}", tmp.display())))?;
    let artifacts_file = run_dir.path().join("artifacts.ndjson");
    let followup_file = run_dir.path().join("followups.ndjson");

    // The environment of every child: ours minus the run's secrets, plus the environment's
    // variables, the credential helper, and what the harness needs to know.
    let mut child_env: Vec<(String, String)> =
        ctx.env.iter().filter(|(k, _)| !WITHHELD.contains(&k.as_str())).cloned().collect();
    for (k, v) in environment.env_vars.iter().chain(secret_env.iter().map(|(k, v)| (k, v))) {
        set_var(&mut child_env, k, v.clone());
    }
    // Whatever the environment's variables or secrets said, no token goes to a child.
    child_env.retain(|(name, _)| !WITHHELD.contains(&name.as_str()));
    for (k, v) in credential_server.git_env(&ctx.oz_binary) {
        set_var(&mut child_env, &k, v);
    }
    let path_now = child_env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    if let Some(path) = credential_server
        .gh_wrapper(&git_credentials, &ctx.oz_binary, path_now.as_deref())
        .map_err(|e| (EXIT_USAGE, format!("could not set up gh's credentials: {e}")))?
    {
        set_var(&mut child_env, "PATH", path);
    }
    set_var(&mut child_env, env::PROMPT, prompt.clone());
    set_var(&mut child_env, env::ARTIFACTS_FILE, artifacts_file.display().to_string());
    set_var(&mut child_env, env::FOLLOWUP_FILE, followup_file.display().to_string());
    let lookup = |name: &str| child_env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let conversation = crate::conversation::Conversation::new(run_dir.path(), &harness, lookup)
        .map_err(|e| (EXIT_USAGE, oz_core::error::error_chain(&e)))?;
    set_var(&mut child_env, env::CONVERSATION_DIR, conversation.dir().display().to_string());
    let execution = continuation.as_ref().map_or(1, |c| c.execution);
    set_var(&mut child_env, env::EXECUTION, execution.to_string());
    if let Some(task_id) = &args.task_id {
        set_var(&mut child_env, env::RUN_ID, task_id.clone());
    }
    if let Some(mcp) = &args.mcp {
        set_var(&mut child_env, env::MCP_SERVERS, mcp.clone());
    }

    // The run's steering is followed from here on, so a cancel stops the clone and the setup too;
    // what comes for the agent before it starts waits for it (follow-ups in the file, keys typed
    // ahead). A continued run's steering is what came after the follow-up that continued it.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&followup_file)
        .map_err(|e| (EXIT_USAGE, format!("could not create {}: {e}", followup_file.display())))?;
    let to_harness = Arc::new(HarnessSteering::new(&followup_file, &harness));
    let steer_after = continuation.as_ref().map_or(0, |c| c.after_seq);
    let steering = AbortOnDrop(tokio::spawn(deliver_steering(
        control.clone(),
        to_harness.clone(),
        stop.clone(),
        log.clone(),
        steer_after,
    )));

    // A warm sandbox that prepared this environment: its history first, then only what may have
    // moved since (the repos' HEADs). One prepared for something else is prepared again.
    let mut warm = match prepared {
        Some(p) if p.serves(&environment, &args.git_base_url, &workdir) => Some(p),
        Some(p) => {
            log.announce("the warm sandbox was prepared for another environment: preparing it again for this run")
                .await;
            for repo in &p.environment.github_repos {
                let _ = std::fs::remove_dir_all(p.workdir.join(&repo.repo));
            }
            None
        }
        None => None,
    };
    if let Some(p) = &warm {
        for event in p.events.clone() {
            log.emit(event).await;
        }
        log.announce(&format!(
            "warm sandbox: cloned and set up {} ms before the task came; its repos are brought up to date, its setup commands are not run again",
            p.ready_at.elapsed().as_millis()
        ))
        .await;
    }
    let cloned = match &mut warm {
        Some(p) => {
            let open = std::mem::take(&mut p.open_remotes);
            refresh_heads(p.cloned.clone(), open, &child_env, &git_credentials, log).await?
        }
        None => {
            let clone =
                clone_environment(&environment, &args.git_base_url, &workdir, &child_env, &git_credentials, false, log);
            let mut cancel = ctx.cancel.clone();
            let cloned = tokio::select! {
                cloned = clone => cloned?,
                _ = cancel.wait_for(|c| *c) => return Err((EXIT_CANCELLED, "cancelled while cloning".into())),
            };
            run_setup(&environment, &child_env, &workdir, log, &ctx.cancel).await?;
            cloned
        }
    };

    // The harness.
    check_cancel(&ctx.cancel)?;
    let argv = match &continuation {
        Some(c) => {
            restore_conversation(c, control.as_ref(), &conversation, log).await;
            // A preset resumes its latest conversation with the follow-up; a command harness gets
            // the follow-up as its prompt and finds what it kept in OZ_CONVERSATION_DIR.
            harness
                .continuation_argv(&prompt, args.model.as_deref())
                .unwrap_or_else(|| harness.argv(&prompt, args.model.as_deref()))
        }
        None => harness.argv(&prompt, args.model.as_deref()),
    };
    log.emit(RunnerEvent::HarnessStarted { harness: harness.to_string() }).await;
    let ended = run_turns(&harness, argv, &prompt, args.model.as_deref(), &to_harness, &child_env, &workdir, log, ctx)
        .instrument(info_span!("harness", harness = %harness))
        .await;
    let ended = ended?;
    if keeps_conversation {
        keep_conversation(control.as_ref(), &conversation, log).await;
    }

    // Artifacts: what the harness declared, and the commits it made.
    for artifact in read_artifacts(&artifacts_file, log) {
        log.emit(RunnerEvent::Artifact(artifact)).await;
    }
    drop(run_dir);
    if let Some(git) = clone::find_git(child_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())) {
        for c in &cloned {
            let Some(before) = &c.head else { continue };
            for (sha, subject) in clone::commits_since(&git, &c.dir, before, &child_env).await {
                log.emit(RunnerEvent::Artifact(Artifact::ExternalReference {
                    reference_type: "git_commit".into(),
                    url: format!("{}/commit/{sha}", clone::clone_url(&args.git_base_url, &c.repo)),
                    title: subject,
                    metadata: Some(serde_json::json!({"repo": c.repo.to_string(), "sha": sha})),
                }))
                .await;
            }
        }
    }
    drop(credential_server);

    let (state, code, message) = if ended.cancelled {
        (RunState::Cancelled, EXIT_CANCELLED, "cancelled".to_owned())
    } else if ended.code == 0 {
        (RunState::Succeeded, 0, format!("the {harness} harness finished"))
    } else {
        (RunState::Failed, ended.code, format!("the {harness} harness exited with code {}", ended.code))
    };
    // Followed up to the end: a follow-up that came after the agent's last turn is said in the
    // history not to have reached it.
    drop(steering);
    log.emit(RunnerEvent::Finished { state, exit_code: Some(ended.code), message }).await;
    Ok(code)
}

/// Aborts its task when dropped (on every way out of the run, errors included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the harness: one turn, and for a preset another turn per batch of follow-ups that came
/// while the one before ran (a preset in its non-interactive form reads no follow-ups while it
/// works; each turn resumes its conversation). A command harness reads its follow-ups itself, in
/// its one turn. Ends with the last turn's end, or when the run is cancelled.
#[allow(clippy::too_many_arguments)]
async fn run_turns(
    harness: &Harness,
    mut argv: Vec<String>,
    prompt: &str,
    model: Option<&str>,
    steering: &HarnessSteering,
    child_env: &[(String, String)],
    workdir: &Path,
    log: &Arc<EventLog>,
    ctx: &Context,
) -> Result<exec::Ended, Failure> {
    let mut stdin = Bytes::from(prompt.to_owned());
    let mut taken = 0;
    loop {
        let steer = steering.next_turn();
        let ended = exec::run(&argv, child_env, workdir, Some(stdin), log.clone(), ctx.cancel.clone(), Some(steer))
            .await
            .map_err(|e| (127, format!("could not start the {harness} harness ({}): {e}", argv[0])))?;
        let resumes = harness.resumes_with().filter(|_| !ended.cancelled);
        let queued = steering.queued_or_close(&mut taken, resumes.is_none());
        let Some(resumes) = resumes.filter(|_| !queued.is_empty()) else { return Ok(ended) };
        let message = queued.join("\n\n");
        let Some(next) = harness.continuation_argv(&message, model) else { return Ok(ended) };
        log.announce(&format!(
            "{} follow-up(s) came while {harness} worked: it goes on with them in the same conversation ({resumes})",
            queued.len()
        ))
        .await;
        argv = next;
        stdin = Bytes::from(message);
    }
}

/// Where the steering of the harness goes: follow-ups to `OZ_FOLLOWUP_FILE` (one JSON line each,
/// which a preset's next turn also takes them from), interrupts and keys to the process of the turn
/// that runs. Followed from before the clone: what comes before the agent starts waits for it.
struct HarnessSteering {
    /// `OZ_FOLLOWUP_FILE`.
    followup_file: PathBuf,
    /// What becomes of a follow-up, as the announcement says it.
    followup_goes: String,
    /// Where the harness is. Held while a follow-up is written, so none is written after the last
    /// look at the file.
    turn: std::sync::Mutex<Turn>,
}

/// The most keys kept for an agent that has not started yet (type-ahead).
const TYPE_AHEAD_BYTES: usize = 64 * 1024;

enum Turn {
    /// The agent has not started: keys typed meanwhile, for its first turn.
    NotYet { typed_ahead: Vec<Bytes>, bytes: usize },
    /// A turn's process runs.
    Running(TurnInputs),
    /// The harness has had its last turn.
    Over,
}

struct TurnInputs {
    /// Each interrupt, to the turn's process.
    interrupt: tokio::sync::mpsc::UnboundedSender<()>,
    /// Keys typed into the session, to the turn's terminal.
    keys: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl HarnessSteering {
    fn new(followup_file: &Path, harness: &Harness) -> Self {
        let followup_goes = match harness {
            Harness::Command(_) => format!("written to {}", env::FOLLOWUP_FILE),
            preset => {
                format!("queued for {preset}: it goes on with it in the same conversation when its current turn ends")
            }
        };
        let turn = Turn::NotYet { typed_ahead: Vec::new(), bytes: 0 };
        Self { followup_file: followup_file.to_owned(), followup_goes, turn: std::sync::Mutex::new(turn) }
    }

    fn turn(&self) -> std::sync::MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The channels of a new turn's process; the first gets the keys typed before it started.
    fn next_turn(&self) -> exec::Steer {
        let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
        let (keys_in, keys) = tokio::sync::mpsc::unbounded_channel();
        let mut turn = self.turn();
        if let Turn::NotYet { typed_ahead, .. } = &mut *turn {
            for typed in typed_ahead.drain(..) {
                let _ = keys_in.send(typed);
            }
        }
        *turn = Turn::Running(TurnInputs { interrupt, keys: keys_in });
        exec::Steer { interrupts, keys }
    }

    /// Interrupts the running turn's process; false when none runs.
    fn interrupt(&self) -> bool {
        matches!(&*self.turn(), Turn::Running(t) if t.interrupt.send(()).is_ok())
    }

    /// Keys for the agent's terminal: to the running turn, or kept for the first one (at most
    /// [`TYPE_AHEAD_BYTES`]); false when they go nowhere.
    fn keys(&self, data: Bytes) -> bool {
        match &mut *self.turn() {
            Turn::Running(t) => t.keys.send(data).is_ok(),
            Turn::NotYet { typed_ahead, bytes } if *bytes + data.len() <= TYPE_AHEAD_BYTES => {
                *bytes += data.len();
                typed_ahead.push(data);
                true
            }
            Turn::NotYet { .. } | Turn::Over => false,
        }
    }

    /// Writes a follow-up for the harness, unless it has had its last turn (under the turn's lock,
    /// so never after the last look at the file); what became of it, to announce.
    fn hand_followup(&self, followup: &oz_core::wire::api::FollowupEvent) -> String {
        use std::io::Write;
        let mut line = serde_json::to_vec(followup).unwrap_or_default();
        line.push(b'\n');
        let chars = followup.message.chars().count();
        let turn = self.turn();
        if matches!(*turn, Turn::Over) {
            return format!(
                "a follow-up ({chars} characters) came after the agent's last turn had ended: it was not handed to it"
            );
        }
        // One write per line, in append mode: a reader never sees half a follow-up.
        let written =
            std::fs::OpenOptions::new().append(true).open(&self.followup_file).and_then(|mut f| f.write_all(&line));
        match written {
            Ok(()) => format!("a follow-up ({chars} characters) was {}", self.followup_goes),
            Err(e) => format!("a follow-up could not be handed to the agent: {e}"),
        }
    }

    /// The messages of the follow-ups written since the last look (`taken` lines were seen); when
    /// there are none, or `last` (no other turn comes), the harness is closed to follow-ups.
    fn queued_or_close(&self, taken: &mut usize, last: bool) -> Vec<String> {
        let mut turn = self.turn();
        let text = std::fs::read_to_string(&self.followup_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let queued: Vec<String> = lines
            .iter()
            .skip(*taken)
            .filter_map(|l| serde_json::from_str::<oz_core::wire::api::FollowupEvent>(l).ok())
            .map(|f| f.message)
            .collect();
        *taken = lines.len();
        if last || queued.is_empty() {
            *turn = Turn::Over;
            return Vec::new();
        }
        queued
    }
}

/// Hands each follow-up, interrupt and key the run gets to the harness ([`HarnessSteering`]) from
/// before the clone until the harness ends (the caller stops this then), and stops the run when it
/// is cancelled, in its clone and setup too.
/// A broken connection to the control plane is retried, resuming after the last one handed on,
/// until the run's token is refused.
async fn deliver_steering(
    control: Arc<dyn ControlPlane>,
    to: Arc<HarnessSteering>,
    stop: Arc<watch::Sender<bool>>,
    log: Arc<EventLog>,
    mut after: i64,
) {
    let mut said_keys_dropped = false;
    use futures::StreamExt;
    const LONGEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);
    let mut pause = std::time::Duration::from_secs(1);
    let mut said_broken = false;
    loop {
        let mut steering = control.steering(after);
        let broke = loop {
            match steering.next().await {
                None => break None,
                Some(Err(e)) => break Some(e),
                Some(Ok((seq, Steering::Cancel))) => {
                    after = seq;
                    let _ = stop.send(true);
                }
                Some(Ok((seq, Steering::Interrupt(_)))) => {
                    after = seq;
                    let sent = to.interrupt();
                    let said = if sent {
                        "interrupted: SIGINT was sent to the agent's processes"
                    } else {
                        "an interrupt came while no agent process ran"
                    };
                    log.announce(said).await;
                }
                Some(Ok((seq, Steering::Input(input)))) => {
                    after = seq;
                    // Keys are not announced one by one (the terminal echoes them); only that
                    // they could not be passed on, once.
                    if !to.keys(Bytes::from(input.data)) && !said_keys_dropped {
                        said_keys_dropped = true;
                        log.announce("keys typed into the session reached no agent (it had ended, or too many were typed before it started)").await;
                    }
                }
                Some(Ok((seq, Steering::Followup(followup)))) => {
                    after = seq;
                    pause = std::time::Duration::from_secs(1);
                    let said = to.hand_followup(&followup);
                    log.announce(&said).await;
                }
            }
        };
        // The stream ends with the run.
        let Some(e) = broke else { return };
        if e.disposition() == control::Disposition::GiveUp {
            let why = oz_core::error::error_chain(&e);
            log.announce(&format!("follow-ups can no longer reach the agent: {why}")).await;
            return;
        }
        if !std::mem::replace(&mut said_broken, true) {
            let why = oz_core::error::error_chain(&e);
            log.note(&format!("following the run's follow-ups broke ({why}); trying again"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Puts back what the execution before kept of the run's conversation, before the harness starts.
/// A conversation that cannot be had is said, and the agent goes on without it.
async fn restore_conversation(
    continuation: &Continuation,
    control: &dyn ControlPlane,
    conversation: &crate::conversation::Conversation,
    log: &Arc<EventLog>,
) {
    let said = if !continuation.conversation {
        format!(
            "execution {}: the run ended and a follow-up continues it; the execution before kept no conversation",
            continuation.execution
        )
    } else {
        match control.conversation().await {
            Ok(Some(archive)) => match conversation.unpack(&archive) {
                Ok(files) => format!(
                    "execution {}: the run ended and a follow-up continues it; the agent goes on with the conversation the execution before kept ({files} files, {} bytes packed)",
                    continuation.execution,
                    archive.len()
                ),
                Err(e) => format!("the kept conversation could not be restored: {}", oz_core::error::error_chain(&e)),
            },
            Ok(None) => "the execution before kept no conversation".to_owned(),
            Err(e) => format!("the kept conversation could not be fetched: {}", oz_core::error::error_chain(&e)),
        }
    };
    log.announce(&said).await;
}

/// Sends what the agent kept of its conversation to the control plane, for a follow-up after the
/// run ends; said in the run's history either way.
async fn keep_conversation(
    control: &dyn ControlPlane,
    conversation: &crate::conversation::Conversation,
    log: &Arc<EventLog>,
) {
    let packed = conversation.pack();
    let said = match packed {
        Ok(None) => return,
        Ok(Some(archive)) => {
            let bytes = archive.len();
            match control.save_conversation(archive).await {
                Ok(()) => format!(
                    "the agent's conversation was kept for a follow-up after the run ends ({bytes} bytes packed)"
                ),
                Err(e) => format!("the agent's conversation could not be kept: {}", oz_core::error::error_chain(&e)),
            }
        }
        Err(e) => format!("the agent's conversation could not be kept: {}", oz_core::error::error_chain(&e)),
    };
    log.announce(&said).await;
}

/// Clones the environment's repos into `workdir` (a repo already there is left as it is);
/// `from_mirror`: from the worker's mirror alone where a repo has one (see [`clone::Cloner`]).
pub(crate) async fn clone_environment(
    environment: &EnvironmentConfig,
    git_base_url: &str,
    workdir: &Path,
    child_env: &[(String, String)],
    git_credentials: &[GitCredential],
    from_mirror: bool,
    log: &Arc<EventLog>,
) -> Result<Vec<Cloned>, Failure> {
    if environment.github_repos.is_empty() {
        return Ok(Vec::new());
    }
    let path_var = child_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let cloner = match clone::find_git(path_var) {
        Some(git) => {
            let mirrors = child_env
                .iter()
                .find(|(k, _)| k == oz_core::runner::env::GIT_MIRROR_DIR)
                .map(|(_, v)| PathBuf::from(v))
                .filter(|p| p.is_absolute());
            clone::Cloner::Binary { git, env: child_env.to_vec(), mirrors, from_mirror }
        }
        None => {
            log.note("no git binary on PATH nor at /agent/bin/git: cloning with the built-in git (shallow, depth 1)");
            clone::Cloner::Builtin(Arc::new(git_credentials.to_vec()))
        }
    };
    let cloned = clone::clone_all(&environment.github_repos, git_base_url, workdir, &cloner, log.clone())
        .instrument(info_span!("clone", repos = environment.github_repos.len()))
        .await;
    if let Some(failed) = cloned.iter().find(|c| c.error.is_some()) {
        return Err((
            EXIT_CLONE,
            format!("could not clone {}: {}", failed.repo, failed.error.clone().unwrap_or_default()),
        ));
    }
    Ok(cloned)
}

/// Brings each repo of a warm sandbox to its remote's current HEAD, if that moved since the clone;
/// the clones with their HEADs now (the agent's commits are counted from there).
async fn refresh_heads(
    mut cloned: Vec<Cloned>,
    mut open_remotes: std::collections::HashMap<PathBuf, crate::remote_head::OpenRemote>,
    child_env: &[(String, String)],
    git_credentials: &[GitCredential],
    log: &Arc<EventLog>,
) -> Result<Vec<Cloned>, Failure> {
    let credentials = Arc::new(git_credentials.to_vec());
    let path_var = child_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let Some(git) = clone::find_git(path_var) else {
        if !cloned.is_empty() {
            log.note("no git binary: the warm sandbox's repos are used as they were cloned");
        }
        return Ok(cloned);
    };
    for c in &mut cloned {
        let open = open_remotes.remove(&c.dir);
        match clone::reset_to_remote_head(&git, &c.dir, c.head.as_deref(), child_env, &credentials, open).await {
            Ok(Some(now)) => {
                let before = c.head.clone().unwrap_or_default();
                log.announce(&format!("{} moved since the sandbox was prepared: {before} -> {now}", c.repo)).await;
                c.head = Some(now);
            }
            Ok(None) => {}
            Err(e) => return Err((EXIT_CLONE, format!("could not bring {} up to date: {}", c.repo, log.redact(&e)))),
        }
    }
    Ok(cloned)
}

/// Runs the environment's setup commands in order; the first that fails ends the run.
pub(crate) async fn run_setup(
    environment: &EnvironmentConfig,
    child_env: &[(String, String)],
    workdir: &Path,
    log: &Arc<EventLog>,
    cancel: &watch::Receiver<bool>,
) -> Result<(), Failure> {
    for (index, command) in environment.setup_commands.iter().enumerate() {
        check_cancel(cancel)?;
        log.emit(RunnerEvent::SetupStarted { index, command: command.clone() }).await;
        let started = std::time::Instant::now();
        let argv = ["/bin/sh".to_owned(), "-c".to_owned(), command.clone()];
        let ended = exec::run(&argv, child_env, workdir, None, log.clone(), cancel.clone(), None)
            .instrument(info_span!("setup_command", index))
            .await
            .map_err(|e| (EXIT_SETUP, format!("setup_commands[{index}] could not start: {e}")))?;
        log.emit(RunnerEvent::SetupFinished {
            index,
            exit_code: ended.code,
            millis: started.elapsed().as_millis() as u64,
        })
        .await;
        if ended.cancelled {
            return Err((EXIT_CANCELLED, "cancelled during setup".into()));
        }
        if ended.code != 0 {
            return Err((EXIT_SETUP, format!("setup_commands[{index}] exited with code {}", ended.code)));
        }
    }
    Ok(())
}

/// Sets `name` in `env`, replacing any earlier value.
fn set_var(env: &mut Vec<(String, String)>, name: &str, value: String) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_owned(), value));
}

fn check_cancel(cancel: &watch::Receiver<bool>) -> Result<(), Failure> {
    if *cancel.borrow() { Err((EXIT_CANCELLED, "cancelled".into())) } else { Ok(()) }
}

fn read_artifacts(path: &Path, log: &EventLog) -> Vec<Artifact> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(i, line)| match serde_json::from_str::<Artifact>(line) {
            Ok(a) => Some(a),
            Err(e) => {
                log.note(&format!("{} line {}: not an artifact ({e}); skipped", env::ARTIFACTS_FILE, i + 1));
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn followup(message: &str) -> oz_core::wire::api::FollowupEvent {
        oz_core::wire::api::FollowupEvent { message: message.into(), mode: None, by: None }
    }

    /// The steering is followed from before the clone: what comes before the agent starts waits
    /// for it, and nothing reaches it after its last turn.
    #[tokio::test]
    async fn steering_that_comes_before_the_agent_starts_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("followups.ndjson");
        std::fs::write(&file, "").unwrap();
        let steering = HarnessSteering::new(&file, &Harness::Command(vec!["agent".into()]));
        assert!(!steering.interrupt(), "no process to interrupt yet");
        assert!(steering.keys(Bytes::from_static(b"yes\r")));
        assert!(!steering.keys(Bytes::from(vec![b'x'; TYPE_AHEAD_BYTES])), "type-ahead is bounded");
        assert!(steering.hand_followup(&followup("early")).contains("written to"));
        let mut first = steering.next_turn();
        assert_eq!(
            first.keys.recv().await.unwrap(),
            Bytes::from_static(b"yes\r"),
            "typed ahead, delivered at its start"
        );
        assert!(steering.keys(Bytes::from_static(b"more")));
        assert_eq!(first.keys.recv().await.unwrap(), Bytes::from_static(b"more"));
        assert!(steering.interrupt());
        assert!(first.interrupts.recv().await.is_some());
        let mut taken = 0;
        assert!(steering.queued_or_close(&mut taken, true).is_empty());
        assert!(!steering.keys(Bytes::from_static(b"late")));
        assert!(steering.hand_followup(&followup("late")).contains("was not handed"));
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(written.contains("early") && !written.contains("late"), "{written}");
    }

    #[test]
    fn secret_names() {
        for yes in [
            "GITHUB_TOKEN",
            "WARP_API_KEY",
            "NPM_AUTH_TOKEN",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "my_service_token",
            "GH_PAT",
        ] {
            assert!(super::looks_secret(yes), "{yes}");
        }
        for no in ["GIT_AUTHOR_NAME", "PATH", "HOME", "TOKENIZER_PATH", "KEYBOARD", "OZ_PROMPT", "PATCH_LEVEL"] {
            assert!(!super::looks_secret(no), "{no}");
        }
    }
}
