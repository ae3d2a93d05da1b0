//! `FakeGitHub`.

use oz_provider_fakes::Failure;
use oz_provider_fakes::github::{self, FakeGitHub, TEST_APP_PRIVATE_PEM, TEST_APP_PUBLIC_PEM, TEST_OTHER_PRIVATE_PEM};
use serde_json::{Value, json};

use crate::client;

const APP_ID: u64 = 4242;

async fn fake() -> FakeGitHub {
    let fake = FakeGitHub::start(APP_ID, TEST_APP_PUBLIC_PEM).await;
    fake.add_installation(
        77,
        "acme",
        &["api", "web"],
        &[("issues", "write"), ("pull_requests", "write"), ("contents", "read")],
    );
    fake
}

fn request(method: reqwest::Method, url: String, bearer: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, url)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header("user-agent", "oz-test")
        .bearer_auth(bearer)
}

async fn send(builder: reqwest::RequestBuilder) -> (u16, Value) {
    let answer = builder.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn mint(fake: &FakeGitHub, permissions: Value) -> (u16, Value) {
    let url = format!("{}/app/installations/77/access_tokens", fake.base_url());
    let jwt = github::app_jwt(APP_ID, TEST_APP_PRIVATE_PEM);
    send(request(reqwest::Method::POST, url, &jwt).json(&json!({"repositories": ["api"], "permissions": permissions})))
        .await
}

#[tokio::test]
async fn mints_a_token_then_comments_and_edits() {
    let fake = fake().await;
    fake.seed_issue("acme/api", 5, "Flaky test", "It fails on Tuesdays");
    let (status, minted) = mint(&fake, json!({"issues": "write"})).await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ghs_"));

    let url = format!("{}/repos/acme/api/issues/5/comments", fake.base_url());
    let (status, comment) = send(request(reqwest::Method::POST, url, &token).json(&json!({"body": "On it"}))).await;
    assert_eq!(status, 201, "{comment}");
    let id = comment["id"].as_u64().unwrap();
    assert_eq!(comment["html_url"], format!("https://github.com/acme/api/issues/5#issuecomment-{id}"));
    assert_eq!(comment["user"], json!({"login": "oz-fake-app[bot]", "type": "Bot"}));

    let url = format!("{}/repos/acme/api/issues/comments/{id}", fake.base_url());
    let (status, edited) = send(request(reqwest::Method::PATCH, url, &token).json(&json!({"body": "Done"}))).await;
    assert_eq!((status, edited["body"].as_str()), (200, Some("Done")));
    let url = format!("{}/repos/acme/api/issues/comments/1", fake.base_url());
    let (status, _) = send(request(reqwest::Method::PATCH, url, &token).json(&json!({"body": "x"}))).await;
    assert_eq!(status, 404);

    let url = format!("{}/repos/acme/api/issues/5", fake.base_url());
    let (status, issue) = send(request(reqwest::Method::GET, url.clone(), &token)).await;
    assert_eq!((status, issue["title"].as_str(), issue["comments"].as_u64()), (200, Some("Flaky test"), Some(1)));
    let (_, listed) = send(request(reqwest::Method::GET, format!("{url}/comments"), &token)).await;
    assert_eq!(listed[0]["body"], "Done");
    let url = format!("{}/repos/acme/api/issues/6/comments", fake.base_url());
    let (status, _) = send(request(reqwest::Method::POST, url, &token).json(&json!({"body": "x"}))).await;
    assert_eq!(status, 404, "not a seeded issue");

    let comments = fake.comments();
    assert_eq!(comments.len(), 1);
    assert_eq!((comments[0].repo.as_str(), comments[0].number, comments[0].body.as_str()), ("acme/api", 5, "Done"));
    assert_eq!(comments[0].updates, ["Done"]);
    assert_eq!(fake.minted()[0].repos, ["api"]);
    assert_eq!(fake.jwt_claims()[0]["iss"], json!(APP_ID));
    assert_eq!(fake.violations().len(), 2, "the unknown comment and issue: {:?}", fake.violations());
}

#[tokio::test]
async fn refuses_what_github_refuses() {
    let fake = fake().await;
    let (status, _) = mint(&fake, json!({"administration": "write"})).await;
    assert_eq!(status, 422);
    let read_only = fake.mint_token(77, &["api"], &[("contents", "read")]);
    let comment = |repo: &str, token: &str| {
        let url = format!("{}/repos/acme/{repo}/issues/5/comments", fake.base_url());
        request(reqwest::Method::POST, url, token).json(&json!({"body": "hi"}))
    };
    let (status, answer) = send(comment("api", &read_only)).await;
    assert_eq!((status, answer["message"].as_str()), (403, Some("Resource not accessible by integration")));
    let writer = fake.mint_token(77, &["api"], &[("issues", "write")]);
    assert_eq!(send(comment("web", &writer)).await.0, 403, "the token does not cover web");
    assert_eq!(
        send(comment("api", "ghs_unknown")).await,
        (401, json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}))
    );
    let url = format!("{}/repos/acme/api/issues/5/comments", fake.base_url());
    assert_eq!(send(request(reqwest::Method::POST, url, &writer).json(&json!({"text": "hi"}))).await.0, 422);
    let url = format!("{}/app/installations/77/access_tokens", fake.base_url());
    let bad_jwt = github::app_jwt(APP_ID, TEST_OTHER_PRIVATE_PEM);
    assert_eq!(send(request(reqwest::Method::POST, url.clone(), &bad_jwt)).await.0, 401);
    let no_agent =
        client().post(url).header("accept", "application/vnd.github+json").header("x-github-api-version", "2022-11-28");
    assert_eq!(send(no_agent).await.0, 403);
    fake.expire_tokens();
    assert_eq!(send(comment("api", &writer)).await.0, 401, "an expired token");
    assert_eq!(fake.violations().len(), 8, "{:#?}", fake.violations());
    assert!(fake.comments().is_empty());
}

#[tokio::test]
async fn injected_failures_answer_as_github_does() {
    let fake = fake().await;
    fake.fail_next(1, Failure::RateLimited { retry_after_secs: 60 });
    fake.fail_next(1, Failure::ServerError);
    let answer = request(reqwest::Method::GET, format!("{}/app", fake.base_url()), "x").send().await.unwrap();
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "60");
    assert_eq!(answer.json::<Value>().await.unwrap()["message"], "API rate limit exceeded");
    let (status, body) = mint(&fake, json!({"issues": "write"})).await;
    assert_eq!((status, body), (502, json!({"message": "Server Error"})));
    assert_eq!(mint(&fake, json!({"issues": "write"})).await.0, 201);
    assert!(fake.minted().len() == 1 && fake.violations().is_empty());
}

#[test]
fn signs_webhooks_as_github_documents() {
    // The example of GitHub's "Validating webhook deliveries".
    assert_eq!(
        github::sign("It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}
