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

    fake.fail_next(2, Failure::Status(503));
    for _ in 0..2 {
        let answer = request(reqwest::Method::GET, format!("{}/app", fake.base_url()), "x").send().await.unwrap();
        assert_eq!(answer.status(), 503);
        assert!(answer.headers().get("retry-after").is_none());
        assert_eq!(answer.json::<Value>().await.unwrap()["message"], "fake: an injected failure");
    }
    assert!(fake.violations().is_empty(), "an injected failure is no violation");
}

#[test]
#[should_panic(expected = "not an HTTP error status")]
fn only_error_statuses_can_be_injected() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { fake().await.fail_next(1, Failure::Status(200)) });
}

#[tokio::test]
async fn an_app_jwt_may_name_the_client_id_and_every_jwt_is_kept() {
    const CLIENT_ID: &str = "Iv23liFakeClientId01";
    let fake = FakeGitHub::start_with_client_id(APP_ID, CLIENT_ID, TEST_APP_PUBLIC_PEM).await;
    let url = format!("{}/app", fake.base_url());
    let by_id = github::app_jwt(APP_ID, TEST_APP_PRIVATE_PEM);
    assert_eq!(send(request(reqwest::Method::GET, url.clone(), &by_id)).await.0, 200);
    let by_client_id = client_id_jwt(CLIENT_ID);
    assert_eq!(send(request(reqwest::Method::GET, url.clone(), &by_client_id)).await.0, 200);
    let other_client = client_id_jwt("Iv23liSomeoneElse");
    let (status, answer) = send(request(reqwest::Method::GET, url.clone(), &other_client)).await;
    assert_eq!((status, answer["message"].as_str().is_some_and(|m| m.contains("'iss'"))), (401, true));
    assert_eq!(send(request(reqwest::Method::GET, url, "not.a.jwt")).await.0, 401);

    let issuers: Vec<Value> = fake.jwt_claims().into_iter().map(|c| c["iss"].clone()).collect();
    assert_eq!(issuers, [json!(APP_ID), json!(CLIENT_ID), json!("Iv23liSomeoneElse")]);
    assert_eq!(fake.jwts(), [by_id, by_client_id, other_client, "not.a.jwt".to_owned()], "verified or not");

    // Without a client id, only the app id is the App's.
    let plain = FakeGitHub::start(APP_ID, TEST_APP_PUBLIC_PEM).await;
    let url = format!("{}/app", plain.base_url());
    assert_eq!(send(request(reqwest::Method::GET, url, &client_id_jwt(CLIENT_ID))).await.0, 401);
}

#[tokio::test]
async fn a_misbehaving_github_grants_one_more_repository_than_asked() {
    let fake = fake().await;
    fake.grant_extra_repo();
    let (status, answer) = mint(&fake, json!({"contents": "read"})).await;
    assert_eq!(status, 201, "{answer}");
    let names: Vec<&str> =
        answer["repositories"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(fake.minted()[0].repos, ["api", "web"]);
}

/// An App JWT as [`github::app_jwt`] makes them, but whose `iss` is the client id `client_id`.
fn client_id_jwt(client_id: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs1v15::{Signature, SigningKey};
    use rsa::sha2::Sha256;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::PrivateKey::from_pkcs1_pem(TEST_APP_PRIVATE_PEM).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(json!({"iss": client_id, "iat": now - 60, "exp": now + 540}).to_string());
    let input = format!("{head}.{claims}");
    let signature: Signature = SigningKey::<Sha256>::new(key).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_vec()))
}
