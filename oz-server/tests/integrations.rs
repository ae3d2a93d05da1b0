//! `/integrations` and signed webhook deliveries over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jiff::Timestamp;
use reqwest::Method;
use serde_json::json;
use support::TestServer;

async fn deliver(
    t: &TestServer,
    url: &str,
    secret: &str,
    ts: i64,
    body: &str,
    signature: Option<String>,
) -> (u16, serde_json::Value) {
    let sig = signature.unwrap_or_else(|| oz_server::webhook::sign(secret, ts, body.as_bytes()));
    let resp = t
        .http
        .post(url)
        .header("X-Oz-Timestamp", ts.to_string())
        .header("X-Oz-Signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_signed_delivery_starts_a_run_and_bad_ones_are_refused() {
    let t = TestServer::start().await;
    let (status, created) = t
        .post("/integrations", &t.key_a, json!({"name": "issues", "prompt": "Handle this event: {{payload}}", "agent_config": {"worker_host": "w1"}}))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let url = created["webhook_url"].as_str().unwrap().to_owned();
    assert!(url.ends_with(&format!("/api/v1/integrations/{id}/webhook")));
    // The secret is shown once.
    let (_, fetched) = t.get(&format!("/integrations/{id}"), &t.key_a).await;
    assert!(fetched.get("secret").is_none(), "{fetched}");
    let (_, listed) = t.get("/integrations", &t.key_a).await;
    assert!(!listed.to_string().contains(&secret));

    let now = Timestamp::now().as_second();
    let payload = r#"{"issue": 42, "title": "crash on start"}"#;
    let (status, accepted) = deliver(&t, &url, &secret, now, payload, None).await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap();
    let (_, run) = t.get(&format!("/agent/runs/{run_id}"), &t.key_a).await;
    assert_eq!(run["prompt"], format!("Handle this event: {payload}"));
    assert_eq!(run["source"], "WEBHOOK");
    assert_eq!(run["title"], "issues");

    // The same delivery again is a replay.
    let (status, problem) = deliver(&t, &url, &secret, now, payload, None).await;
    assert_eq!(status, 409, "{problem}");
    // Stale, tampered, wrongly signed, unsigned, unknown integration: all refused, nothing created.
    let stale = now - 301;
    assert_eq!(deliver(&t, &url, &secret, stale, payload, None).await.0, 401);
    let good_sig = oz_server::webhook::sign(&secret, now + 1, payload.as_bytes());
    assert_eq!(deliver(&t, &url, &secret, now + 1, r#"{"issue": 43}"#, Some(good_sig)).await.0, 401);
    assert_eq!(deliver(&t, &url, "wrong-secret", now + 2, payload, None).await.0, 401);
    // Timestamps at the ends of i64 are stale (no overflow, no panic taking the request down).
    for extreme in [i64::MIN, i64::MAX] {
        let (status, problem) = deliver(&t, &url, &secret, extreme, payload, None).await;
        assert_eq!(status, 401, "{extreme}: {problem}");
        assert!(problem.to_string().contains("more than 300 s from now"), "{problem}");
    }
    let unsigned = t.http.post(&url).body(payload).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let unknown = url.replace(&id, "int_doesnotexist");
    let (status, problem) = deliver(&t, &unknown, &secret, now + 3, payload, None).await;
    assert_eq!(status, 401, "unknown integrations look like bad signatures: {problem}");
    assert!(!problem.to_string().contains(&secret));
    let (_, runs) = t.get("/agent/runs", &t.key_a).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);

    // Disabled: refused with integration_disabled.
    let (status, _) = t
        .call(
            Method::PUT,
            &format!("/integrations/{id}"),
            &t.key_a,
            Some(json!({"name": "issues", "prompt": "p", "enabled": false, "agent_config": {"worker_host": "w1"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, problem) = deliver(&t, &url, &secret, now + 4, payload, None).await;
    assert_eq!(status, 403);
    assert_eq!(problem["error"], "integration_disabled");
}

#[tokio::test]
async fn integrations_are_validated_and_scoped_to_their_team() {
    let t = TestServer::start().await;
    for bad in [
        json!({"name": "", "prompt": "p", "agent_config": {"worker_host": "w"}}),
        json!({"name": "n", "prompt": " ", "agent_config": {"worker_host": "w"}}),
        json!({"name": "n", "prompt": "p"}),
        json!({"name": "n"}),
    ] {
        let (status, problem) = t.post("/integrations", &t.key_a, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {problem}");
    }
    let (_, created) = t
        .post("/integrations", &t.key_a, json!({"name": "n", "prompt": "p", "agent_config": {"worker_host": "w"}}))
        .await;
    let id = created["id"].as_str().unwrap();
    for (method, path) in
        [(Method::GET, format!("/integrations/{id}")), (Method::DELETE, format!("/integrations/{id}"))]
    {
        assert_eq!(t.call(method, &path, &t.key_b, None).await.0, 404);
    }
    let (status, _) = t
        .call(
            Method::PUT,
            &format!("/integrations/{id}"),
            &t.key_b,
            Some(json!({"name": "x", "prompt": "y", "agent_config": {"worker_host": "w"}})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, list) = t.get("/integrations", &t.key_b).await;
    assert_eq!(list["integrations"].as_array().unwrap().len(), 0);
    let (status, body) = t.call(Method::DELETE, &format!("/integrations/{id}"), &t.key_a, None).await;
    assert_eq!((status, body), (200, json!({"success": true})));
}
