//! `FakeSlack`.

use std::time::Duration;

use oz_provider_fakes::Failure;
use oz_provider_fakes::slack::{self, FakeSlack};
use serde_json::{Value, json};

use crate::client;

const TOKEN: &str = "xoxb-test-token";
const JSON_UTF8: &str = "application/json; charset=utf-8";

async fn post(fake: &FakeSlack, method: &str, auth: Option<&str>, content_type: &str, body: Value) -> (u16, Value) {
    let mut request = client().post(format!("{}/{method}", fake.base_url())).header("content-type", content_type);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let answer = request.body(body.to_string()).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

#[tokio::test]
async fn posts_threads_updates_and_reads_replies() {
    let fake = FakeSlack::start(TOKEN).await;
    assert!(fake.base_url().ends_with("/api"));
    fake.seed_message("C1", "1700000000.000100", "U1", "@oz fix the build", None);
    let bearer = format!("Bearer {TOKEN}");

    let (status, answer) = post(
        &fake,
        "chat.postMessage",
        Some(&bearer),
        JSON_UTF8,
        json!({"channel": "C1", "text": "On it", "thread_ts": "1700000000.000100"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["ok"], true, "{answer}");
    let ts = answer["ts"].as_str().unwrap().to_owned();
    let (secs, micros) = ts.split_once('.').unwrap();
    assert!(secs.parse::<i64>().is_ok() && micros.len() == 6, "{ts}");
    assert_eq!(answer["message"]["bot_id"], "B0FAKE");
    assert_eq!(answer["message"]["thread_ts"], "1700000000.000100");

    let (_, updated) = post(
        &fake,
        "chat.update",
        Some(&bearer),
        JSON_UTF8,
        json!({"channel": "C1", "ts": ts, "text": "Done", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Done"}}]}),
    )
    .await;
    assert_eq!(updated["ok"], true, "{updated}");
    let (_, missing) =
        post(&fake, "chat.update", Some(&bearer), JSON_UTF8, json!({"channel": "C1", "ts": "1.000001", "text": "x"}))
            .await;
    assert_eq!(missing["error"], "message_not_found");

    let (_, ephemeral) = post(
        &fake,
        "chat.postEphemeral",
        Some(&bearer),
        JSON_UTF8,
        json!({"channel": "C1", "user": "U1", "text": "only you"}),
    )
    .await;
    assert!(ephemeral["message_ts"].is_string(), "{ephemeral}");
    assert_eq!(fake.ephemerals()[0]["user"], "U1");

    let replies: Value = client()
        .get(format!("{}/conversations.replies?channel=C1&ts=1700000000.000100&limit=10", fake.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> =
        replies["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["@oz fix the build", "Done"], "{replies}");
    assert_eq!(replies["has_more"], false);
    let unknown: Value = client()
        .get(format!("{}/conversations.replies?channel=C1&ts=9.000000", fake.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unknown["error"], "thread_not_found");

    let posted = fake.messages().into_iter().find(|m| m.ts == ts).unwrap();
    assert_eq!(posted.text, "Done");
    assert_eq!(posted.updates.len(), 1);
    assert!(posted.blocks.is_some());
    // Only the chat.update of an unknown message broke a rule.
    assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());
    assert_eq!(fake.requests()[0].header("Authorization"), Some(bearer.as_str()));
}

#[tokio::test]
async fn checks_auth_content_type_and_arguments() {
    let fake = FakeSlack::start(TOKEN).await;
    let bearer = format!("Bearer {TOKEN}");
    let message = json!({"channel": "C1", "text": "hi"});
    let (status, answer) = post(&fake, "chat.postMessage", None, JSON_UTF8, message.clone()).await;
    assert_eq!((status, answer["error"].as_str()), (200, Some("not_authed")));
    let (_, answer) = post(&fake, "chat.postMessage", Some("Bearer xoxb-other"), JSON_UTF8, message.clone()).await;
    assert_eq!(answer["error"], "invalid_auth");
    let (_, answer) = post(&fake, "chat.postMessage", Some(&bearer), "application/json", message.clone()).await;
    assert_eq!((answer["ok"].as_bool(), answer["warning"].as_str()), (Some(true), Some("missing_charset")));
    let (_, answer) = post(&fake, "chat.postMessage", Some(&bearer), JSON_UTF8, json!({"channel": "C1"})).await;
    assert_eq!(answer["error"], "no_text");
    let (_, answer) = post(&fake, "chat.postMessage", Some(&bearer), JSON_UTF8, json!({"text": "x"})).await;
    assert_eq!(answer["error"], "channel_not_found");
    let (_, answer) = post(
        &fake,
        "chat.postMessage",
        Some(&bearer),
        JSON_UTF8,
        json!({"channel": "C1", "text": "x", "thread_ts": "123.000000"}),
    )
    .await;
    assert_eq!(answer["ok"], true, "Slack posts with an unknown thread_ts");
    let (status, answer) = post(&fake, "chat.delete", Some(&bearer), JSON_UTF8, message).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_method")));
    let violations = fake.violations();
    assert_eq!(violations.len(), 7, "{violations:#?}");
    assert!(violations[2].contains("charset"), "{violations:#?}");
    assert!(violations[5].contains("thread_ts"), "{violations:#?}");
}

#[tokio::test]
async fn injected_failures_answer_as_slack_does() {
    let fake = FakeSlack::start(TOKEN).await;
    fake.fail_next(1, Failure::RateLimited { retry_after_secs: 7 });
    fake.fail_next(1, Failure::ServerError);
    let send = || {
        client()
            .post(format!("{}/chat.postMessage", fake.base_url()))
            .bearer_auth(TOKEN)
            .header("content-type", JSON_UTF8)
            .body(json!({"channel": "C1", "text": "hi"}).to_string())
            .send()
    };
    let limited = send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(limited.json::<Value>().await.unwrap(), json!({"ok": false, "error": "ratelimited"}));
    assert_eq!(send().await.unwrap().status(), 500);
    fake.fail_next(1, Failure::Status(503));
    let unavailable = send().await.unwrap();
    assert_eq!(unavailable.status(), 503);
    assert!(unavailable.headers().get("retry-after").is_none());
    assert_eq!(unavailable.json::<Value>().await.unwrap()["ok"], false);
    assert_eq!(send().await.unwrap().status(), 200);
    let posted = fake.wait_for("a posted message", Duration::from_secs(2), |f| f.messages().into_iter().next()).await;
    assert_eq!(posted.text, "hi");
    assert_eq!(fake.requests().len(), 4);
    assert!(fake.violations().is_empty());
}

#[test]
fn signs_as_slack_documents() {
    // The example of https://api.slack.com/authentication/verifying-requests-from-slack
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    assert_eq!(
        slack::sign("8f742231b10e8888abcd99yyyzzz85a5", 1531420618, body.as_bytes()),
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    );
}
