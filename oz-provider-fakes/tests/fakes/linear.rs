//! `FakeLinear`.

use oz_provider_fakes::Failure;
use oz_provider_fakes::linear::{self, FakeLinear, LinearIssue};
use serde_json::{Value, json};

use crate::client;

const KEY: &str = "lin_api_testkey";

async fn fake() -> FakeLinear {
    let fake = FakeLinear::start(KEY).await;
    fake.seed_issue(LinearIssue {
        id: "issue-uuid-1".into(),
        identifier: "ENG-12".into(),
        title: "Fix the build".into(),
        description: "It is red".into(),
        url: "https://linear.app/acme/issue/ENG-12/fix-the-build".into(),
        comments: vec![("Ada".into(), "@oz please look".into())],
    });
    fake
}

async fn graphql(fake: &FakeLinear, auth: &str, query: &str, variables: Value) -> (u16, Value) {
    let answer = client()
        .post(format!("{}/graphql", fake.base_url()))
        .header("authorization", auth)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

#[tokio::test]
async fn reads_comments_and_updates_an_issue() {
    let fake = fake().await;
    let (status, answer) = graphql(
        &fake,
        KEY,
        "query Issue($id: String!) { issue(id: $id) { identifier title comments(first: 50) { nodes { body user { name } } } } }",
        json!({"id": "ENG-12"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"data": {"issue": {"identifier": "ENG-12", "title": "Fix the build",
            "comments": {"nodes": [{"body": "@oz please look", "user": {"name": "Ada"}}]}}}})
    );

    let (_, created) = graphql(
        &fake,
        KEY,
        "mutation C($input: CommentCreateInput!) { commentCreate(input: $input) { success comment { id url } } }",
        json!({"input": {"issueId": "issue-uuid-1", "body": "Working on it"}}),
    )
    .await;
    assert_eq!(created["data"]["commentCreate"]["success"], true, "{created}");
    let id = created["data"]["commentCreate"]["comment"]["id"].as_str().unwrap().to_owned();
    assert!(created["data"]["commentCreate"]["comment"]["url"].as_str().unwrap().contains("#comment-"));

    let (_, updated) = graphql(
        &fake,
        KEY,
        "mutation U($id: String!, $body: String!) { commentUpdate(id: $id, input: {body: $body}) { success } }",
        json!({"id": id, "body": "Done: PR #7"}),
    )
    .await;
    assert_eq!(updated, json!({"data": {"commentUpdate": {"success": true}}}));
    let (_, moved) = graphql(
        &fake,
        KEY,
        r#"mutation { issueUpdate(id: "ENG-12", input: {stateId: "state-done"}) { ok: success issue { state { id } } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(moved["data"]["issueUpdate"], json!({"ok": true, "issue": {"state": {"id": "state-done"}}}));

    let comments = fake.comments("issue-uuid-1");
    assert_eq!(comments.len(), 2);
    assert!(!comments[0].by_api && comments[1].by_api);
    assert_eq!(
        (comments[1].body.as_str(), comments[1].updates.clone()),
        ("Done: PR #7", vec!["Done: PR #7".to_owned()])
    );
    assert_eq!(fake.issue_state("ENG-12").as_deref(), Some("state-done"));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert_eq!(fake.requests()[0].header("authorization"), Some(KEY));
}

#[tokio::test]
async fn refuses_what_linear_refuses() {
    let fake = fake().await;
    let query = "query Issue($id: String!) { issue(id: $id) { id } }";
    let (status, answer) = graphql(&fake, &format!("Bearer {KEY}"), query, json!({"id": "ENG-12"})).await;
    assert_eq!((status, &answer["errors"][0]["extensions"]["code"]), (400, &json!("AUTHENTICATION_ERROR")));
    let (status, answer) = graphql(&fake, KEY, "query { issue(id: ", json!({})).await;
    assert_eq!((status, &answer["errors"][0]["extensions"]["code"]), (400, &json!("GRAPHQL_PARSE_FAILED")));
    let (status, answer) = graphql(&fake, KEY, "query { issue(id: \"ENG-12\") { id priority } }", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(answer["errors"][0]["message"], "Cannot query field \"priority\" on type \"Issue\".");
    let (status, answer) = graphql(&fake, KEY, "mutation { issueDelete(id: \"x\") { success } }", json!({})).await;
    assert_eq!(
        (status, &answer["errors"][0]["message"]),
        (400, &json!("Cannot query field \"issueDelete\" on type \"Mutation\"."))
    );
    let (status, answer) = graphql(&fake, KEY, query, json!({})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    let (status, _) = graphql(&fake, KEY, "query Q($id: ID!) { issue(id: $id) { id } }", json!({"id": "x"})).await;
    assert_eq!(status, 400, "ID! where String! is expected");
    let (status, _) = graphql(&fake, KEY, "query { issue(id: \"ENG-12\") { comments { id } } }", json!({})).await;
    assert_eq!(status, 400, "comments has no id");
    let violations_so_far = fake.violations().len();
    assert_eq!(violations_so_far, 7, "{:#?}", fake.violations());

    // An unknown issue is Linear's entity-not-found, and no violation.
    let (status, answer) = graphql(&fake, KEY, query, json!({"id": "ENG-99"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["data"], Value::Null);
    assert_eq!(answer["errors"][0]["message"], "Entity not found: Issue");
    assert_eq!(answer["errors"][0]["extensions"]["code"], "INVALID_INPUT");
    assert_eq!(fake.violations().len(), violations_so_far);
}

#[tokio::test]
async fn injected_failures_answer_as_linear_does() {
    let fake = fake().await;
    fake.fail_next(1, Failure::RateLimited { retry_after_secs: 3 });
    let answer = client()
        .post(format!("{}/graphql", fake.base_url()))
        .header("authorization", KEY)
        .json(&json!({"query": "{ issue(id: \"ENG-12\") { id } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.headers()["x-ratelimit-requests-remaining"], "0");
    assert_eq!(answer.headers()["retry-after"], "3");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATELIMITED");
    fake.fail_next(1, Failure::ServerError);
    let (status, _) = graphql(&fake, KEY, "{ issue(id: \"ENG-12\") { id } }", json!({})).await;
    assert_eq!(status, 500);
    fake.fail_next(1, Failure::Status(418));
    let (status, body) = graphql(&fake, KEY, "{ issue(id: \"ENG-12\") { id } }", json!({})).await;
    assert_eq!((status, body["errors"][0]["message"].as_str()), (418, Some("fake: an injected failure")));
    assert_eq!(fake.requests().len(), 3);
    assert!(fake.violations().is_empty());
}

#[test]
fn signs_with_hmac_sha256() {
    assert_eq!(
        linear::sign("key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}
