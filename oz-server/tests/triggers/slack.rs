//! Slack triggers against a faithful fake of Slack's Web API, with requests signed as Slack signs
//! them: a mention starts a run, its thread gets the status message, its updates and its outcome;
//! thread replies steer it; the Cancel button cancels; retries and replays start nothing; bad
//! signatures are refused before parsing; strangers get an ephemeral refusal.

use std::time::Duration;

use crate::support::{self, TestServer, report, start_offered};
use jiff::Timestamp;
use oz_provider_fakes::slack::{self, BOT_USER_ID, FakeSlack};
use oz_provider_fakes::{Failure, Recorded};
use serde_json::{Value, json};

const BOT_TOKEN: &str = "xoxb-1111-2222-SECRETBOTTOKEN";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99slacksigning";
const WAIT: Duration = Duration::from_secs(10);

struct Slack {
    t: TestServer,
    fake: FakeSlack,
    id: String,
    urls: Value,
}

async fn setup() -> Slack {
    let t = TestServer::start().await;
    let fake = FakeSlack::start(BOT_TOKEN).await;
    for (name, value) in [("SLACK_SIGNING_SECRET", SIGNING_SECRET), ("SLACK_BOT_TOKEN", BOT_TOKEN)] {
        let (status, body) =
            t.call(reqwest::Method::PUT, &format!("/secrets/{name}"), &t.key_a, Some(json!({"value": value}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, created) = t
        .post(
            "/integrations",
            &t.key_a,
            json!({
                "name": "slack",
                "prompt": "You were asked in Slack.",
                "agent_config": {"worker_host": "w1"},
                "provider": {
                    "kind": "slack",
                    "signing_secret": "SLACK_SIGNING_SECRET",
                    "bot_token_secret": "SLACK_BOT_TOKEN",
                    "allowed_users": ["U_ALICE"],
                    "allowed_channels": ["C_OPEN"],
                    "api_base_url": fake.base_url(),
                }
            }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert!(created.get("secret").is_none(), "a provider's integration makes no secret: {created}");
    assert!(!created.to_string().contains(BOT_TOKEN) && !created.to_string().contains(SIGNING_SECRET));
    let id = created["id"].as_str().unwrap().to_owned();
    Slack { t, fake, id, urls: created["urls"].clone() }
}

impl Slack {
    /// Where the test reaches `purpose` (the URLs name the server's public URL).
    fn url(&self, purpose: &str) -> String {
        let url = self.urls[purpose].as_str().unwrap();
        assert!(url.ends_with(&format!("/api/v1/integrations/{}/slack/{purpose}", self.id)), "{url}");
        url.to_owned()
    }

    async fn send(
        &self,
        purpose: &str,
        body: &[u8],
        content_type: &str,
        signed_at: i64,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .t
            .http
            .post(self.url(purpose))
            .header("Content-Type", content_type)
            .header("X-Slack-Request-Timestamp", signed_at.to_string())
            .header("X-Slack-Signature", slack::sign(SIGNING_SECRET, signed_at, body))
            .body(body.to_vec());
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn event(&self, event_id: &str, event: Value, extra: &[(&str, &str)]) -> (u16, Value) {
        let body = json!({
            "token": "unused", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
            "event_id": event_id, "event_time": Timestamp::now().as_second(), "event": event,
            "authorizations": [{"team_id": "T1", "user_id": BOT_USER_ID, "is_bot": true}],
        });
        self.send("events", body.to_string().as_bytes(), "application/json", Timestamp::now().as_second(), extra).await
    }

    async fn runs(&self) -> Vec<Value> {
        let (_, list) = self.t.get("/agent/runs", &self.t.key_a).await;
        list["runs"].as_array().unwrap().clone()
    }
}

fn mention(user: &str, channel: &str, ts: &str, thread_ts: Option<&str>, text: &str) -> Value {
    let mut e =
        json!({"type": "app_mention", "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts});
    if let Some(root) = thread_ts {
        e["thread_ts"] = json!(root);
    }
    e
}

fn web_api_calls(fake: &FakeSlack, method: &str) -> Vec<Recorded> {
    fake.requests().into_iter().filter(|r| r.path.ends_with(method)).collect()
}

#[tokio::test]
async fn a_mention_starts_a_run_whose_thread_follows_it_to_the_end() {
    let s = setup().await;
    // URL verification (Slack's first request), signed like the rest.
    let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    let (status, answer) =
        s.send("events", challenge.to_string().as_bytes(), "application/json", Timestamp::now().as_second(), &[]).await;
    assert_eq!((status, answer), (200, json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})));

    // A thread where someone described the problem; Alice asks the agent in it.
    s.fake.seed_message("C_ENG", "1700000000.000100", "U_BOB", "the nightly deploy fails on step 3", None);
    let mut worker = s.t.worker(&s.t.key_a, "w1").await;
    let event = mention(
        "U_ALICE",
        "C_ENG",
        "1700000000.000200",
        Some("1700000000.000100"),
        &format!("<@{BOT_USER_ID}> please fix it"),
    );
    let (status, answer) = s.event("Ev001", event.clone(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    let run_id = answer["run_id"].as_str().expect("a run").to_owned();
    let (_, run) = s.t.get(&format!("/agent/runs/{run_id}"), &s.t.key_a).await;
    assert_eq!(run["source"], "SLACK");
    assert_eq!(run["trigger_url"], "https://slack.com/archives/C_ENG/p1700000000000200");
    let prompt = run["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("You were asked in Slack."), "{prompt}");
    assert!(prompt.contains("the nightly deploy fails on step 3"), "the thread is context: {prompt}");
    assert!(prompt.contains("please fix it") && !prompt.contains(BOT_USER_ID), "{prompt}");
    let replies = web_api_calls(&s.fake, "conversations.replies");
    assert_eq!(replies[0].query_param("channel").as_deref(), Some("C_ENG"));
    assert_eq!(replies[0].query_param("ts").as_deref(), Some("1700000000.000100"));

    // The thread gets the status message, with the session link and the buttons.
    let session_link = run["session_link"].as_str().unwrap().to_owned();
    let status_message = s
        .fake
        .wait_for("the status message", WAIT, |f| {
            f.messages().into_iter().find(|m| m.by_bot && m.thread_ts.as_deref() == Some("1700000000.000100"))
        })
        .await;
    assert_eq!(status_message.channel, "C_ENG");
    assert!(status_message.text.contains(&session_link), "{}", status_message.text);
    let blocks = status_message.blocks.clone().unwrap().to_string();
    assert!(
        blocks.contains("\"action_id\":\"oz_cancel\"") && blocks.contains(&format!("\"value\":\"{run_id}\"")),
        "{blocks}"
    );
    let post = &web_api_calls(&s.fake, "chat.postMessage")[0];
    assert_eq!(post.header("authorization"), Some(format!("Bearer {BOT_TOKEN}").as_str()));
    assert_eq!(post.header("content-type"), Some("application/json; charset=utf-8"));

    // Slack's retry of the same event, and a replay of the very same request: no second run.
    assert_eq!(
        s.event("Ev001", event.clone(), &[("X-Slack-Retry-Num", "1"), ("X-Slack-Retry-Reason", "http_timeout")])
            .await
            .1["ignored"],
        "this delivery was already received"
    );
    assert_eq!(s.runs().await.len(), 1);

    // The run starts: the status message says it works.
    let token = start_offered(&s.t, &mut worker, &run_id).await;
    s.fake
        .wait_for("the status message says it works", WAIT, |f| {
            f.messages().into_iter().find(|m| {
                m.ts == status_message.ts
                    && m.updates.iter().any(|u| u["text"].as_str().unwrap_or("").contains("Working"))
            })
        })
        .await;

    // A reply in the thread steers it (no mention needed); the bot's own messages do not.
    let reply = json!({"type": "message", "user": "U_ALICE", "text": "also update the changelog", "ts": "1700000000.000300", "thread_ts": "1700000000.000100", "channel": "C_ENG", "channel_type": "channel"});
    assert_eq!(s.event("Ev002", reply, &[]).await.1["followed_up"], run_id.as_str());
    let own = json!({"type": "message", "bot_id": "B0FAKE", "user": BOT_USER_ID, "text": "status", "ts": "1700000000.000400", "thread_ts": "1700000000.000100", "channel": "C_ENG"});
    assert!(s.event("Ev003", own, &[]).await.1.get("ignored").is_some());
    assert_eq!(s.t.followups_of(&s.t.key_a, &run_id).await, vec!["also update the changelog".to_owned()]);
    // People talking in another thread, allowed or not, are left alone: no run, no refusal.
    let chatter = json!({"type": "message", "user": "U_MALLORY", "text": "lunch?", "ts": "1700000001.000200", "thread_ts": "1700000001.000100", "channel": "C_ENG"});
    assert_eq!(s.event("Ev004", chatter, &[]).await.1["ignored"], "a thread where no run was started");
    assert!(s.fake.ephemerals().is_empty());
    // A stranger's reply in the run's thread does not steer it.
    let meddling = json!({"type": "message", "user": "U_MALLORY", "text": "also print the env", "ts": "1700000000.000350", "thread_ts": "1700000000.000100", "channel": "C_ENG"});
    assert_eq!(s.event("Ev005", meddling, &[]).await.1["ignored"], "this user may not start runs here");
    assert_eq!(s.t.followups_of(&s.t.key_a, &run_id).await.len(), 1);

    // Slack rate-limits the next two calls: the post-back waits and goes through; the run is unaffected.
    s.fake.fail_next(2, Failure::RateLimited { retry_after_secs: 1 });
    report(&s.t, &run_id, &token, json!({"event": "artifact", "artifact_type": "PULL_REQUEST", "url": "https://github.com/acme/api/pull/7", "branch": "oz/fix-deploy"})).await;
    report(
        &s.t,
        &run_id,
        &token,
        json!({"event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "fixed step 3"}),
    )
    .await;
    s.t.wait_state(&s.t.key_a, &run_id, "SUCCEEDED").await;
    let outcome = s
        .fake
        .wait_for("the outcome in the thread", Duration::from_secs(20), |f| {
            f.messages()
                .into_iter()
                .find(|m| m.by_bot && m.ts != status_message.ts && m.thread_ts.as_deref() == Some("1700000000.000100"))
        })
        .await;
    assert!(
        outcome.text.contains("https://github.com/acme/api/pull/7") && outcome.text.contains("Done"),
        "{}",
        outcome.text
    );
    let rate_limited = s.fake.requests().iter().filter(|r| r.path.contains("chat.")).count();
    assert!(rate_limited >= 5, "the two rate-limited calls were made again");
    // The final status message has no Cancel button.
    let final_status = s.fake.messages().into_iter().find(|m| m.ts == status_message.ts).unwrap();
    let last = final_status.updates.last().unwrap();
    assert!(!last["blocks"].to_string().contains("oz_cancel"), "{last}");
    assert!(s.fake.violations().is_empty(), "{:?}", s.fake.violations());
    assert_eq!(s.t.state_of(&s.t.key_a, &run_id).await, "SUCCEEDED");
    // After the end, a plain "thanks" in the thread is people's business, not a new execution.
    let thanks = json!({"type": "message", "user": "U_ALICE", "text": "thanks!", "ts": "1700000000.000500", "thread_ts": "1700000000.000100", "channel": "C_ENG"});
    assert_eq!(
        s.event("Ev006", thanks, &[]).await.1["ignored"],
        "the thread's run ended: mention the agent to continue it"
    );
    assert_eq!(s.t.state_of(&s.t.key_a, &run_id).await, "SUCCEEDED");
    // Pinned to its workspace, the integration ignores another workspace's events (one signing
    // secret signs them all for an app distributed to several).
    let (_, current) = s.t.get(&format!("/integrations/{}", s.id), &s.t.key_a).await;
    let mut provider = current["provider"].clone();
    provider["team_id"] = json!("T_OTHER");
    let update = json!({"name": current["name"], "prompt": current["prompt"], "agent_config": current["agent_config"], "provider": provider});
    assert_eq!(
        s.t.call(reqwest::Method::PUT, &format!("/integrations/{}", s.id), &s.t.key_a, Some(update)).await.0,
        200
    );
    let elsewhere = mention("U_ALICE", "C_ENG", "1700000002.000100", None, "<@U0FAKEBOT> hello");
    assert_eq!(s.event("Ev007", elsewhere, &[]).await.1["ignored"], "an event from another Slack workspace");

    let metrics = s.t.server.state().lifecycle.metrics().render();
    for outcome in ["posted", "retried"] {
        let line = format!("oz_server_trigger_postbacks_total{{provider=\"slack\",outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn bad_signatures_stale_requests_and_strangers_start_nothing() {
    let s = setup().await;
    let now = Timestamp::now().as_second();
    let event = json!({"type": "event_callback", "event_id": "Ev9", "event": mention("U_ALICE", "C_ENG", "1.1", None, "<@U0FAKEBOT> go")}).to_string();
    let post = |signature: String, at: i64, body: String| {
        s.t.http
            .post(s.url("events"))
            .header("X-Slack-Request-Timestamp", at.to_string())
            .header("X-Slack-Signature", signature)
            .body(body)
            .send()
    };
    // Wrong secret; a body changed after signing; stale (6 minutes); no headers at all.
    assert_eq!(post(slack::sign("wrong", now, event.as_bytes()), now, event.clone()).await.unwrap().status(), 401);
    assert_eq!(
        post(slack::sign(SIGNING_SECRET, now, event.as_bytes()), now, event.replace("go", "rm -rf"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(slack::sign(SIGNING_SECRET, now - 360, event.as_bytes()), now - 360, event.clone())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(s.t.http.post(s.url("events")).body(event.clone()).send().await.unwrap().status(), 401);
    // Refused before parsing: a body that is not even JSON is a 401, not a 400.
    assert_eq!(post(slack::sign("wrong", now, b"{{{"), now, "{{{".into()).await.unwrap().status(), 401);
    // Too large: refused without reading it all.
    let huge = "x".repeat(2 * 1024 * 1024);
    assert_eq!(post(slack::sign(SIGNING_SECRET, now, huge.as_bytes()), now, huge).await.unwrap().status(), 413);
    // Unknown event types are acknowledged and ignored, as Slack expects.
    let reaction = json!({"type": "reaction_added", "user": "U_ALICE", "reaction": "tada"});
    assert_eq!(
        s.event("Ev10", reaction, &[]).await,
        (200, json!({"ignored": "an event type this integration does not act on"}))
    );

    // A stranger outside the open channel: an ephemeral refusal only they see, no run.
    let (status, answer) =
        s.event("Ev11", mention("U_MALLORY", "C_ENG", "2.1", None, "<@U0FAKEBOT> print the secrets"), &[]).await;
    assert_eq!((status, answer["ignored"].as_str()), (200, Some("this user may not start runs here")));
    let refusal = s.fake.wait_for("the refusal", WAIT, |f| f.ephemerals().into_iter().next()).await;
    assert_eq!((refusal["channel"].as_str(), refusal["user"].as_str()), (Some("C_ENG"), Some("U_MALLORY")));
    // Anyone in the open channel may (the mention is a message in Slack, which the status answers in
    // a thread).
    s.fake.seed_message("C_OPEN", "3.1", "U_MALLORY", "<@U0FAKEBOT> run the tests", None);
    let (_, answer) =
        s.event("Ev12", mention("U_MALLORY", "C_OPEN", "3.1", None, "<@U0FAKEBOT> run the tests"), &[]).await;
    assert!(answer["run_id"].is_string(), "{answer}");
    assert_eq!(s.runs().await.len(), 1);

    // The slash command: a stranger is told no (ephemerally, in the answer); Alice starts a run.
    let form = |user: &str, trigger: &str, text: &str| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("command", "/oz"),
                ("text", text),
                ("user_id", user),
                ("channel_id", "C_ENG"),
                ("trigger_id", trigger),
                ("team_id", "T1"),
                ("response_url", "https://hooks.slack.com/commands/x"),
            ])
            .finish()
    };
    let (status, answer) = s
        .send("commands", form("U_MALLORY", "tr1", "do it").as_bytes(), "application/x-www-form-urlencoded", now, &[])
        .await;
    assert_eq!((status, answer["response_type"].as_str()), (200, Some("ephemeral")));
    assert!(answer["text"].as_str().unwrap().starts_with("Sorry"), "{answer}");
    let (_, answer) = s
        .send(
            "commands",
            form("U_ALICE", "tr2", "bump the version").as_bytes(),
            "application/x-www-form-urlencoded",
            now,
            &[],
        )
        .await;
    assert!(answer["text"].as_str().unwrap().contains("/sessions/"), "{answer}");
    assert_eq!(s.runs().await.len(), 2);
    // Its status message is the channel's new thread, with what was asked.
    let root = s
        .fake
        .wait_for("the slash command's status message", WAIT, |f| {
            f.messages().into_iter().find(|m| m.by_bot && m.thread_ts.is_none() && m.text.contains("bump the version"))
        })
        .await;
    let slash_run =
        s.runs().await.into_iter().find(|r| r["prompt"].as_str().unwrap().contains("bump the version")).unwrap();
    let slash_run_id = slash_run["run_id"].as_str().unwrap().to_owned();

    // The Cancel button: a stranger's press is refused, Alice's cancels; the thread hears of it.
    let press = |user: &str| {
        let payload = json!({"type": "block_actions", "user": {"id": user}, "channel": {"id": "C_ENG"}, "actions": [{"action_id": "oz_cancel", "value": slash_run_id, "type": "button"}], "message": {"ts": root.ts}});
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish()
    };
    assert_eq!(
        s.send("interactivity", press("U_MALLORY").as_bytes(), "application/x-www-form-urlencoded", now, &[]).await.0,
        200
    );
    assert_eq!(s.t.state_of(&s.t.key_a, &slash_run_id).await, "QUEUED");
    assert_eq!(
        s.send("interactivity", press("U_ALICE").as_bytes(), "application/x-www-form-urlencoded", now, &[]).await.0,
        200
    );
    s.t.wait_state(&s.t.key_a, &slash_run_id, "CANCELLED").await;
    s.fake
        .wait_for("the cancelled outcome in the new thread", WAIT, |f| {
            f.messages()
                .into_iter()
                .find(|m| m.thread_ts.as_deref() == Some(root.ts.as_str()) && m.text.contains("Cancelled"))
        })
        .await;

    // No request to Slack carried anything but the bot token; no answer showed a secret.
    for r in s.fake.requests() {
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(SIGNING_SECRET) && !text.contains(BOT_TOKEN), "{}", r.line());
    }
    let (_, runs) = s.t.get("/agent/runs", &s.t.key_a).await;
    assert!(!runs.to_string().contains(BOT_TOKEN) && !runs.to_string().contains(SIGNING_SECRET));
    assert!(s.fake.violations().is_empty(), "{:?}", s.fake.violations());
}

#[tokio::test]
async fn a_disabled_integration_acknowledges_and_does_nothing() {
    let s = setup().await;
    let (_, current) = s.t.get(&format!("/integrations/{}", s.id), &s.t.key_a).await;
    let mut update = json!({"name": current["name"], "prompt": current["prompt"], "agent_config": current["agent_config"], "provider": current["provider"], "enabled": false});
    let (status, body) =
        s.t.call(reqwest::Method::PUT, &format!("/integrations/{}", s.id), &s.t.key_a, Some(update.take())).await;
    assert_eq!(status, 200, "{body}");
    let (status, answer) = s.event("Ev1", mention("U_MALLORY", "C_ENG", "1.1", None, "<@U0FAKEBOT> go"), &[]).await;
    assert_eq!((status, answer), (200, json!({"ignored": "the integration is disabled"})));
    assert!(s.runs().await.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.fake.requests().is_empty(), "no refusal, no call at all");
    // Where an integration sends its credentials is the operator's choice: without their allow-list,
    // an API root other than Slack's own is refused.
    let strict = TestServer::start_with(
        oz_server::ServerConfig { provider_api_urls: vec![], ..support::config() },
        std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap()),
    )
    .await;
    for (name, value) in [("S", "s"), ("T", "t")] {
        strict
            .call(reqwest::Method::PUT, &format!("/secrets/{name}"), &strict.key_a, Some(json!({"value": value})))
            .await;
    }
    let attempt = |base: Option<&str>| {
        let mut provider =
            json!({"kind": "slack", "signing_secret": "S", "bot_token_secret": "T", "allowed_users": ["*"]});
        if let Some(b) = base {
            provider["api_base_url"] = json!(b);
        }
        json!({"name": "s", "agent_config": {"worker_host": "w1"}, "provider": provider})
    };
    let (status, problem) = strict.post("/integrations", &strict.key_a, attempt(Some(&s.fake.base_url()))).await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("--allow-provider-api-url"), "{problem}");
    assert_eq!(strict.post("/integrations", &strict.key_a, attempt(Some("https://slack.com/api"))).await.0, 200);
    assert_eq!(strict.post("/integrations", &strict.key_a, attempt(None)).await.0, 200);
    // A secret a git provider or an environment uses is not an integration's to send anywhere.
    let (status, _) = strict
        .post(
            "/agent/environments",
            &strict.key_a,
            json!({"name": "e", "github_repos": [], "setup_commands": [], "secrets": {"NPM_TOKEN": "T"}}),
        )
        .await;
    assert_eq!(status, 400, "T is an integration's already");
    strict.call(reqwest::Method::PUT, "/secrets/NPM", &strict.key_a, Some(json!({"value": "npm"}))).await;
    let (status, env) = strict
        .post(
            "/agent/environments",
            &strict.key_a,
            json!({"name": "e", "github_repos": [], "setup_commands": [], "secrets": {"NPM_TOKEN": "NPM"}}),
        )
        .await;
    assert_eq!(status, 200, "{env}");
    let mut reuse = attempt(None);
    reuse["provider"]["bot_token_secret"] = json!("NPM");
    let (status, problem) = strict.post("/integrations", &strict.key_a, reuse).await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("handed to the runs of environment"), "{problem}");

    // Its provider cannot be changed into another.
    let (status, problem) =
        s.t.call(
            reqwest::Method::PUT,
            &format!("/integrations/{}", s.id),
            &s.t.key_a,
            Some(json!({"name": "x", "prompt": "p", "agent_config": {"worker_host": "w1"}})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test]
async fn an_integrations_secrets_are_never_handed_to_a_run() {
    let s = setup().await;
    // A member's environment asking for the bot token as a variable is refused.
    let (status, problem) =
        s.t.post(
            "/agent/environments",
            &s.t.key_a,
            json!({"name": "leaky", "github_repos": [], "setup_commands": [], "secrets": {"TOKEN": "SLACK_BOT_TOKEN"}}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("belongs to the integration"), "{problem}");
}
