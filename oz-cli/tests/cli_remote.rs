//! The API client commands, run as a user would: the `oz` binary against a local stack over real
//! sockets (control plane on SQLite, a worker on the Direct backend, `oz` as the agent's runner).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use oz_cli::local::LocalStack;
use oz_core::run::RunState;

const OZ: &str = env!("CARGO_BIN_EXE_oz");

struct Cli {
    _dir: tempfile::TempDir,
    stack: LocalStack,
}

impl Cli {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stack = oz_cli::local::start_with_runner(dir.path(), "127.0.0.1:0", OZ.into()).await.unwrap();
        Cli { _dir: dir, stack }
    }

    async fn oz(&self, args: &[&str]) -> Output {
        self.oz_with_key(args, &self.stack.api_key).await
    }

    async fn oz_with_key(&self, args: &[&str], key: &str) -> Output {
        tokio::process::Command::new(OZ)
            .args(args)
            .env("WARP_API_KEY", key)
            .env("OZ_API_BASE_URL", format!("{}/api/v1", self.stack.server.url()))
            .output()
            .await
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "oz failed: {}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// An environment whose command harness runs `script` with /bin/sh.
async fn environment(cli: &Cli, script: &str) -> String {
    let command = serde_json::to_string(&["/bin/sh", "-c", script]).unwrap();
    let out = cli
        .oz(&[
            "environment",
            "create",
            "--name",
            "cli-test",
            "--env",
            &format!("OZ_HARNESS_COMMAND={command}"),
            "--setup-command",
            "true",
            "--output-format",
            "json",
        ])
        .await;
    json(&out)["uid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cloud_follows_a_run_to_success_and_run_commands_show_it() {
    let cli = Cli::start().await;
    let env = environment(&cli, "echo agent-was-here; echo done > result.txt").await;

    let out = cli
        .oz(&["agent", "run-cloud", "--prompt", "say hi", "-e", &env, "--host", "local", "--harness", "command"])
        .await;
    let text = stdout(&out);
    assert!(out.status.success(), "run-cloud failed: {text}{}", stderr(&out));
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("run "), "the run id comes first: {text}");
    let run_id = first.trim_start_matches("run ").to_owned();
    assert!(text.contains("| agent-was-here"), "the agent's output is followed live: {text}");
    assert!(text.contains("CLAIMED"), "state changes are shown: {text}");
    assert!(text.trim_end().ends_with(&format!("run {run_id} ended SUCCEEDED")) || text.contains("ended SUCCEEDED"));

    // The same run through `oz run`: JSON, NDJSON and text.
    let got = json(&cli.oz(&["run", "get", &run_id, "--output-format", "json"]).await);
    assert_eq!(got["state"], "SUCCEEDED");
    assert_eq!(got["prompt"], "say hi");
    let list = cli.oz(&["run", "list", "--output-format", "ndjson"]).await;
    let lines: Vec<serde_json::Value> =
        stdout(&list).lines().map(|l| serde_json::from_str(l).expect("one object per line")).collect();
    assert!(lines.iter().any(|r| r["run_id"] == run_id.as_str()));
    let table = stdout(&cli.oz(&["run", "list", "--state", "SUCCEEDED"]).await);
    assert!(table.starts_with("RUN"), "a table with headers: {table}");
    assert!(table.contains(&run_id));
    let none = stdout(&cli.oz(&["run", "list", "--state", "FAILED"]).await);
    assert_eq!(none.trim(), "(none)");

    // Watching a finished run replays its events and exits with its outcome.
    let watch = cli.oz(&["run", "watch", &run_id, "--output-format", "ndjson"]).await;
    assert!(watch.status.success());
    let events: Vec<serde_json::Value> = stdout(&watch).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["event"]["event"] == "harness_started"), "{events:?}");
    assert!(events.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()), "events in order");
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_exits_3_and_no_follow_prints_only_the_id() {
    let cli = Cli::start().await;
    let env = environment(&cli, "echo broken >&2; exit 7").await;
    let out = cli.oz(&["agent", "run-cloud", "-p", "fail", "-e", &env, "--host", "local"]).await;
    assert_eq!(out.status.code(), Some(3), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ended FAILED"), "{}", stdout(&out));

    let quiet = cli.oz(&["agent", "run-cloud", "-p", "fail", "-e", &env, "--host", "local", "--no-follow"]).await;
    assert!(quiet.status.success());
    let id = stdout(&quiet).trim().to_owned();
    assert!(!id.is_empty() && !id.contains(' '), "only the id: {id:?}");
    let got = json(&cli.oz(&["run", "get", &id, "--output-format", "json"]).await);
    assert_eq!(got["run_id"], id.as_str());
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_terminal_ends_the_followed_run() {
    let cli = Cli::start().await;
    let env = environment(&cli, "echo started; sleep 60").await;
    let key = cli.stack.api_key.clone();
    let base = format!("{}/api/v1", cli.stack.server.url());
    let follower = tokio::process::Command::new(OZ)
        .args(["agent", "run-cloud", "-p", "wait", "-e", &env, "--host", "local", "--output-format", "ndjson"])
        .env("WARP_API_KEY", &key)
        .env("OZ_API_BASE_URL", &base)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the agent is running, then cancel through the CLI.
    let client = cli.stack.client().unwrap();
    let run_id = loop {
        let runs = client.runs().list().send().await.unwrap().runs;
        if let Some(r) = runs.iter().find(|r| r.state == oz_core::run::RunState::InProgress) {
            break r.run_id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let cancel = cli.oz(&["run", "cancel", &run_id]).await;
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(stdout(&cancel).contains("cancellation of run"));
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), follower.wait_with_output())
        .await
        .expect("the follower ends when the run does")
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let last: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"]["state"], "CANCELLED", "{}", stdout(&out));
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_environments_and_integrations_round_trip() {
    let cli = Cli::start().await;
    let env = environment(&cli, "true").await;
    let envs = json(&cli.oz(&["environment", "list", "--output-format", "json"]).await);
    assert_eq!(envs.as_array().unwrap().len(), 1);
    let updated = json(
        &cli.oz(&[
            "environment",
            "update",
            &env,
            "--description",
            "now described",
            "--repo",
            "acme/app",
            "--output-format",
            "json",
        ])
        .await,
    );
    assert_eq!(updated["config"]["description"], "now described");
    assert_eq!(updated["config"]["github_repos"][0]["repo"], "app");
    assert!(updated["config"]["env_vars"]["OZ_HARNESS_COMMAND"].is_string(), "untouched fields stay");

    let created = json(
        &cli.oz(&[
            "schedule",
            "create",
            "--name",
            "nightly",
            "--cron",
            "0 3 * * *",
            "-p",
            "tidy up",
            "-e",
            &env,
            "--timezone",
            "Europe/Paris",
            "--output-format",
            "json",
        ])
        .await,
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["enabled"], true);
    assert_eq!(created["timezone"], "Europe/Paris");
    let paused = json(&cli.oz(&["schedule", "pause", &id, "--output-format", "json"]).await);
    assert_eq!(paused["enabled"], false);
    let renamed = json(&cli.oz(&["schedule", "update", &id, "--cron", "15 4 * * 1", "--output-format", "json"]).await);
    assert_eq!(renamed["cron_schedule"], "15 4 * * 1");
    assert_eq!(renamed["name"], "nightly", "untouched fields stay");
    assert_eq!(renamed["enabled"], false, "an update does not unpause");
    let resumed = json(&cli.oz(&["schedule", "unpause", &id, "--output-format", "json"]).await);
    assert_eq!(resumed["enabled"], true);
    let text = stdout(&cli.oz(&["schedule", "list"]).await);
    assert!(text.contains("nightly") && text.contains("15 4 * * 1"), "{text}");
    assert!(cli.oz(&["schedule", "delete", &id]).await.status.success());
    let gone = cli.oz(&["schedule", "get", &id]).await;
    assert_eq!(gone.status.code(), Some(1));

    let hook = cli.oz(&["integration", "create", "--name", "ci", "-p", "look at this", "--host", "local"]).await;
    let text = stdout(&hook);
    assert!(text.contains("webhook") && text.contains("secret"), "the secret is shown once: {text}");
    let items = json(&cli.oz(&["integration", "list", "--output-format", "json"]).await);
    let hook_id = items[0]["id"].as_str().unwrap().to_owned();
    assert!(items[0].get("secret").is_none(), "lists do not show the secret: {items}");
    let off = json(&cli.oz(&["integration", "update", &hook_id, "--disable", "--output-format", "json"]).await);
    assert_eq!(off["enabled"], false);
    assert!(cli.oz(&["integration", "delete", &hook_id]).await.status.success());
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_the_problem_and_never_show_the_key() {
    let cli = Cli::start().await;
    let missing = cli.oz(&["run", "get", "no-such-run"]).await;
    assert_eq!(missing.status.code(), Some(1));
    let err = stderr(&missing);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("oz: error: Not Found (resource_not_found, HTTP 404): "), "{err}");
    assert!(stdout(&missing).is_empty());

    let foreign_key = "oz_live_this_key_belongs_to_nobody_0123456789";
    let refused = cli.oz_with_key(&["run", "list"], foreign_key).await;
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(!err.contains(foreign_key), "the key never appears: {err}");

    let bad = cli.oz(&["schedule", "create", "--name", "x", "--cron", "not a cron", "-p", "p"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("cron"), "the detail names the field: {}", stderr(&bad));

    let usage = cli.oz(&["environment", "create", "--name", "x", "--repo", "../escape"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(stderr(&usage).contains("--repo"));

    let unreachable = tokio::process::Command::new(OZ)
        .args(["run", "list", "--api-base-url", "http://127.0.0.1:9/api/v1"])
        .env("WARP_API_KEY", "k")
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(stderr(&unreachable).starts_with("oz: error: could not reach the API"), "{}", stderr(&unreachable));

    let no_key = tokio::process::Command::new(OZ)
        .args(["run", "list", "--api-base-url", &cli.stack.server.url()])
        .env_remove("WARP_API_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(no_key.status.code(), Some(1));
    assert!(stderr(&no_key).contains("WARP_API_KEY"), "{}", stderr(&no_key));
    cli.stack.stop().await;
}

/// Starts a run of environment `env` without following it; its id once the agent has said `text`.
async fn start_and_wait_for(cli: &Cli, env: &str, text: &str) -> String {
    let started = cli.oz(&["agent", "run-cloud", "-p", "live", "-e", env, "--host", "local", "--no-follow"]).await;
    assert!(started.status.success(), "{}", stderr(&started));
    let run_id = stdout(&started).trim().to_owned();
    let client = cli.stack.client().unwrap();
    for _ in 0..400 {
        let transcript = client.runs().transcript(&run_id).await.unwrap();
        if transcript.iter().any(|e| e.to_string().contains(text)) {
            return run_id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the agent of run {run_id} never said {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_shows_a_running_agents_terminal_from_its_screen_to_its_end() {
    let cli = Cli::start().await;
    let gate = cli._dir.path().join("go-on");
    let script = format!(
        "echo attach-one; n=0; while [ ! -e {gate} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; echo attach-two",
        gate = gate.display()
    );
    let env = environment(&cli, &script).await;
    // Once the agent's first line is out, attach: it is drawn on the screen, not replayed live.
    let run_id = start_and_wait_for(&cli, &env, "attach-one").await;
    let attached = tokio::process::Command::new(OZ)
        .args(["run", "attach", &run_id])
        .env("WARP_API_KEY", &cli.stack.api_key)
        .env("OZ_API_BASE_URL", format!("{}/api/v1", cli.stack.server.url()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if cli.stack.server.state().sessions.watched() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(cli.stack.server.state().sessions.watched(), 1, "the attach joined the run's session");
    std::fs::write(&gate, b"").unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), attached.wait_with_output())
        .await
        .expect("attach ends with the run")
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let shown = stdout(&out);
    let one = shown.find("attach-one").expect("the screen drawn on attaching");
    let two = shown.find("attach-two").expect("the live output");
    assert!(one < two, "{shown:?}");
    assert!(shown.starts_with("\x1b["), "the screen is drawn with escape codes: {shown:?}");
    assert!(stderr(&out).contains(&format!("run {run_id} ended SUCCEEDED")), "{}", stderr(&out));

    // A run that is not there: the API's answer, and a failing status.
    let missing = cli.oz(&["run", "attach", "no-such-run"]).await;
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no-such-run"), "{}", stderr(&missing));
    cli.stack.stop().await;
}

/// What is typed into `oz run attach` (here from a pipe) reaches the agent's terminal: the agent
/// asks on `/dev/tty` and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_typed_into_attach_answer_the_agent_on_its_terminal() {
    use tokio::io::AsyncWriteExt;
    let cli = Cli::start().await;
    let script = "printf 'your name? '; IFS= read -r name < /dev/tty; echo \"hi $name\"";
    let env = environment(&cli, script).await;
    let run_id = start_and_wait_for(&cli, &env, "your name?").await;
    let mut attached = tokio::process::Command::new(OZ)
        .args(["run", "attach", &run_id])
        .env("WARP_API_KEY", &cli.stack.api_key)
        .env("OZ_API_BASE_URL", format!("{}/api/v1", cli.stack.server.url()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = attached.stdin.take().unwrap();
    keys.write_all(b"Ada\r").await.unwrap();
    drop(keys);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), attached.wait_with_output())
        .await
        .expect("attach ends with the run")
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("hi Ada"), "{:?}", stdout(&out));
    let (status, events) = {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/agent/runs/{run_id}/transcript/content", cli.stack.server.url()))
            .bearer_auth(&cli.stack.api_key)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    let typed: Vec<_> = events.as_array().unwrap().iter().filter(|e| e["event"]["event"] == "input").collect();
    assert_eq!(typed.len(), 1, "{typed:?}");
    assert_eq!(typed[0]["event"]["data"], "Ada\r");
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_stops_the_agents_current_step_and_the_run_goes_on() {
    let cli = Cli::start().await;
    // The agent's "step" is a long wait; it handles SIGINT (as an interactive agent handles Ctrl-C)
    // by giving up on the step and going on to the next.
    let env = environment(
        &cli,
        r#"trap 'echo "step one interrupted"' INT; echo step-one; sleep 60 & wait $!; echo "step two, after the interrupt""#,
    )
    .await;
    let run_id = start_and_wait_for(&cli, &env, "step-one").await;
    let started = std::time::Instant::now();
    let sent = cli.oz(&["run", "interrupt", &run_id]).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert_eq!(stdout(&sent).trim(), format!("run {run_id}'s agent was sent an interrupt"));
    let watch = tokio::time::timeout(std::time::Duration::from_secs(60), cli.oz(&["run", "watch", &run_id]))
        .await
        .expect("the run ends");
    assert!(
        watch.status.success(),
        "the interrupted agent went on and succeeded: {}{}",
        stdout(&watch),
        stderr(&watch)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(50), "the step did not run its 60 s");
    let transcript = cli.stack.client().unwrap().runs().transcript(&run_id).await.unwrap();
    let kinds: Vec<&str> = transcript.iter().filter_map(|e| e["event"]["event"].as_str()).collect();
    assert!(kinds.contains(&"interrupt"), "the interrupt is in the run's history: {kinds:?}");
    let said: String = transcript
        .iter()
        .filter(|e| e["event"]["event"] == "output")
        .filter_map(|e| e["event"]["text"].as_str())
        .collect();
    let interrupted = said.find("step one interrupted").unwrap_or_else(|| panic!("{said:?}"));
    assert!(said[interrupted..].contains("step two, after the interrupt"), "{said:?}");

    // Nothing to interrupt once the run ended.
    let again = cli.oz(&["run", "interrupt", &run_id]).await;
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("already ended"), "{}", stderr(&again));
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followup_reaches_a_running_command_harness() {
    let cli = Cli::start().await;
    // The agent waits for its first follow-up and says what it got.
    let env = environment(
        &cli,
        r#"echo waiting; n=0; while ! grep -q . "$OZ_FOLLOWUP_FILE" && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; echo "got $(head -n 1 "$OZ_FOLLOWUP_FILE")""#,
    )
    .await;
    let run_id = start_and_wait_for(&cli, &env, "waiting").await;
    let client = cli.stack.client().unwrap();

    let sent = cli.oz(&["run", "followup", &run_id, "now add \"tests\" too"]).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert_eq!(stdout(&sent).trim(), format!("the follow-up was sent to run {run_id}"));
    let watch = tokio::time::timeout(std::time::Duration::from_secs(90), cli.oz(&["run", "watch", &run_id]))
        .await
        .expect("the run ends");
    assert!(watch.status.success(), "the run ends once steered: {}{}", stdout(&watch), stderr(&watch));
    let transcript = client.runs().transcript(&run_id).await.unwrap();
    let said: Vec<String> = transcript
        .iter()
        .filter(|e| e["event"]["event"] == "output")
        .filter_map(|e| e["event"]["text"].as_str().map(str::to_owned))
        .collect();
    let got = said.iter().find(|t| t.starts_with("got ")).unwrap_or_else(|| panic!("{said:?}"));
    let line: serde_json::Value = serde_json::from_str(got.trim_start_matches("got ").trim()).unwrap();
    assert_eq!(line["message"], "now add \"tests\" too", "one JSON line per follow-up: {got}");

    cli.stack.stop().await;
}

/// A follow-up to a run that ended continues the same run in a new execution (a new sandbox): its
/// agent is asked the follow-up and finds what it kept in `OZ_CONVERSATION_DIR` the time before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followup_to_an_ended_run_continues_it_with_what_its_agent_kept() {
    let cli = Cli::start().await;
    let env = environment(
        &cli,
        r#"echo "execution $OZ_EXECUTION asked: $OZ_PROMPT"; if [ -f "$OZ_CONVERSATION_DIR/memory" ]; then echo "I remember: $(cat "$OZ_CONVERSATION_DIR/memory")"; fi; echo "$OZ_PROMPT" >> "$OZ_CONVERSATION_DIR/memory"; pwd > "$OZ_CONVERSATION_DIR/where""#,
    )
    .await;
    let out = cli.oz(&["agent", "run-cloud", "-p", "write the parser", "-e", &env, "--host", "local"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let run_id = stdout(&out).lines().next().unwrap().trim_start_matches("run ").to_owned();

    let sent = cli.oz(&["run", "followup", &run_id, "now the tests"]).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(
        stdout(&sent).contains(&format!("run {run_id} had ended: it goes on with the follow-up in a new execution")),
        "{}",
        stdout(&sent)
    );
    let watch = tokio::time::timeout(std::time::Duration::from_secs(90), cli.oz(&["run", "watch", &run_id]))
        .await
        .expect("the run ends again");
    let watched = stdout(&watch);
    assert!(watch.status.success(), "{watched}{}", stderr(&watch));
    // Followed from its first event, through its first end, to its second.
    assert!(watched.contains("execution 1 asked: write the parser"), "{watched}");
    assert!(watched.contains("execution 2 asked: now the tests"), "{watched}");
    assert!(watched.contains("I remember: write the parser"), "the agent went on from what it kept: {watched}");
    let client = cli.stack.client().unwrap();
    let run = client.runs().get(&run_id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.prompt, "write the parser");
    let runs = client.runs().list().send().await.unwrap().runs;
    assert_eq!(runs.len(), 1, "the same run, no new one: {runs:?}");
    let transcript: String = client.runs().transcript(&run_id).await.unwrap().iter().map(|e| e.to_string()).collect();
    assert!(transcript.contains("conversation was kept"), "{transcript}");
    assert!(transcript.contains("goes on with the conversation the execution before kept"), "{transcript}");
    cli.stack.stop().await;
}

/// A preset (here `claude`, a stand-in on the environment's PATH that behaves as `claude -p` does:
/// one answer, then it exits) reads no follow-ups while it works: one that comes meanwhile is
/// queued, and when the turn ends the runner goes on with it in the same conversation
/// (`claude -p --continue <follow-up>`), in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followup_to_a_preset_continues_its_conversation_in_the_same_run() {
    let cli = Cli::start().await;
    let bin = cli._dir.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let claude = bin.join("claude");
    std::fs::write(
        &claude,
        r#"#!/bin/sh
for last; do :; done
session="$HOME/.claude/projects/here/session.jsonl"
mkdir -p "$(dirname "$session")"
case " $* " in
  *" --continue "*) echo "claude continued with: $last (it remembers: $(tr '\n' ' ' < "$session"))"; echo "$last" >> "$session"; exit 0 ;;
esac
echo "$last" >> "$session"
echo "claude works on: $last"
n=0; while ! grep -q . "$OZ_FOLLOWUP_FILE" && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done
echo "claude's first turn is done"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&claude, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("PATH={}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let out =
        cli.oz(&["environment", "create", "--name", "with-claude", "--env", &path, "--output-format", "json"]).await;
    let env = json(&out)["uid"].as_str().unwrap().to_owned();
    let started = cli
        .oz(&[
            "agent",
            "run-cloud",
            "-p",
            "fix the bug",
            "-e",
            &env,
            "--host",
            "local",
            "--harness",
            "claude",
            "--no-follow",
        ])
        .await;
    assert!(started.status.success(), "{}", stderr(&started));
    let run_id = stdout(&started).trim().to_owned();
    let client = cli.stack.client().unwrap();
    let said = |transcript: &[serde_json::Value]| -> String {
        transcript.iter().filter_map(|e| e["event"]["text"].as_str()).collect::<Vec<_>>().join("")
    };
    for _ in 0..400 {
        if said(&client.runs().transcript(&run_id).await.unwrap()).contains("claude works on: fix the bug") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let sent = cli.oz(&["run", "followup", &run_id, "and add a test"]).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let watch = tokio::time::timeout(std::time::Duration::from_secs(90), cli.oz(&["run", "watch", &run_id]))
        .await
        .expect("the run ends");
    assert!(watch.status.success(), "{}{}", stdout(&watch), stderr(&watch));
    let transcript = client.runs().transcript(&run_id).await.unwrap();
    let text = said(&transcript);
    let first = text.find("claude's first turn is done").unwrap_or_else(|| panic!("{text}"));
    let second = text.find("claude continued with: and add a test").unwrap_or_else(|| panic!("{text}"));
    assert!(first < second, "the follow-up is the next turn: {text}");
    let all: String = transcript.iter().map(|e| e.to_string()).collect();
    assert!(all.contains("queued for claude"), "the follow-up is said to be queued: {all}");
    assert!(all.contains("claude -p --continue"), "and how it goes on: {all}");
    let run = client.runs().get(&run_id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);

    // After the run ended, a follow-up continues it in a new sandbox: claude's session files come
    // back where claude keeps them, and it resumes its conversation there.
    let sent = cli.oz(&["run", "followup", &run_id, "and document it"]).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let watch = tokio::time::timeout(std::time::Duration::from_secs(90), cli.oz(&["run", "watch", &run_id]))
        .await
        .expect("the run ends again");
    assert!(watch.status.success(), "{}{}", stdout(&watch), stderr(&watch));
    let text = said(&client.runs().transcript(&run_id).await.unwrap());
    assert!(
        text.contains("claude continued with: and document it (it remembers: fix the bug and add a test )"),
        "{text}"
    );
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_agent_run_registers_as_local_is_watched_and_cancelled_from_the_api() {
    let cli = Cli::start().await;
    let client = cli.stack.client().unwrap();
    let work = tempfile::tempdir().unwrap();
    // `oz agent run` on this machine, not in a sandbox: given an API key and a control plane, it
    // registers its run, then reports, streams and listens to it like a managed one.
    let script = r#"echo "local agent says hi; key in env: ${WARP_API_KEY:-none}; in the runner's: $(tr '\0' '\n' < /proc/$PPID/environ | grep -c '^WARP_API_KEY=')"; sleep 60 & wait"#;
    let mut agent = local_agent(&cli, work.path(), "local work", &["--share", "team:edit"], script)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut found = None;
    for _ in 0..400 {
        let runs = client.runs().list().send().await.unwrap().runs;
        if let Some(run) = runs.into_iter().find(|r| r.prompt == "local work") {
            let transcript = client.runs().transcript(&run.run_id).await.unwrap();
            if transcript.iter().any(|e| e.to_string().contains("local agent says hi")) {
                found = Some((run, transcript));
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (run, transcript) = found.expect("the unmanaged run appears in the list with its output");
    assert_eq!(run.execution_location.as_deref(), Some("LOCAL"));
    assert_eq!(run.source.as_deref(), Some("CLI"));
    assert_eq!(run.state, RunState::InProgress);
    assert!(run.session_link.is_some());
    let said: String = transcript.iter().map(|e| e.to_string()).collect();
    assert!(said.contains("key in env: none"), "the API key is withheld from the harness: {said}");
    assert!(said.contains("in the runner's: 0"), "nor left in the runner's own environment: {said}");
    assert!(!said.contains(&cli.stack.api_key), "the API key is in no event");
    assert!(!said.contains("ozw_"), "nor is the run's token");

    // Cancelled from the API: the local runner hears it, stops its agent and reports the end.
    client.runs().cancel(&run.run_id).await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), agent.wait())
        .await
        .expect("the local runner stops when its run is cancelled")
        .unwrap();
    assert!(!out.success());
    let ended = cli.stack.client().unwrap().runs().get(&run.run_id).await.unwrap();
    let ended = if ended.state.is_terminal() {
        ended
    } else {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        client.runs().get(&run.run_id).await.unwrap()
    };
    assert_eq!(ended.state, RunState::Cancelled, "{ended:?}");
    let mut stderr_text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut agent.stderr.take().unwrap(), &mut stderr_text).await.unwrap();
    assert!(stderr_text.contains(&format!("registered run {}", run.run_id)), "{stderr_text}");
    assert!(!stderr_text.contains(&cli.stack.api_key), "{stderr_text}");
    cli.stack.stop().await;
}

/// An unmanaged run has no worker to stop its sandbox: its runner follows the run's steering from
/// before its clone, so a cancel stops it in its setup, not when its agent would have started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_an_unmanaged_run_in_its_setup() {
    let cli = Cli::start().await;
    let client = cli.stack.client().unwrap();
    let work = tempfile::tempdir().unwrap();
    let env_file = work.path().join("env.json");
    let setup = serde_json::json!({"name": "slow", "setup_commands": ["echo setting-up; sleep 60"]});
    std::fs::write(&env_file, setup.to_string()).unwrap();
    let env_arg = env_file.display().to_string();
    let mut agent =
        local_agent(&cli, work.path(), "slow setup", &["--environment-file", &env_arg], "echo the agent ran")
            .spawn()
            .unwrap();
    let run_id = run_saying(&client, "slow setup", "setting-up").await;
    client.runs().cancel(&run_id).await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), agent.wait())
        .await
        .expect("the runner stops in its setup")
        .unwrap();
    assert_eq!(out.code(), Some(130));
    let mut ended = client.runs().get(&run_id).await.unwrap();
    for _ in 0..40 {
        if ended.state.is_terminal() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ended = client.runs().get(&run_id).await.unwrap();
    }
    assert_eq!(ended.state, RunState::Cancelled, "{ended:?}");
    let said: String = client.runs().transcript(&run_id).await.unwrap().iter().map(|e| e.to_string()).collect();
    assert!(!said.contains("harness_started"), "the agent never started: {said}");
    assert!(!said.contains("the agent ran"), "{said}");
    cli.stack.stop().await;
}

/// `oz agent run` of `script` as an unmanaged run registered with the stack (with `extra` flags),
/// its output dropped.
fn local_agent(
    cli: &Cli,
    work: &std::path::Path,
    prompt: &str,
    extra: &[&str],
    script: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(OZ);
    command
        .args(["agent", "run", "--server-root-url", &cli.stack.server.url(), "--prompt", prompt])
        .args(["--harness", "command"])
        .args(extra)
        .arg("--workdir")
        .arg(work)
        .args(["--", "/bin/sh", "-c", script])
        .env("WARP_API_KEY", &cli.stack.api_key)
        .env_remove("GITHUB_ACTIONS")
        .env_remove("OZ_WORKLOAD_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// The id of the run with `prompt` once its transcript holds `text`.
async fn run_saying(client: &oz_sdk::Client, prompt: &str, text: &str) -> String {
    for _ in 0..400 {
        let runs = client.runs().list().send().await.unwrap().runs;
        if let Some(run) = runs.into_iter().find(|r| r.prompt == prompt) {
            let transcript = client.runs().transcript(&run.run_id).await.unwrap();
            if transcript.iter().any(|e| e.to_string().contains(text)) {
                return run.run_id;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no run {prompt:?} said {text:?}");
}

/// Ctrl-C of an unmanaged run is its owner stopping it: the run ends CANCELLED at once, not ERROR
/// when its lease runs out (no worker is there to say why it stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_of_an_unmanaged_agent_run_cancels_its_run() {
    let cli = Cli::start().await;
    let client = cli.stack.client().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut agent =
        local_agent(&cli, work.path(), "stopped by its owner", &[], "echo started; sleep 60 & wait").spawn().unwrap();
    let run_id = run_saying(&client, "stopped by its owner", "started").await;
    let pid = nix::unistd::Pid::from_raw(agent.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(30), agent.wait()).await.expect("it stops").unwrap();
    assert!(!status.success());
    let ended = client.runs().get(&run_id).await.unwrap();
    assert_eq!(ended.state, RunState::Cancelled, "{ended:?}");
    cli.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_github_actions_step_registers_a_github_action_run() {
    let cli = Cli::start().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/github-actions/oz-agent.yml");
    let workflow: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let steps = workflow["jobs"]["agent"]["steps"].as_array().unwrap();
    for step in steps {
        let run = step["run"].as_str().unwrap_or_default();
        assert!(!run.contains("${{"), "no expression is pasted into a script (injection): {run}");
    }
    let step = steps.iter().find(|s| s["run"].as_str().is_some_and(|r| r.contains("oz agent run"))).unwrap();
    assert_eq!(step["env"]["WARP_API_KEY"], "${{ secrets.OZ_API_KEY }}", "the key comes from a secret");

    // The step as the runner of a GitHub job runs it (bash -e, in the checkout, GitHub's variables),
    // with a prompt that would run a command if it were pasted into the script.
    let checkout = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(checkout.path().join("scripts")).unwrap();
    let agent = checkout.path().join("scripts/agent.sh");
    std::fs::write(&agent, "#!/bin/sh\necho \"agent in CI: $OZ_PROMPT\"\n").unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let planted = checkout.path().join("pwned");
    let prompt = format!("fix the build $(touch {})", planted.display());
    let bin = std::path::Path::new(OZ).parent().unwrap();
    let out = tokio::process::Command::new("bash")
        .args(["-e", "-c", step["run"].as_str().unwrap()])
        .current_dir(checkout.path())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("WARP_API_KEY", &cli.stack.api_key)
        .env("WARP_SERVER_ROOT_URL", cli.stack.server.url())
        .env("PROMPT", &prompt)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_WORKFLOW", "oz agent")
        .env("GITHUB_REPOSITORY", "acme/app")
        .env_remove("OZ_WORKLOAD_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!planted.exists(), "the prompt was not run as a command");
    let client = cli.stack.client().unwrap();
    let run = client.runs().list().send().await.unwrap().runs.into_iter().find(|r| r.prompt == prompt).unwrap();
    assert_eq!(run.source.as_deref(), Some("GITHUB_ACTION"));
    assert_eq!(run.execution_location.as_deref(), Some("LOCAL"));
    assert_eq!(run.title, "oz agent (acme/app)");
    assert_eq!(run.state, RunState::Succeeded);
    let transcript = client.runs().transcript(&run.run_id).await.unwrap();
    assert!(transcript.iter().any(|e| e.to_string().contains("agent in CI: fix the build $(touch")), "{transcript:?}");
    cli.stack.stop().await;
}
