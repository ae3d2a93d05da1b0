//! Warm Pods against the fake API server, its kubelet running each Pod's command (the real `oz`
//! runner) as local processes: a warm Job is prepared holding no secret (its environment an
//! annotation mounted as a file, its stdin held open), claimed by label and handed one task through
//! `pods/attach`; the task runs where the repo was cloned and the setup ran, at the HEAD pushed since;
//! a restarted worker removes a waiting one and reattaches a claimed one; a task asking for another
//! sandbox is refused and the Pod removed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::{Backend, TaskEvent, TaskHandle, TaskOutcome};
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::task::{SandboxSpec, SecretInput, TaskSpec};
use oz_core::warm::{READY_LINE, WarmSpec};
use oz_k8s_fake::{FakeCluster, WatchKind};
use serde_json::Value;

const NS: &str = "warm";
const TOKEN: &str = "ozw_k8s_warm_0123456789.never-in-a-spec";

/// The `oz` binary next to this test's build (cargo builds every workspace binary for the tests).
fn oz_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("oz");
    assert!(bin.exists(), "{} is missing: build the workspace (cargo build --workspace) first", bin.display());
    bin
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Setup {
    dir: tempfile::TempDir,
    cluster: FakeCluster,
    client: kube::Client,
}

impl Setup {
    fn backend(&self, worker_id: &str) -> KubernetesBackend {
        self.backend_with(worker_id, |_| {})
    }
    fn backend_with(&self, worker_id: &str, configure: impl FnOnce(&mut KubernetesConfig)) -> KubernetesBackend {
        let mut config = KubernetesConfig::new(worker_id, "acme/oz-sidecar:1");
        config.namespace = NS.into();
        configure(&mut config);
        KubernetesBackend::new(self.client.clone(), config).unwrap()
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn git_base(&self) -> String {
        format!("file://{}", self.dir.path().join("git").display())
    }
    /// A commit on the remote's main branch.
    fn push(&self, subject: &str) {
        std::fs::write(self.src().join(format!("{subject}.txt")), subject).unwrap();
        git(&self.src(), &["add", "."]);
        git(&self.src(), &["commit", "-q", "-m", subject]);
        git(&self.src(), &["push", "-q", self.dir.path().join("git/acme/app").to_str().unwrap(), "HEAD:main"]);
    }
    fn everything(&self) -> String {
        let mut all = String::new();
        for kind in [WatchKind::Job, WatchKind::Pod, WatchKind::Secret, WatchKind::Event] {
            all.push_str(&Value::Array(self.cluster.objects(kind, NS)).to_string());
        }
        all.push_str(&self.cluster.requests().join("\n"));
        all
    }
    fn jobs(&self) -> Vec<Value> {
        self.cluster.objects(WatchKind::Job, NS)
    }
}

async fn setup() -> Setup {
    let dir = tempfile::Builder::new().prefix("k8s-warm").tempdir_in("/tmp").unwrap();
    // The remote: a bare repo with one commit.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README.md"), "# app\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "initial"]);
    let bare = dir.path().join("git/acme/app");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(dir.path(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    // The sidecar an init container would copy into `/agent`: its entrypoint runs this build's `oz`.
    let agent = dir.path().join("agent");
    std::fs::create_dir_all(&agent).unwrap();
    let entrypoint = agent.join("entrypoint.sh");
    std::fs::write(&entrypoint, format!("#!/bin/sh\nexec {} \"$@\"\n", oz_binary().display())).unwrap();
    std::fs::set_permissions(&entrypoint, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(agent.join("bin")).unwrap();
    std::os::unix::fs::symlink(oz_binary(), agent.join("bin/oz")).unwrap();
    let cluster = FakeCluster::start().await.unwrap();
    // The claims' volumes: the package caches and the worker's git mirrors.
    let (caches, mirrors) = (dir.path().join("caches"), dir.path().join("mirrors"));
    std::fs::create_dir_all(mirrors.join("acme/app.git")).unwrap();
    std::fs::write(mirrors.join("acme/app.git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(&caches).unwrap();
    let preloaded = [("agent", agent), ("oz-package-cache", caches), ("oz-git-mirrors", mirrors)];
    cluster.enable_kubelet_with(dir.path().join("node"), preloaded.map(|(name, dir)| (name.to_owned(), dir)));
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    Setup { dir, cluster, client }
}

fn warm_spec(s: &Setup) -> WarmSpec {
    WarmSpec {
        sandbox: SandboxSpec::default(),
        entrypoint: "/agent/entrypoint.sh".into(),
        environment: EnvironmentConfig {
            name: "app".into(),
            github_repos: vec![RepoRef::new("acme", "app").unwrap()],
            setup_commands: vec!["echo warmed-at-$(date +%s%N) > setup.txt".into()],
            ..Default::default()
        },
        git_base_url: None,
        env: vec![(oz_core::runner::env::GIT_BASE_URL.to_owned(), s.git_base())],
        ready_within: Duration::from_secs(60),
    }
}

/// An unmanaged runner (no control plane) running `script` as its command harness, with a token;
/// its environment (as a control plane would give it) is the one prepared, from a file of the
/// test's (the handoff's paths are the runner's own: the fake kubelet does not translate them).
fn runner_task(s: &Setup, id: &str, script: &str) -> TaskSpec {
    let file = s.dir.path().join("environment.json");
    std::fs::write(&file, serde_json::to_vec(&warm_spec(s).environment).unwrap()).unwrap();
    let file = file.display().to_string();
    let argv = [
        "/agent/entrypoint.sh",
        "agent",
        "run",
        "--task-id",
        id,
        "--environment-file",
        &file,
        "--harness",
        "command",
        "--",
        "/bin/sh",
        "-c",
        script,
    ];
    let mut spec = TaskSpec::new(id, argv.iter().map(|s| (*s).to_owned()).collect())
        .env(oz_core::runner::env::GIT_BASE_URL, s.git_base());
    spec.secret_input = Some(SecretInput::new(TOKEN));
    spec
}

async fn run_out(mut handle: TaskHandle) -> (TaskOutcome, String) {
    let mut events = handle.take_events().unwrap();
    let collect = tokio::spawn(async move {
        let mut out = String::new();
        while let Some(e) = events.recv().await {
            if let TaskEvent::Stdout(b) | TaskEvent::Stderr(b) = e {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
        out
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait()).await.expect("the task ends");
    (outcome, collect.await.unwrap())
}

async fn gone(s: &Setup, what: &str) {
    for _ in 0..250 {
        if s.jobs().is_empty() && s.cluster.objects(WatchKind::Pod, NS).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: {:?}", s.jobs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pod_holds_no_secret_is_claimed_and_runs_one_task_at_the_new_head() {
    let s = setup().await;
    let backend = s.backend("k8s-warm");

    // Prepared: a Job labelled with its warm id (which is also its task id until claimed), whose
    // Pod takes stdin once and reads its environment from an annotation; nothing secret anywhere.
    let prepared = backend.prepare(warm_spec(&s)).await.unwrap();
    let warm_id = prepared.id.clone();
    let job = &s.jobs()[0];
    assert_eq!(job["metadata"]["labels"]["oz.dev/warm-id"], warm_id.as_str());
    assert_eq!(job["metadata"]["labels"]["oz.dev/task-id"], warm_id.as_str());
    let pod = &s.cluster.objects(WatchKind::Pod, NS)[0];
    let task = &pod["spec"]["containers"][0];
    assert_eq!((task["stdin"].clone(), task["stdinOnce"].clone()), (Value::Bool(true), Value::Bool(true)));
    assert_eq!(task["command"].as_array().unwrap()[1..4], ["agent", "warm", "--handoff-stdin"]);
    let environment = pod["metadata"]["annotations"]["oz.dev/warm-environment"].as_str().unwrap();
    assert!(environment.contains("acme") && environment.contains("setup.txt"), "{environment}");
    assert!(s.cluster.objects(WatchKind::Secret, NS).is_empty(), "a warm Pod has no secret input");
    assert!(!s.everything().contains("ozw_"), "a token before any task");

    // A push after the preparation; then the task: it runs in that Pod, after its setup, at the new HEAD.
    s.push("pushed-after-warming");
    let id = "warm-task-1";
    let script = "cat setup.txt; git -C app log -1 --format=%s; echo \"tokens in env: [$(env | grep -c oz[w]_)]\"";
    let mut task = runner_task(&s, id, script);
    task.timeout = Some(Duration::from_secs(120));
    let handle = backend.launch_prepared(prepared, task).await.unwrap();
    // Claimed by label: the task's id on the Job and its Pod, the warm id kept; the Job's deadline
    // is the task's, from now.
    let job = &s.jobs()[0];
    assert_eq!(job["metadata"]["labels"]["oz.dev/task-id"], id);
    assert_eq!(job["metadata"]["labels"]["oz.dev/warm-id"], warm_id.as_str());
    let deadline = job["spec"]["activeDeadlineSeconds"].as_i64().unwrap();
    assert!((120..130).contains(&deadline), "{deadline}");
    let pod = &s.cluster.objects(WatchKind::Pod, NS)[0];
    assert_eq!(pod["metadata"]["labels"]["oz.dev/task-id"], id);
    let (outcome, out) = run_out(handle).await;
    assert!(outcome.succeeded(), "{outcome:?}\n{out}");
    assert!(out.contains("warmed-at-"), "the setup's output, from before the task: {out}");
    assert!(out.contains("pushed-after-warming"), "the new HEAD: {out}");
    assert!(out.contains("warm sandbox: cloned and set up"), "{out}");
    assert!(out.contains("tokens in env: [0]"), "the harness holds no token: {out}");
    assert!(!out.contains(READY_LINE), "the preparation's log is not the task's output: {out}");
    let requests = s.cluster.requests();
    let attach = format!("GET /api/v1/namespaces/{NS}/pods/");
    assert!(requests.iter().any(|r| r.starts_with(&attach) && r.contains("/attach?")), "{requests:?}");
    assert!(requests.iter().any(|r| r.starts_with("PATCH /apis/batch/v1/namespaces/warm/jobs/")), "{requests:?}");
    assert!(!s.everything().contains(TOKEN), "the token reached a spec, a label or a request line");
    gone(&s, "the task's end removes its Job and Pod").await;

    // A task that asks for another sandbox is refused, and its warm Pod removed.
    let prepared = backend.prepare(warm_spec(&s)).await.unwrap();
    let mut other = runner_task(&s, "warm-task-2", "true");
    other.sandbox.workdir = Some("elsewhere".into());
    assert!(backend.launch_prepared(prepared, other).await.is_err());
    gone(&s, "a refused warm Pod goes").await;

    // A handoff its runner refuses (claimed, but never taken): an error only once the Pod is gone,
    // so that the task, started cold, is followed alone, with its own output and outcome.
    let prepared = backend.prepare(warm_spec(&s)).await.unwrap();
    let mut foreign = runner_task(&s, "warm-task-3", "true");
    foreign.argv = vec!["/bin/echo".into(), "not a runner".into()];
    let refused = backend.launch_prepared(prepared, foreign).await.unwrap_err();
    assert!(refused.message.contains("did not take the task"), "{}", refused.message);
    assert!(s.cluster.objects(WatchKind::Pod, NS).is_empty(), "the refusing Pod is gone before the error");
    let cold = backend.launch(runner_task(&s, "warm-task-3", "echo cold-run-output")).await.unwrap();
    let (ended, out) = run_out(cold).await;
    assert!(ended.succeeded(), "{ended:?}\n{out}");
    assert!(out.contains("cold-run-output") && !out.contains("warm sandbox"), "{out}");
    gone(&s, "the cold run's Job goes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_removes_a_waiting_warm_pod_and_reattaches_a_claimed_one() {
    let s = setup().await;
    let backend = s.backend("k8s-warm-restart");
    let waiting = backend.prepare(warm_spec(&s)).await.unwrap();
    let restarted = s.backend("k8s-warm-restart");
    assert!(restarted.recover().await.unwrap().is_empty(), "a waiting warm Pod is no one's task");
    gone(&s, "recover removes a waiting warm Pod").await;
    drop(waiting);

    // Claimed, and the worker killed before the handoff (the labels written, nothing sent): the
    // restarted worker reattaches it as the run's, and its runner, told there is no task, ends.
    let claimed = backend.prepare(warm_spec(&s)).await.unwrap();
    let job = s.jobs()[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let pod = s.cluster.objects(WatchKind::Pod, NS)[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let patch =
        serde_json::json!({"metadata": {"labels": {"oz.dev/task-id": "run-claimed", "oz.dev/execution-id": "e1"}}});
    let params = kube::api::PatchParams::default();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(s.client.clone(), NS);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(s.client.clone(), NS);
    jobs.patch(&job, &params, &kube::api::Patch::Merge(&patch)).await.unwrap();
    pods.patch(&pod, &params, &kube::api::Patch::Merge(&patch)).await.unwrap();
    std::mem::forget(claimed);
    let restarted = s.backend("k8s-warm-restart");
    let mut recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 1);
    let found = recovered.remove(0);
    assert_eq!((found.task_id.as_str(), found.execution_id.as_deref()), ("run-claimed", Some("e1")));
    let oz_core::backend::RecoveryAction::Reattached(handle) = found.action else { panic!("not reattached") };
    let (outcome, out) = run_out(handle).await;
    assert!(!outcome.succeeded(), "a runner that never got its task does not succeed: {outcome:?}");
    assert!(out.contains("oz agent warm"), "its runner says why it ended: {out}");
    gone(&s, "the ended claimed Pod is removed").await;
}

/// `package_cache_claim` and `git_mirror_claim`: a task's Pod mounts its environment's folder of
/// the caches claim at `OZ_CACHE_DIR` (kept after the task), and its environment's mirrors from
/// the mirrors claim, read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pod_mounts_its_environments_cache_folder_and_the_mirrors() {
    let s = setup().await;
    let backend = s.backend_with("k8s-caches", |c| {
        c.package_cache_claim = Some("oz-caches".into());
        c.git_mirror_claim = Some("oz-mirrors".into());
    });
    let script = "echo cached-by-$OZ_RUN_ID > \"$OZ_CACHE_DIR/entry\"; echo \"cache=$OZ_CACHE_DIR\"; \
                  echo \"mirror: $(cat /oz-cache/git/acme/app.git/HEAD)\"";
    let mut task =
        TaskSpec::new("cache-1", vec!["/bin/sh".into(), "-c".into(), script.into()]).env("OZ_RUN_ID", "cache-1");
    task.sandbox.cache = Some("env_1".into());
    // Its environment's mirror, as a subPath of the claim.
    task.sandbox.git_mirrors = vec![RepoRef::new("acme", "app").unwrap()];
    let (ended, out) = run_out(backend.launch(task).await.unwrap()).await;
    assert!(ended.succeeded(), "{ended:?}\n{out}");
    assert!(out.contains("mirror: ref: refs/heads/main"), "the mirror: {out}");
    let entry = std::fs::read_to_string(s.dir.path().join("caches/env_1/entry")).unwrap();
    assert_eq!(entry.trim(), "cached-by-cache-1", "in the environment's folder of the claim, after the task");
    gone(&s, "the task's Job goes; its cache stays").await;
}

/// The preflight Job reads, through `git_mirror_claim`, what the worker wrote in its `git_mirrors:`
/// folder: a claim that is not that folder stops the worker at start-up, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_finds_a_mirror_claim_that_is_not_the_workers_folder() {
    let s = setup().await;
    let backend = s.backend_with("k8s-mirror-check", |c| {
        c.git_mirror_claim = Some("oz-mirrors".into());
        c.git_mirror_check = Some("c0ffee".into());
    });
    let error = backend.preflight().await.unwrap_err().to_string();
    assert!(error.contains("does not hold the worker's git_mirrors folder"), "{error}");
    std::fs::create_dir_all(s.dir.path().join("mirrors/.oz-check")).unwrap();
    std::fs::write(s.dir.path().join("mirrors/.oz-check/mirror"), "c0ffee").unwrap();
    backend.preflight().await.unwrap();
}
