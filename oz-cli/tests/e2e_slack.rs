//! End to end through the local stack, as a team would set it up: team secrets and a Slack
//! integration made with the `oz` CLI, then a signed Slack mention (as Slack sends it) starts a run
//! on the Direct backend whose command harness commits to a local repository; the Slack thread (a
//! faithful fake of Slack's Web API) gets the started message, its updates and the finished one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use oz_provider_fakes::slack::{self, BOT_USER_ID, FakeSlack};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const OZ: &str = env!("CARGO_BIN_EXE_oz");
const BOT_TOKEN: &str = "xoxb-e2e-SECRET-BOT-TOKEN-0001";
const SIGNING_SECRET: &str = "e2e-slack-signing-SECRET-0001";

async fn oz(stack: &oz_cli::local::LocalStack, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = tokio::process::Command::new(OZ)
        .args(args)
        .env("WARP_API_KEY", &stack.api_key)
        .env("OZ_API_BASE_URL", format!("{}/api/v1", stack.server.url()))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut input = child.stdin.take().unwrap();
        input.write_all(text.as_bytes()).await.unwrap();
        drop(input);
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "oz {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_mention_runs_an_agent_that_commits_and_the_thread_hears_the_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let stack = oz_cli::local::start_with_runner(&dir.path().join("stack"), "127.0.0.1:0", OZ.into()).await.unwrap();
    let fake = FakeSlack::start(BOT_TOKEN).await;

    // The repository the agent works on.
    let repo = dir.path().join("app");
    std::fs::create_dir_all(&repo).unwrap();
    support::git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "app\n").unwrap();
    support::git(&repo, &["add", "."]);
    support::git(&repo, &["commit", "-qm", "initial"]);

    // The team's secrets and the integration, with the CLI (values on stdin, never in argv).
    oz(&stack, &["secret", "set", "SLACK_SIGNING_SECRET"], Some(&format!("{SIGNING_SECRET}\n"))).await;
    oz(&stack, &["secret", "set", "SLACK_BOT_TOKEN"], Some(BOT_TOKEN)).await;
    let listed = String::from_utf8_lossy(&oz(&stack, &["secret", "list"], None).await.stdout).into_owned();
    assert!(listed.contains("SLACK_BOT_TOKEN") && !listed.contains(BOT_TOKEN), "{listed}");
    let script = format!(
        "cd '{}' && date +%s%N >> FIX.md && git add FIX.md && git commit -qm \"$OZ_PROMPT_FIRST_LINE\" && echo committed",
        repo.display()
    );
    let command = serde_json::to_string(&["/bin/sh", "-c", &script]).unwrap();
    let mut env_args = vec![
        "environment".to_owned(),
        "create".into(),
        "--name".into(),
        "app".into(),
        "--setup-command".into(),
        "true".into(),
    ];
    env_args.extend(["--env".into(), format!("OZ_HARNESS_COMMAND={command}")]);
    env_args.extend(["--env".into(), "OZ_PROMPT_FIRST_LINE=Fix from Slack".into()]);
    for (k, v) in support::git_identity() {
        env_args.extend(["--env".into(), format!("{k}={v}")]);
    }
    env_args.extend(["--output-format".into(), "json".into()]);
    let env_args: Vec<&str> = env_args.iter().map(String::as_str).collect();
    let env = json_of(&oz(&stack, &env_args, None).await)["uid"].as_str().unwrap().to_owned();
    let created = json_of(
        &oz(
            &stack,
            &[
                "integration",
                "create",
                "slack",
                "--name",
                "team-slack",
                "--environment",
                &env,
                "--host",
                "local",
                "--signing-secret",
                "SLACK_SIGNING_SECRET",
                "--bot-token-secret",
                "SLACK_BOT_TOKEN",
                "--allow-user",
                "U_ALICE",
                "--provider-api-url",
                &fake.base_url(),
                "--output-format",
                "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(created["kind"], "slack");
    let events_url = created["urls"]["events"].as_str().unwrap().to_owned();
    let text = String::from_utf8_lossy(
        &oz(&stack, &["integration", "get", created["id"].as_str().unwrap()], None).await.stdout,
    )
    .into_owned();
    assert!(text.contains("events:") && text.contains("interactivity:"), "the URLs to give Slack: {text}");

    // Alice mentions the agent in #eng, as Slack delivers it.
    fake.seed_message("C_ENG", "1765000000.000100", "U_ALICE", &format!("<@{BOT_USER_ID}> fix the flaky deploy"), None);
    let body = json!({
        "type": "event_callback", "team_id": "T1", "api_app_id": "A1", "event_id": "Ev_E2E_1", "event_time": Timestamp::now().as_second(),
        "event": {"type": "app_mention", "user": "U_ALICE", "text": format!("<@{BOT_USER_ID}> fix the flaky deploy"), "ts": "1765000000.000100", "channel": "C_ENG", "event_ts": "1765000000.000100"},
        "authorizations": [{"user_id": BOT_USER_ID, "is_bot": true}],
    })
    .to_string();
    let at = Timestamp::now().as_second();
    let answer: Value = reqwest::Client::new()
        .post(&events_url)
        .header("Content-Type", "application/json")
        .header("X-Slack-Request-Timestamp", at.to_string())
        .header("X-Slack-Signature", slack::sign(SIGNING_SECRET, at, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = answer["run_id"].as_str().unwrap_or_else(|| panic!("no run: {answer}")).to_owned();

    // The thread hears at once that it started, with the session link ...
    let started = fake
        .wait_for("the started message", Duration::from_secs(10), |f| {
            f.messages().into_iter().find(|m| m.by_bot && m.thread_ts.as_deref() == Some("1765000000.000100"))
        })
        .await;
    assert!(started.text.contains("/sessions/"), "{}", started.text);
    // ... and when it ended, how.
    let finished = fake
        .wait_for("the finished message", Duration::from_secs(90), |f| {
            f.messages()
                .into_iter()
                .find(|m| m.by_bot && m.ts != started.ts && m.thread_ts.as_deref() == Some("1765000000.000100"))
        })
        .await;
    assert!(finished.text.contains("Done"), "{}", finished.text);
    let run = json_of(&oz(&stack, &["run", "get", &run_id, "--output-format", "json"], None).await);
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    assert_eq!(run["source"], "SLACK");
    let log = std::process::Command::new("git").args(["log", "-1", "--format=%s"]).current_dir(&repo).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "Fix from Slack", "the agent committed");
    let status = fake.messages().into_iter().find(|m| m.ts == started.ts).unwrap();
    assert!(status.updates.iter().any(|u| u["text"].as_str().unwrap_or("").contains("Done")), "{:?}", status.updates);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The bot token reached Slack in its header only; nothing the agent saw or said carries it.
    let transcript = String::from_utf8_lossy(
        &oz(&stack, &["run", "watch", &run_id, "--output-format", "ndjson"], None).await.stdout,
    )
    .into_owned();
    assert!(transcript.contains("committed"), "{transcript}");
    assert!(!transcript.contains(BOT_TOKEN) && !transcript.contains(SIGNING_SECRET));

    // A plain "thanks" after the end is left alone; Alice mentioning the agent in the thread continues
    // the same run in a new execution, and the thread hears of it again.
    let reply = json!({
        "type": "event_callback", "team_id": "T1", "event_id": "Ev_E2E_2", "event_time": Timestamp::now().as_second(),
        "event": {"type": "app_mention", "user": "U_ALICE", "text": format!("<@{BOT_USER_ID}> now do it once more"), "ts": "1765000000.000900", "thread_ts": "1765000000.000100", "channel": "C_ENG"},
        "authorizations": [{"user_id": BOT_USER_ID, "is_bot": true}],
    })
    .to_string();
    let at = Timestamp::now().as_second();
    let answer: Value = reqwest::Client::new()
        .post(&events_url)
        .header("X-Slack-Request-Timestamp", at.to_string())
        .header("X-Slack-Signature", slack::sign(SIGNING_SECRET, at, reply.as_bytes()))
        .body(reply)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["followed_up"], run_id.as_str(), "{answer}");
    fake.wait_for("the continued run's second outcome", Duration::from_secs(90), |f| {
        let done: Vec<_> = f
            .messages()
            .into_iter()
            .filter(|m| {
                m.by_bot
                    && m.text.contains("Done")
                    && m.ts != started.ts
                    && m.thread_ts.as_deref() == Some("1765000000.000100")
            })
            .collect();
        (done.len() >= 3).then_some(())
    })
    .await;
    let commits =
        std::process::Command::new("git").args(["rev-list", "--count", "HEAD"]).current_dir(&repo).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&commits.stdout).trim(), "3", "the continued run committed again");
    let run = json_of(&oz(&stack, &["run", "get", &run_id, "--output-format", "json"], None).await);
    assert_eq!(run["state"], "SUCCEEDED", "{run}");

    for file in ["oz.db", "oz.db-wal"] {
        let Ok(bytes) = std::fs::read(dir.path().join("stack").join(file)) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(BOT_TOKEN) && !text.contains(SIGNING_SECRET), "{file}: secrets are sealed at rest");
    }
    stack.stop().await;
}
