//! `oz agent run`, the real binary, end to end: local git repos, real processes, a loopback HTTP
//! control plane.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const OZ: &str = env!("CARGO_BIN_EXE_oz");

mod support;
use support::{git, git_http_server, git_identity};

/// A folder with bare repos at `<root>/git/<owner>/<repo>`, each with one commit.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new(repos: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for (owner, repo) in repos {
            let src = root.path().join("src").join(repo);
            std::fs::create_dir_all(&src).unwrap();
            git(&src, &["init", "-q", "-b", "main"]);
            std::fs::write(src.join("README.md"), format!("# {repo}\n")).unwrap();
            git(&src, &["add", "."]);
            git(&src, &["commit", "-q", "-m", "initial"]);
            let bare = root.path().join("git").join(owner).join(repo);
            std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
            let status = Command::new("git").args(["clone", "-q", "--bare"]).arg(&src).arg(&bare).status().unwrap();
            assert!(status.success());
            git(&bare, &["config", "uploadpack.allowFilter", "true"]);
        }
        Self { root }
    }
    fn base_url(&self) -> String {
        format!("file://{}", self.root.path().join("git").display())
    }
    fn workdir(&self) -> PathBuf {
        let w = self.root.path().join("work");
        std::fs::create_dir_all(&w).unwrap();
        w
    }
    fn env_file(&self, env: Value) -> PathBuf {
        let path = self.root.path().join("environment.json");
        std::fs::write(&path, env.to_string()).unwrap();
        path
    }
}

fn oz(args: &[&str], env: &[(&str, String)], cwd: &Path) -> Output {
    let mut cmd = Command::new(OZ);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", cwd)
        .env("TMPDIR", std::env::temp_dir());
    cmd.envs(git_identity());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not NDJSON: {l:?}: {e}")))
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect()
}

const AGENT: &str = r#"set -e
cd app
read -r first_line || true
echo "stdin: $first_line"
echo "env prompt: $OZ_PROMPT"
echo "setup saw: $(cat ../setup.txt)"
echo "$OZ_PROMPT" >> README.md
git add README.md
git commit -q -m "agent: apply the prompt"
echo done"#;

#[test]
fn unmanaged_run_clones_sets_up_runs_the_harness_and_reports_the_commit() {
    let f = Fixture::new(&[("acme", "app"), ("acme", "lib")]);
    let env_file = f.env_file(json!({
        "name": "sample",
        "github_repos": [{"owner": "acme", "repo": "app"}, {"owner": "acme", "repo": "lib"}],
        "setup_commands": ["echo \"setup ok $FROM_ENV\" > setup.txt"],
        "env_vars": {"FROM_ENV": "from-environment"}
    }));
    let work = f.workdir();
    let out = oz(
        &[
            "agent",
            "run",
            "--output-format",
            "ndjson",
            "--environment-file",
            env_file.to_str().unwrap(),
            "--git-base-url",
            &f.base_url(),
            "--prompt",
            "add a line",
            "--harness",
            "command",
            "--",
            "/bin/sh",
            "-c",
            AGENT,
        ],
        &[],
        &work,
    );
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let ev = events(&out);
    let k = kinds(&ev);
    assert_eq!(k.first().map(String::as_str), Some("started"));
    assert_eq!(k.last().map(String::as_str), Some("finished"));
    let pos = |name: &str| k.iter().position(|x| x == name).unwrap_or_else(|| panic!("no {name} in {k:?}"));
    assert!(pos("clone_finished") < pos("setup_started"));
    assert!(pos("setup_finished") < pos("harness_started"));
    assert_eq!(k.iter().filter(|x| *x == "clone_finished").count(), 2);
    let text: String = ev.iter().filter(|e| e["event"] == "output").map(|e| e["text"].as_str().unwrap()).collect();
    assert!(text.contains("stdin: add a line"), "{text}");
    assert!(text.contains("env prompt: add a line"));
    assert!(text.contains("setup saw: setup ok from-environment"));
    let commit = ev.iter().find(|e| e["event"] == "artifact").expect("a commit artifact");
    assert_eq!(commit["artifact_type"], "EXTERNAL_REFERENCE");
    assert_eq!(commit["reference_type"], "git_commit");
    assert_eq!(commit["title"], "agent: apply the prompt");
    assert_eq!(ev.last().unwrap()["state"], "SUCCEEDED");
    // The clone is partial (tree:0 filter) and the change is really committed.
    let log = Command::new("git").args(["log", "--format=%s"]).current_dir(work.join("app")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout), "agent: apply the prompt\ninitial\n");
    let filter = Command::new("git")
        .args(["config", "remote.origin.partialclonefilter"])
        .current_dir(work.join("app"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&filter.stdout).trim(), "tree:0");
}

#[test]
fn secrets_are_masked_and_credentials_reach_git_only_through_the_helper() {
    let f = Fixture::new(&[("acme", "app")]);
    let env_file = f.env_file(json!({"name": "s", "github_repos": [{"owner": "acme", "repo": "app"}]}));
    let work = f.workdir();
    let token = "ghs_abcdefghijklmnopqrstuvwxyz0123456789";
    let creds = json!([{"host": "github.com", "token": token}]).to_string();
    let script = r#"
printf 'protocol=https\nhost=github.com\n\n' | git credential fill > ../filled.txt
echo "printing a secret: $MY_SERVICE_TOKEN and again $(grep password ../filled.txt)"
env > ../harness-env.txt
echo "ps-visible args: $0 $*""#;
    let out = oz(
        &[
            "agent",
            "run",
            "--environment-file",
            env_file.to_str().unwrap(),
            "--git-base-url",
            &f.base_url(),
            "--harness",
            "command",
            "--output-format",
            "ndjson",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        &[("OZ_GIT_CREDENTIALS", creds.clone()), ("MY_SERVICE_TOKEN", "svc-secret-value-42".into())],
        &work,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let filled = std::fs::read_to_string(f.root.path().join("filled.txt")).unwrap();
    assert!(filled.contains(&format!("password={token}")), "the helper did not answer git: {filled}");
    assert!(filled.contains("username=x-access-token"));
    let all_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all_output.contains(token), "the git token was printed");
    assert!(!all_output.contains("svc-secret-value-42"), "a secret-named variable was printed");
    assert!(all_output.contains("[REDACTED]"));
    let harness_env = std::fs::read_to_string(f.root.path().join("harness-env.txt")).unwrap();
    assert!(!harness_env.contains("OZ_GIT_CREDENTIALS"), "the credentials variable reached the harness");
    assert!(!harness_env.contains(token));
    let config = std::fs::read_to_string(work.join("app/.git/config")).unwrap();
    assert!(!config.contains(token) && !config.contains("credential"), "{config}");
    // The socket is gone with the run.
    let socket_line = harness_env.lines().find(|l| l.starts_with("OZ_GIT_CREDENTIAL_SOCKET=")).unwrap();
    assert!(!Path::new(socket_line.split_once('=').unwrap().1).exists());
}

#[test]
fn unknown_flags_warn_and_the_run_continues() {
    let work = tempfile::tempdir().unwrap();
    let out = oz(
        &["agent", "run", "--brand-new-flag", "x", "--harness", "command", "--", "/bin/echo", "ok"],
        &[],
        work.path(),
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ignoring unknown flag \"--brand-new-flag x\""), "{stderr}");
    assert!(stderr.contains("run SUCCEEDED"), "{stderr}");
}

#[test]
fn failures_have_their_exit_status_and_a_clear_final_event() {
    let f = Fixture::new(&[("acme", "app")]);
    let work = f.workdir();
    let run = |env: Value, harness: &[&str]| {
        let file = f.env_file(env);
        let mut args = vec!["agent", "run", "--output-format", "ndjson", "--environment-file", file.to_str().unwrap()];
        let base = f.base_url();
        args.extend(["--git-base-url", base.as_str(), "--harness", "command", "--"]);
        args.extend(harness);
        oz(&args, &[], &work)
    };
    let missing = run(json!({"name": "m", "github_repos": [{"owner": "acme", "repo": "nope"}]}), &["true"]);
    assert_eq!(missing.status.code(), Some(3));
    let last = events(&missing).pop().unwrap();
    assert_eq!(last["state"], "FAILED");
    assert!(last["message"].as_str().unwrap().contains("acme/nope"), "{last}");

    let setup = run(json!({"name": "s", "setup_commands": ["exit 9"]}), &["true"]);
    assert_eq!(setup.status.code(), Some(4));
    assert!(
        events(&setup).pop().unwrap()["message"].as_str().unwrap().contains("setup_commands[0] exited with code 9")
    );

    let harness = run(json!({"name": "h"}), &["/bin/sh", "-c", "exit 5"]);
    assert_eq!(harness.status.code(), Some(5));
    assert_eq!(events(&harness).pop().unwrap()["state"], "FAILED");

    let hostile = run(json!({"name": "x", "github_repos": [{"owner": "acme", "repo": ".."}]}), &["true"]);
    assert_eq!(hostile.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&hostile.stdout);
    assert!(stderr.contains("github_repos[0].repo"), "{stderr}");

    let credentials_in_url = oz(
        &["agent", "run", "--git-base-url", "https://user:tok@github.com", "--harness", "command", "--", "true"],
        &[],
        &work,
    );
    assert_eq!(credentials_in_url.status.code(), Some(2));
}

#[test]
fn sigterm_cancels_the_harness_and_its_children() {
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
    let child = Command::new(OZ)
        .args(["agent", "run", "--output-format", "ndjson", "--harness", "command", "--", "/bin/sh", "-c", &script])
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(events(&out).pop().unwrap()["state"], "CANCELLED");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let alive = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(!alive, "the harness's child survived the cancellation");
}

/// A loopback control plane: serves the run's resolved configuration (`resolved`), records every
/// report with its `Authorization` header.
async fn control_plane(resolved: Value) -> (String, Arc<Mutex<Vec<(Option<String>, Value)>>>) {
    flaky_control_plane(resolved, 0).await
}

/// [`control_plane`], whose first `lost_answers` reports are recorded but answered 503, as when the
/// control plane stored a report and died before answering.
async fn flaky_control_plane(
    resolved: Value,
    lost_answers: usize,
) -> (String, Arc<Mutex<Vec<(Option<String>, Value)>>>) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    type Reports = Arc<Mutex<Vec<(Option<String>, Value)>>>;
    let reports: Reports = Arc::default();
    let app = axum::Router::new()
        .route("/api/v1/agent/runs/{id}/resolved", get(move || async move { axum::Json(resolved) }))
        .route(
            "/api/v1/agent/runs/{id}/report",
            post(
                move |State(reports): State<Reports>,
                      UrlPath(id): UrlPath<String>,
                      headers: HeaderMap,
                      axum::Json(body): axum::Json<Value>| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let mut body = body;
                    body["_run"] = json!(id);
                    let mut reports = reports.lock().unwrap();
                    reports.push((auth, body));
                    if reports.len() <= lost_answers {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(reports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_run_fetches_its_environment_and_prompt_and_reports_to_the_control_plane() {
    const TOKEN: &str = "oz_wl_0123456789abcdefghijklmnop";
    let f = Fixture::new(&[("acme", "app")]);
    let (url, reports) = control_plane(json!({
        "prompt": "prompt from the server",
        "environment": {"name": "remote", "github_repos": [{"owner": "acme", "repo": "app"}], "setup_commands": []},
    }))
    .await;
    let work = f.workdir();
    let base = f.base_url();
    let out = tokio::task::spawn_blocking(move || {
        oz(
            &[
                "agent",
                "run",
                "--task-id",
                "run-42",
                "--sandboxed",
                "--server-root-url",
                &url,
                "--environment",
                "env-1",
                "--git-base-url",
                &base,
                "--harness",
                "command",
                "--",
                "/bin/sh",
                "-c",
                "echo \"prompt=$OZ_PROMPT token=$OZ_WORKLOAD_TOKEN\"; ls app",
            ],
            &[("OZ_WORKLOAD_TOKEN", TOKEN.into())],
            &work,
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("prompt=prompt from the server token=\n"),
        "the token must not reach the harness: {stdout}"
    );
    assert!(stdout.contains("README.md"), "the repo from the server's environment was cloned: {stdout}");
    let reports = reports.lock().unwrap().clone();
    let kinds: Vec<&str> = reports.iter().map(|(_, b)| b["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert!(
        kinds.contains(&"clone_finished") && kinds.contains(&"harness_started") && kinds.contains(&"output"),
        "{kinds:?}"
    );
    for (auth, body) in &reports {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(body["_run"], "run-42");
        assert!(!body.to_string().contains(TOKEN));
    }
    assert_eq!(reports.last().unwrap().1["state"], "SUCCEEDED");
}

const PUSH_TOKEN: &str = "ghs_push_token_abcdef0123456789";
const PUSH_WORKLOAD_TOKEN: &str = "ozw_push_workload_token_0123456789";
const PUSH_SECRET: &str = "sekrit-api-value-4242";

/// The harness of the push test: records its environment, its parent's (the runner's) and what
/// its parent's stdin still holds, then
/// commits and pushes.
const PUSHING_AGENT: &str = r#"set -e
env > harness-env.txt
tr '\0' '\n' < /proc/$PPID/environ > runner-environ.txt
tr '\0' ' ' < /proc/$PPID/cmdline > runner-cmdline.txt
cat /proc/$PPID/fd/0 > runner-stdin.txt 2>/dev/null || true
cd app
echo "by the agent" >> README.md
git commit -q -am "agent: change"
git push -q origin HEAD:refs/heads/agent-change
echo "pushed with API_SECRET=$API_SECRET""#;

/// A managed run whose workload token arrives one way or another (`delivery`), whose git token
/// comes from the control plane: neither is in the harness's environment or in the runner's
/// `/proc/<pid>/environ`, yet the harness's `git push` to an authenticated smart-HTTP server works.
async fn push_through_the_helper(delivery: &str) {
    let f = Fixture::new(&[("acme", "app")]);
    let base = git_http_server(f.root.path().join("git"), "x-access-token", PUSH_TOKEN).await;
    let host = base.trim_start_matches("http://").trim_end_matches("/git").to_owned();
    let (url, reports) = control_plane(json!({
        "prompt": "push something",
        "environment": {"name": "remote", "github_repos": [{"owner": "acme", "repo": "app"}],
            "setup_commands": ["env > setup-env.txt"]},
        "secret_env": {"API_SECRET": PUSH_SECRET},
        "git_credentials": [{"host": host, "username": "x-access-token", "token": PUSH_TOKEN}],
    }))
    .await;
    let work = f.workdir();
    let w = work.clone();
    let on_stdin = delivery == "stdin";
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(OZ);
        cmd.args([
            "agent",
            "run",
            "--task-id",
            "run-push",
            "--sandboxed",
            "--server-root-url",
            &url,
            "--environment",
            "env-1",
            "--git-base-url",
            &base,
            "--harness",
            "command",
            "--",
            "/bin/sh",
            "-c",
            PUSHING_AGENT,
        ])
        .current_dir(&w)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &w)
        .envs(git_identity())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if on_stdin {
            cmd.env("OZ_SECRET_INPUT", "stdin");
        } else {
            // An older worker: the token in the environment; the runner re-executes without it.
            cmd.env("OZ_WORKLOAD_TOKEN", PUSH_WORKLOAD_TOKEN);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if on_stdin {
            std::io::Write::write_all(&mut stdin, PUSH_WORKLOAD_TOKEN.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pushed with API_SECRET="), "{stdout}");
    for file in ["harness-env.txt", "runner-environ.txt", "setup-env.txt"] {
        let text = std::fs::read_to_string(work.join(file)).unwrap();
        assert!(!text.is_empty(), "{file} is empty");
        for secret in [PUSH_TOKEN, PUSH_WORKLOAD_TOKEN] {
            assert!(!text.contains(secret), "{delivery}: {file} holds a token:\n{text}");
        }
    }
    // What the runner read its tokens from (stdin, or the handover's memfd) is not left behind.
    let stdin = std::fs::read_to_string(work.join("runner-stdin.txt")).unwrap();
    assert!(
        !stdin.contains(PUSH_TOKEN) && !stdin.contains(PUSH_WORKLOAD_TOKEN),
        "{delivery}: the runner's stdin: {stdin}"
    );
    let parent = std::fs::read_to_string(work.join("runner-cmdline.txt")).unwrap();
    assert!(parent.contains("agent run --task-id run-push"), "the harness's parent is not the runner: {parent}");
    // The team secret reaches the setup commands and the harness, as asked.
    assert!(std::fs::read_to_string(work.join("harness-env.txt")).unwrap().contains(PUSH_SECRET));
    let pushed = Command::new("git")
        .args(["log", "-1", "--format=%s", "agent-change"])
        .current_dir(f.root.path().join("git/acme/app"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pushed.stdout).trim(), "agent: change", "the push did not land");
    let config = std::fs::read_to_string(work.join("app/.git/config")).unwrap();
    assert!(!config.contains(PUSH_TOKEN), "{config}");
    let reports = reports.lock().unwrap().clone();
    assert!(reports.iter().any(|(_, b)| b["event"] == "finished"));
    for (auth, body) in &reports {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {PUSH_WORKLOAD_TOKEN}").as_str()));
        let text = body.to_string();
        for secret in [PUSH_TOKEN, PUSH_WORKLOAD_TOKEN, PUSH_SECRET] {
            assert!(!text.contains(secret), "a report holds a secret: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_on_stdin_stay_out_of_every_environment_yet_the_agent_can_push() {
    push_through_the_helper("stdin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_environment_is_taken_out_by_re_executing_and_the_agent_can_push() {
    push_through_the_helper("environment").await;
}

/// Reports whose answers were lost are sent again with the same sequence number until taken: the
/// control plane ends up with every report, numbered from 1 with no gap, the last one `finished`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_resent_until_taken_and_numbered_without_gaps() {
    let f = Fixture::new(&[("acme", "app")]);
    let (url, reports) = flaky_control_plane(
        json!({"prompt": "p", "environment": {"name": "e", "github_repos": [{"owner": "acme", "repo": "app"}]}}),
        6,
    )
    .await;
    let work = f.workdir();
    let base = f.base_url();
    let out = tokio::task::spawn_blocking(move || {
        oz(
            &[
                "agent",
                "run",
                "--task-id",
                "run-7",
                "--server-root-url",
                &url,
                "--environment",
                "e",
                "--git-base-url",
                &base,
                "--harness",
                "command",
                "--",
                "/bin/sh",
                "-c",
                "echo one; echo two",
            ],
            &[("OZ_WORKLOAD_TOKEN", "ozw_resend_token_0123456789".into())],
            &work,
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports = reports.lock().unwrap().clone();
    let seqs: Vec<u64> = reports.iter().map(|(_, b)| b["seq"].as_u64().expect("numbered")).collect();
    let mut distinct = seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let expected: Vec<u64> = (1..=distinct.len() as u64).collect();
    assert_eq!(distinct, expected, "numbered from 1 without gaps: {seqs:?}");
    assert_eq!(seqs[..6], [1, 1, 1, 1, 1, 1], "one report at a time, the same until taken: {seqs:?}");
    let last = reports.iter().find(|(_, b)| b["seq"].as_u64() == distinct.last().copied()).unwrap();
    assert_eq!(last.1["event"], "finished");
    assert!(reports.iter().any(|(_, b)| b["event"] == "output" && b["text"].as_str().unwrap_or("").contains("two")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_control_plane_does_not_fail_the_run() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        oz(
            &[
                "agent",
                "run",
                "--task-id",
                "r",
                "--server-root-url",
                "http://127.0.0.1:9",
                "--prompt",
                "p",
                "--harness",
                "command",
                "--",
                "/bin/echo",
                "still ran",
            ],
            &[("OZ_WORKLOAD_TOKEN", "tok-unreachable-123".into()), ("OZ_REPORT_FLUSH_SECS", "1".into())],
            &dir,
        )
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still ran\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reporting to the control plane failed"), "{stderr}");
    assert!(!stderr.contains("tok-unreachable-123"));
}

const HTTP_TOKEN: &str = "ghs_http_token_0123456789abcdef";

async fn run_http_clone(extra_env: Vec<(&'static str, String)>, with_credentials: bool) -> (Output, Fixture, PathBuf) {
    let f = Fixture::new(&[("acme", "app")]);
    let base = git_http_server(f.root.path().join("git"), "x-access-token", HTTP_TOKEN).await;
    let host = base.trim_start_matches("http://").trim_end_matches("/git").to_owned();
    let env_file = f.env_file(json!({"name": "h", "github_repos": [{"owner": "acme", "repo": "app"}]}));
    let work = f.workdir();
    let mut env = extra_env;
    if with_credentials {
        env.push(("OZ_GIT_CREDENTIALS", json!([{"host": host, "token": HTTP_TOKEN}]).to_string()));
    }
    let w = work.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(OZ);
        cmd.args([
            "agent",
            "run",
            "--output-format",
            "ndjson",
            "--environment-file",
            env_file.to_str().unwrap(),
            "--git-base-url",
            &base,
            "--harness",
            "command",
            "--",
            "/bin/sh",
            "-c",
            "echo \"$(/bin/cat app/README.md)\"",
        ])
        .current_dir(&w)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &w)
        .envs(git_identity());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    })
    .await
    .unwrap();
    (out, f, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_over_authenticated_http_through_the_credential_helper() {
    let (out, _f, work) = run_http_clone(vec![], true).await;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("# app"));
    let config = std::fs::read_to_string(work.join("app/.git/config")).unwrap();
    assert!(!config.contains(HTTP_TOKEN) && !config.contains("x-access-token@"), "{config}");
    // The server really requires the credential: without it the clone fails.
    let (denied, _f, _) = run_http_clone(vec![], false).await;
    assert_eq!(denied.status.code(), Some(3), "{}", String::from_utf8_lossy(&denied.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_with_the_builtin_git_when_there_is_no_git_binary() {
    let empty = tempfile::tempdir().unwrap();
    let no_git_path = vec![("PATH", empty.path().display().to_string())];
    let (out, _f, work) = run_http_clone(no_git_path.clone(), true).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# app"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in git"));
    assert!(work.join("app/.git/shallow").exists(), "the built-in clone is shallow");
    let config = std::fs::read_to_string(work.join("app/.git/config")).unwrap();
    assert!(!config.contains(HTTP_TOKEN), "{config}");
    let (denied, _f, _) = run_http_clone(no_git_path, false).await;
    assert_eq!(denied.status.code(), Some(3));
    let last = events(&denied).pop().unwrap();
    assert_eq!(last["state"], "FAILED");
}

/// A sandbox whose worker died before handing the token over: stdin empty, or open with nobody left
/// to write it. Either way the runner ends at once (or after the wait) with the exit status that
/// tells a restarted worker to hand the task back, having run nothing.
#[test]
fn a_runner_that_never_gets_its_token_exits_75_without_running_anything() {
    let fixture = Fixture::new(&[]);
    let w = fixture.workdir();
    let marker = w.join("ran");
    let agent = format!("touch {}", marker.display());
    let args =
        ["agent", "run", "--task-id", "run-lost", "--server-root-url", "http://127.0.0.1:9", "--harness", "command"];
    let run = |stdin: Stdio| {
        let mut cmd = Command::new(OZ);
        cmd.args(args)
            .args(["--", "/bin/sh", "-c", &agent])
            .current_dir(&w)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &w)
            .env("OZ_SECRET_INPUT", "stdin")
            .env("OZ_SECRET_INPUT_WAIT_SECS", "1")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // Empty stdin.
    let out = run(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never got its run's token"));
    // Stdin open, and nobody writes or closes it: the wait runs out.
    let mut child = run(Stdio::piped()).spawn().unwrap();
    let held_open = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(held_open);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("no secret input within 1s"), "{stderr}");
    assert!(!marker.exists(), "the agent must not have run");
}

/// `oz agent warm`: the repo is cloned and the setup has run before any task exists, with no token
/// anywhere; the one handoff makes it a managed run that starts from that work, at the remote's new
/// HEAD (pushed after the preparation), with the preparation's events first in its history. The
/// socket takes no second task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_runner_prepares_without_a_task_then_runs_the_one_handed_to_it() {
    use std::io::{BufRead, Write};
    const TOKEN: &str = "ozw_warm_token_0123456789abcdef";
    let f = Fixture::new(&[("acme", "app")]);
    let environment = json!({"name": "warm", "github_repos": [{"owner": "acme", "repo": "app"}],
        "setup_commands": ["echo prepared-by-setup > setup-output.txt; echo setup says hi"]});
    let env_file = f.env_file(environment.clone());
    let (url, reports) = control_plane(json!({"prompt": "do it", "environment": environment})).await;
    let work = f.workdir();
    let private = f.root.path().join("warm");
    std::fs::create_dir_all(&private).unwrap();
    let socket = private.join("handoff.sock");
    let base = f.base_url();
    let mut warm = Command::new(OZ)
        .args(["agent", "warm", "--socket"])
        .arg(&socket)
        .arg("--environment-file")
        .arg(&env_file)
        .args(["--git-base-url", &base, "--workdir"])
        .arg(&work)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &work)
        .envs(git_identity())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {:?}",
            std::fs::read_to_string(private.join("prepare.log"))
        );
        assert!(warm.try_wait().unwrap().is_none(), "{:?}", std::fs::read_to_string(private.join("prepare.log")));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Prepared: cloned, set up, and nothing of any run in it.
    assert!(work.join("app/README.md").is_file());
    assert_eq!(std::fs::read_to_string(work.join("setup-output.txt")).unwrap(), "prepared-by-setup\n");
    let environ = std::fs::read(format!("/proc/{}/environ", warm.id())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("OZ_WORKLOAD_TOKEN"));
    assert!(reports.lock().unwrap().is_empty(), "no report before the task");
    // A push after the preparation: the task must see it.
    let src = f.root.path().join("src/app");
    std::fs::write(src.join("NEW.md"), "new\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "pushed after warming"]);
    git(&src, &["push", "-q", f.root.path().join("git/acme/app").to_str().unwrap(), "HEAD:main"]);

    let handoff = oz_core::warm::Handoff {
        argv: [
            "oz",
            "agent",
            "run",
            "--task-id",
            "run-warm",
            "--sandboxed",
            "--server-root-url",
            &url,
            "--environment",
            "env-1",
            "--git-base-url",
            &base,
            "--harness",
            "command",
            "--",
            "/bin/sh",
            "-c",
            "cat setup-output.txt; git -C app log -1 --format=%s; echo token=$OZ_WORKLOAD_TOKEN; tr '\\0' '\\n' < /proc/$PPID/environ > ../runner-environ.txt",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("TASK_ID".into(), "run-warm".into())],
        secret_input: Some(oz_core::task::SecretInput::new(TOKEN)),
        receipt: Some("receipt-7f3a".into()),
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(format!("{}\n", serde_json::to_string(&handoff).unwrap()).as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).unwrap();
    let answer: oz_core::warm::HandoffAnswer = serde_json::from_str(&answer).unwrap();
    assert!(answer.accepted, "{answer:?}");
    // One task per sandbox.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err(), "a second task could be handed over");

    let out = tokio::task::spawn_blocking(move || warm.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("prepared-by-setup"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l == "oz agent warm: taken receipt-7f3a"), "the receipt, once taken: {stderr}");
    assert!(stdout.contains("pushed after warming"), "the task must see the new HEAD: {stdout}");
    assert!(stdout.contains("token=\n"), "the token must not reach the harness: {stdout}");
    // Nor the warm runner's own environment (it came over the socket), nor its preparation's log.
    let runner_environ = std::fs::read_to_string(f.root.path().join("runner-environ.txt")).unwrap();
    assert!(runner_environ.contains("PATH="), "{runner_environ}");
    assert!(!runner_environ.contains(TOKEN), "the token is in the warm runner's environ");
    let prepare_log = std::fs::read_to_string(private.join("prepare.log")).unwrap();
    assert!(prepare_log.contains("ready; waiting for the task"), "{prepare_log}");
    assert!(!prepare_log.contains(TOKEN), "the token is in prepare.log");
    let reports = reports.lock().unwrap().clone();
    let kinds: Vec<&str> = reports.iter().map(|(_, b)| b["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    let position = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k}: {kinds:?}"));
    assert!(position("clone_finished") < position("setup_finished"), "{kinds:?}");
    assert!(position("setup_finished") < position("harness_started"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "setup_started").count(), 1, "the setup ran once: {kinds:?}");
    assert!(
        reports.iter().any(|(_, b)| b.to_string().contains("setup says hi")),
        "the setup's output is in the history"
    );
    assert!(
        reports.iter().any(|(_, b)| b.to_string().contains("moved since the sandbox was prepared")),
        "{reports:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (auth, body) in &reports {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert!(!body.to_string().contains(TOKEN));
    }
    assert_eq!(reports.last().unwrap().1["state"], "SUCCEEDED");
}
