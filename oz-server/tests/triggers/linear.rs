//! Linear triggers against a faithful fake of Linear's GraphQL API, with webhooks signed as Linear
//! signs them: an issue assigned to the agent (or labelled) starts a run from its title,
//! description and comments; the issue gets a comment with the session link, kept up to date, and
//! the outcome; a pull request moves it to the configured state; a mention in a comment steers the
//! run; replays, bad signatures, stale timestamps and strangers start nothing.

use std::time::Duration;

use crate::support::{TestServer, report, start_offered};
use jiff::Timestamp;
use oz_provider_fakes::Failure;
use oz_provider_fakes::linear::{self, FakeLinear, LinearIssue};
use serde_json::{Value, json};

const API_KEY: &str = "lin_api_SECRETKEY0123456789";
const WEBHOOK_SECRET: &str = "lin_wh_SECRETSIGNING";
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (TestServer, FakeLinear, String) {
    setup_with(API_KEY).await
}

async fn setup_with(api_key: &str) -> (TestServer, FakeLinear, String) {
    let t = TestServer::start().await;
    let fake = FakeLinear::start(api_key).await;
    fake.seed_issue(LinearIssue {
        id: "issue-uuid-1".into(),
        identifier: "ENG-42".into(),
        title: "Login page crashes on Safari".into(),
        description: "Steps: open /login in Safari 17.".into(),
        url: "https://linear.app/acme/issue/ENG-42/login-page-crashes".into(),
        comments: vec![("Bob".into(), "It started after the 3.2 release.".into())],
    });
    for (name, value) in [("LINEAR_WEBHOOK_SECRET", WEBHOOK_SECRET), ("LINEAR_API_KEY", api_key)] {
        let (status, body) =
            t.call(reqwest::Method::PUT, &format!("/secrets/{name}"), &t.key_a, Some(json!({"value": value}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, created) = t
        .post(
            "/integrations",
            &t.key_a,
            json!({
                "name": "linear",
                "agent_config": {"worker_host": "w1"},
                "provider": {
                    "kind": "linear",
                    "webhook_secret": "LINEAR_WEBHOOK_SECRET",
                    "api_key_secret": "LINEAR_API_KEY",
                    "agent_user_id": "user_agent",
                    "label": "oz",
                    "pull_request_state_id": "state_in_review",
                    "allowed_users": ["user_alice"],
                    "api_base_url": fake.base_url(),
                }
            }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let url = created["urls"]["webhook"].as_str().unwrap().to_owned();
    assert!(url.ends_with("/linear/webhook"), "{url}");
    (t, fake, url)
}

fn issue_assigned(actor: &str, sent_ms: i64) -> Value {
    json!({
        "action": "update", "type": "Issue", "createdAt": "2026-12-07T10:00:00.000Z", "organizationId": "org1",
        "url": "https://linear.app/acme/issue/ENG-42/login-page-crashes", "webhookTimestamp": sent_ms, "webhookId": "wh1",
        "actor": {"id": actor, "name": "Someone", "type": "user"},
        "data": {"id": "issue-uuid-1", "identifier": "ENG-42", "title": "Login page crashes on Safari", "description": "Steps: open /login in Safari 17.",
                 "assigneeId": "user_agent", "labelIds": [], "labels": [], "teamId": "team1", "url": "https://linear.app/acme/issue/ENG-42/login-page-crashes"},
        "updatedFrom": {"assigneeId": null, "updatedAt": "2026-12-07T09:59:00.000Z"},
    })
}

async fn deliver(t: &TestServer, url: &str, delivery: &str, body: &Value, secret: &str) -> (u16, Value) {
    let body = body.to_string();
    let response = t
        .http
        .post(url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Linear-Delivery", delivery)
        .header("Linear-Event", "Issue")
        .header("Linear-Signature", linear::sign(secret, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn run_count(t: &TestServer) -> usize {
    t.get("/agent/runs", &t.key_a).await.1["runs"].as_array().unwrap().len()
}

#[tokio::test]
async fn an_assigned_issue_runs_and_its_comments_follow_the_run() {
    let (t, fake, url) = setup().await;
    let mut worker = t.worker(&t.key_a, "w1").await;
    let now_ms = Timestamp::now().as_millisecond();
    let (status, answer) = deliver(&t, &url, "d-1", &issue_assigned("user_alice", now_ms), WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    let run_id = answer["run_id"].as_str().expect("a run").to_owned();
    let (_, run) = t.get(&format!("/agent/runs/{run_id}"), &t.key_a).await;
    assert_eq!(run["source"], "LINEAR");
    assert_eq!(run["trigger_url"], "https://linear.app/acme/issue/ENG-42/login-page-crashes");
    let prompt = run["prompt"].as_str().unwrap();
    for part in [
        "ENG-42",
        "Login page crashes on Safari",
        "Steps: open /login in Safari 17.",
        "Bob: It started after the 3.2 release.",
    ] {
        assert!(prompt.contains(part), "{part:?} in {prompt}");
    }
    // "You should know immediately that it has started working": a comment with the session link.
    let session_link = run["session_link"].as_str().unwrap().to_owned();
    let status_comment =
        fake.wait_for("the started comment", WAIT, |f| f.comments("issue-uuid-1").into_iter().find(|c| c.by_api)).await;
    assert!(status_comment.body.contains(&session_link), "{}", status_comment.body);
    let calls = fake.requests();
    assert!(calls.iter().all(|r| r.header("authorization") == Some(API_KEY)), "a personal key is sent as is");

    // A replay of the delivery, and a second assignment while the run goes on: nothing new.
    assert!(
        deliver(&t, &url, "d-1", &issue_assigned("user_alice", now_ms), WEBHOOK_SECRET)
            .await
            .1
            .get("ignored")
            .is_some()
    );
    assert_eq!(
        deliver(&t, &url, "d-1b", &issue_assigned("user_alice", now_ms), WEBHOOK_SECRET).await.1["ignored"],
        "this issue's run has not ended"
    );
    assert_eq!(run_count(&t).await, 1);

    // A comment mentioning the agent steers it; one that does not is ignored.
    let comment = |id: &str, body: &str| {
        json!({"action": "create", "type": "Comment", "webhookTimestamp": Timestamp::now().as_millisecond(), "webhookId": "wh1",
               "actor": {"id": "user_alice", "type": "user"},
               "data": {"id": id, "body": body, "issueId": "issue-uuid-1", "userId": "user_alice"}})
    };
    assert!(
        deliver(&t, &url, "d-2", &comment("c1", "looks related to #12"), WEBHOOK_SECRET)
            .await
            .1
            .get("ignored")
            .is_some()
    );
    assert_eq!(
        deliver(&t, &url, "d-3", &comment("c2", "@oz also check Firefox"), WEBHOOK_SECRET).await.1["followed_up"],
        run_id.as_str()
    );
    assert_eq!(t.followups_of(&t.key_a, &run_id).await, vec!["@oz also check Firefox".to_owned()]);

    // The run works, opens a pull request and succeeds; Linear rate-limits once on the way.
    let token = start_offered(&t, &mut worker, &run_id).await;
    fake.wait_for("the comment says it works", WAIT, |f| {
        f.comments("issue-uuid-1").into_iter().find(|c| c.id == status_comment.id && c.body.contains("Working"))
    })
    .await;
    fake.fail_next(1, Failure::RateLimited { retry_after_secs: 1 });
    report(&t, &run_id, &token, json!({"event": "artifact", "artifact_type": "PULL_REQUEST", "url": "https://github.com/acme/web/pull/9", "branch": "oz/eng-42"})).await;
    report(&t, &run_id, &token, json!({"event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "fixed"}))
        .await;
    let outcome = fake
        .wait_for("the outcome comment", Duration::from_secs(20), |f| {
            f.comments("issue-uuid-1")
                .into_iter()
                .find(|c| c.by_api && c.id != status_comment.id && c.body.contains("pull/9"))
        })
        .await;
    assert!(outcome.body.contains("Done"), "{}", outcome.body);
    fake.wait_for("the issue moved to review", WAIT, |f| {
        f.issue_state("issue-uuid-1").filter(|s| s == "state_in_review")
    })
    .await;
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert_eq!(t.state_of(&t.key_a, &run_id).await, "SUCCEEDED");
    // Replayed once the run ended (when nothing else stops it): still no second run.
    assert_eq!(
        deliver(&t, &url, "d-1", &issue_assigned("user_alice", now_ms), WEBHOOK_SECRET).await.1["ignored"],
        "this delivery was already received"
    );
    assert_eq!(run_count(&t).await, 1);
}

#[tokio::test]
async fn forged_stale_and_unwanted_webhooks_start_nothing() {
    let (t, fake, url) = setup().await;
    let now_ms = Timestamp::now().as_millisecond();
    // A wrong secret; a body changed after signing; no signature; not JSON with a bad signature.
    assert_eq!(deliver(&t, &url, "d-1", &issue_assigned("user_alice", now_ms), "wrong").await.0, 401);
    let body = issue_assigned("user_alice", now_ms).to_string();
    let tampered = t
        .http
        .post(&url)
        .header("Linear-Signature", linear::sign(WEBHOOK_SECRET, body.as_bytes()))
        .body(body.replace("user_agent", "user_agent "))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);
    assert_eq!(t.http.post(&url).body(body.clone()).send().await.unwrap().status(), 401);
    let garbage = t.http.post(&url).header("Linear-Signature", "00").body("{{{").send().await.unwrap();
    assert_eq!(garbage.status(), 401, "refused before parsing");
    // Signed, but sent two minutes ago: a replay of an old delivery.
    let (status, problem) =
        deliver(&t, &url, "d-2", &issue_assigned("user_alice", now_ms - 120_000), WEBHOOK_SECRET).await;
    assert_eq!(status, 401, "{problem}");
    // Someone not on the list assigns the issue to the agent.
    assert_eq!(
        deliver(&t, &url, "d-3", &issue_assigned("user_mallory", now_ms), WEBHOOK_SECRET).await.1["ignored"],
        "this user may not start runs here"
    );
    // Unknown types are acknowledged and ignored; an issue edit that is not an assignment too.
    let project = json!({"action": "create", "type": "Project", "webhookTimestamp": now_ms, "data": {"id": "p1"}});
    assert_eq!(deliver(&t, &url, "d-4", &project, WEBHOOK_SECRET).await.0, 200);
    let mut retitled = issue_assigned("user_alice", now_ms);
    retitled["updatedFrom"] = json!({"title": "old"});
    assert!(deliver(&t, &url, "d-5", &retitled, WEBHOOK_SECRET).await.1.get("ignored").is_some());
    assert_eq!(run_count(&t).await, 0);
    // The label starts a run too (added by this change).
    let mut labelled = issue_assigned("user_alice", now_ms);
    labelled["data"]["assigneeId"] = Value::Null;
    labelled["data"]["labels"] = json!([{"id": "lab1", "name": "Oz", "color": "#fff"}]);
    labelled["data"]["labelIds"] = json!(["lab1"]);
    labelled["updatedFrom"] = json!({"labelIds": []});
    assert!(deliver(&t, &url, "d-6", &labelled, WEBHOOK_SECRET).await.1["run_id"].is_string());
    assert_eq!(run_count(&t).await, 1);
    for r in fake.requests() {
        assert!(!String::from_utf8_lossy(&r.body).contains(WEBHOOK_SECRET), "{}", r.line());
    }
}

/// Linear's Agents API: an OAuth app mentioned or delegated gets an agent session; the run answers
/// in it with activities (a thought at once, the outcome as a response), links it to our session,
/// takes the person's next prompt as a follow-up and their Stop as a cancel.
#[tokio::test]
async fn an_agent_session_gets_activities_prompts_steer_and_stop_cancels() {
    const OAUTH: &str = "lin_oauth_SECRET_app_token_0001";
    let (t, fake, url) = setup_with(OAUTH).await;
    fake.seed_agent_session("sess-1", "issue-uuid-1");
    let event = |action: &str, extra: Value| {
        let mut e = json!({
            "type": "AgentSessionEvent", "action": action, "organizationId": "org1", "appUserId": "user_agent",
            "webhookTimestamp": Timestamp::now().as_millisecond(), "webhookId": "wh2",
            "agentSession": {"id": "sess-1", "issueId": "issue-uuid-1", "creatorId": "user_alice",
                             "issue": {"id": "issue-uuid-1", "identifier": "ENG-42", "title": "Login page crashes on Safari", "url": "https://linear.app/acme/issue/ENG-42"}},
            "promptContext": "<issue identifier=\"ENG-42\"><title>Login page crashes on Safari</title></issue>",
        });
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        e
    };
    let (status, answer) = deliver(&t, &url, "s-1", &event("created", json!({})), WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    let run_id = answer["run_id"].as_str().expect("a run").to_owned();
    let (_, run) = t.get(&format!("/agent/runs/{run_id}"), &t.key_a).await;
    assert!(
        run["prompt"].as_str().unwrap().contains("<issue identifier=\"ENG-42\">"),
        "Linear's prompt context: {run}"
    );
    let session_link = run["session_link"].as_str().unwrap().to_owned();
    let session = fake
        .wait_for("a thought and the link", WAIT, |f| f.agent_session("sess-1").filter(|s| !s.activities.is_empty()))
        .await;
    assert_eq!(session.activities[0]["type"], "thought");
    assert!(session.activities[0]["body"].as_str().unwrap().contains(&session_link));
    assert_eq!(session.external_urls, vec![json!({"label": "Oz session", "url": session_link})]);
    assert!(
        fake.requests().iter().all(|r| r.header("authorization") == Some(format!("Bearer {OAUTH}").as_str())),
        "an OAuth token is a bearer"
    );
    assert!(fake.comments("issue-uuid-1").iter().all(|c| !c.by_api), "activities, not comments");

    // The person's next message in the session steers the run; Stop cancels it.
    let prompted = event(
        "prompted",
        json!({"agentActivity": {"id": "act-1", "userId": "user_alice", "content": {"type": "prompt", "body": "check Firefox too"}}}),
    );
    assert_eq!(deliver(&t, &url, "s-2", &prompted, WEBHOOK_SECRET).await.1["followed_up"], run_id.as_str());
    assert_eq!(t.followups_of(&t.key_a, &run_id).await, vec!["check Firefox too".to_owned()]);
    let stop = event(
        "prompted",
        json!({"agentActivity": {"id": "act-2", "userId": "user_alice", "signal": "stop", "content": {"type": "prompt", "body": "stop"}}}),
    );
    assert_eq!(deliver(&t, &url, "s-3", &stop, WEBHOOK_SECRET).await.1["cancelled"], run_id.as_str());
    t.wait_state(&t.key_a, &run_id, "CANCELLED").await;
    let session = fake
        .wait_for("the outcome as an error activity", WAIT, |f| {
            f.agent_session("sess-1").filter(|s| s.activities.last().is_some_and(|a| a["type"] == "error"))
        })
        .await;
    assert!(session.activities.last().unwrap()["body"].as_str().unwrap().contains("Cancelled"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
