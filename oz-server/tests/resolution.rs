//! What a run's runner resolves with its workload token (`GET /agent/runs/{id}/resolved`), against a
//! real server: only its own run, only until its harness starts, secrets by reference and never in
//! the assignment, and git credentials minted by the team's GitHub App (a fake GitHub API that
//! verifies the App's JWT) for exactly the environment's repositories, revoked when the run ends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unreachable_pub, dead_code)]

#[path = "support/mod.rs"]
mod server;

use std::time::Duration;

use oz_core::wire::worker::{ServerMessage, TaskClaimed, WorkerMessage};
use oz_provider_fakes::github::{FakeGitHub, TEST_APP_PRIVATE_PEM, TEST_APP_PUBLIC_PEM};
use serde_json::{Value, json};
use server::TestServer;

const NPM_TOKEN: &str = "npm_resolved-only-by-its-run-7f3a";
const ANTHROPIC_KEY: &str = "sk-ant-resolved-only-by-its-run-91c2";

fn report(event: Value) -> Value {
    let mut body = event;
    body["at"] = json!(jiff::Timestamp::now().to_string());
    body
}

async fn put(t: &TestServer, path: &str, body: Value) {
    let (status, answer) = t.call(reqwest::Method::PUT, path, &t.key_a, Some(body)).await;
    assert_eq!(status, 200, "PUT {path}: {answer}");
}

/// Starts a run on worker `worker`, which claims it, with `worker` `config`; its assignment.
async fn assigned(
    t: &TestServer,
    worker: &mut server::Worker,
    config: Value,
) -> Box<oz_core::wire::worker::TaskAssignment> {
    let (status, run) = t.post("/agent/runs", &t.key_a, json!({"prompt": "p", "config": config})).await;
    assert_eq!(status, 200, "{run}");
    let ServerMessage::TaskAssignment(a) = worker.next().await else { panic!("no assignment") };
    let claimed = TaskClaimed { task_id: a.task_id.clone(), worker_id: worker.worker_id.clone(), execution_id: None };
    worker.send(WorkerMessage::TaskClaimed(claimed)).await;
    t.wait_state(&t.key_a, &a.task_id, "CLAIMED").await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_token_resolves_its_own_run_only_and_only_until_the_harness_starts() {
    let t = TestServer::start().await;
    put(&t, "/secrets/npm-token", json!({"value": NPM_TOKEN})).await;
    put(&t, "/secrets/anthropic", json!({"value": ANTHROPIC_KEY})).await;
    let (status, env) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "e", "env_vars": {"LOG_LEVEL": "debug"}, "secrets": {"NPM_TOKEN": "npm-token"}}),
        )
        .await;
    assert_eq!(status, 200, "{env}");
    let env_id = env["uid"].as_str().unwrap();
    assert!(!env.to_string().contains(NPM_TOKEN));
    // A reference to a secret the team does not have is refused up front.
    let (status, refused) =
        t.post("/agent/environments", &t.key_a, json!({"name": "bad", "secrets": {"X": "no-such-secret"}})).await;
    assert_eq!(status, 400, "{refused}");

    let mut w = t.worker(&t.key_a, "w1").await;
    let config = json!({"worker_host": "w1", "environment_id": env_id,
        "harness_auth_secrets": {"claude_auth_secret_name": "anthropic"}});
    let a = assigned(&t, &mut w, config.clone()).await;
    let b = assigned(&t, &mut w, config).await;
    let wire = serde_json::to_string(&a).unwrap();
    for secret in [NPM_TOKEN, ANTHROPIC_KEY] {
        assert!(!wire.contains(secret), "the assignment carries a secret value: {wire}");
    }
    assert_eq!(a.env_vars["LOG_LEVEL"], "debug", "plain settings still travel with the task");
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let (run_a, run_b) = (a.task_id.clone(), b.task_id.clone());

    let (status, resolved) = t.get(&format!("/agent/runs/{run_a}/resolved"), &token).await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["prompt"], "p");
    assert_eq!(resolved["environment"]["name"], "e");
    assert_eq!(resolved["secret_env"], json!({"NPM_TOKEN": NPM_TOKEN, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}));
    assert_eq!(t.get(&format!("/agent/runs/{run_a}/resolved"), &token).await.0, 200, "repeatable (retries)");

    // Another run's secrets: 404, as for a run that does not exist. A team key is not a run token.
    assert_eq!(t.get(&format!("/agent/runs/{run_b}/resolved"), &token).await.0, 404);
    assert_eq!(t.get(&format!("/agent/runs/{run_a}/resolved"), &t.key_a).await.0, 401);
    let b_token = b.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    assert_eq!(t.get(&format!("/agent/runs/{run_a}/resolved"), &b_token).await.0, 404);

    // Once the harness runs, the token it might have got hold of resolves nothing.
    let path = format!("/agent/runs/{run_a}/report");
    for event in
        [json!({"event": "started", "version": "t"}), json!({"event": "harness_started", "harness": "command"})]
    {
        let (status, answer) = t.post(&path, &token, report(event)).await;
        assert_eq!(status, 204, "{answer}");
    }
    let (status, closed) = t.get(&format!("/agent/runs/{run_a}/resolved"), &token).await;
    assert_eq!(status, 409, "{closed}");
    assert!(!closed.to_string().contains(NPM_TOKEN));

    // The token dies with its run.
    let finished = report(json!({"event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "ok"}));
    assert_eq!(t.post(&path, &token, finished).await.0, 204);
    t.wait_state(&t.key_a, &run_a, "SUCCEEDED").await;
    let (status, _) = t.post(&path, &token, report(json!({"event": "output", "stream": "stdout", "text": "x"}))).await;
    assert_eq!(status, 401, "a finished run's token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_token_covers_exactly_the_environments_repositories_and_is_revoked_at_the_end() {
    const CLIENT_ID: &str = "Iv1.resolution0123";
    let github = FakeGitHub::start_with_client_id(4242, CLIENT_ID, TEST_APP_PUBLIC_PEM).await;
    github.add_installation(77, "acme", &["api", "web", "secret-infra"], &[("contents", "write")]);
    let t = TestServer::start().await;
    put(&t, "/secrets/github-app-key", json!({"value": TEST_APP_PRIVATE_PEM})).await;
    let provider = json!({"kind": "github_app", "app": CLIENT_ID, "private_key_secret": "github-app-key",
        "api_url": github.base_url()});
    put(&t, "/admin/git-providers/github.com", provider).await;
    let (status, listed) = t.get("/admin/git-providers", &t.key_a).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["git_providers"][0]["host"], "github.com");
    assert!(!listed.to_string().contains("PRIVATE KEY"), "{listed}");
    // A member may not configure one.
    let (_, user) = t.post("/admin/users", &t.key_a, json!({"name": "m", "role": "member"})).await;
    let (_, key) = t.post("/admin/keys", &t.key_a, json!({"name": "m", "user_id": user["id"]})).await;
    let member = key["key"].as_str().unwrap();
    let (status, _) = t
        .call(
            reqwest::Method::PUT,
            "/admin/git-providers/github.com",
            member,
            Some(json!({"kind": "static", "token_secret": "x"})),
        )
        .await;
    assert_eq!(status, 403);

    let (_, env) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "e", "github_repos": [{"owner": "acme", "repo": "api"}, {"owner": "acme", "repo": "web"}]}),
        )
        .await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let a = assigned(&t, &mut w, json!({"worker_host": "w1", "environment_id": env["uid"]})).await;
    assert!(!serde_json::to_string(&a).unwrap().contains("ghs_"), "a git token in the assignment");
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let run = a.task_id.clone();
    assert!(github.minted().is_empty(), "nothing is minted before the runner asks");

    let (status, resolved) = t.get(&format!("/agent/runs/{run}/resolved"), &token).await;
    assert_eq!(status, 200, "{resolved}");
    let minted = github.minted();
    assert_eq!(minted.len(), 1, "one installation token for the run");
    let mut repos = minted[0].repos.clone();
    repos.sort();
    assert_eq!(repos, ["api", "web"], "scoped to exactly the environment's repositories");
    assert_eq!(minted[0].installation_id, 77);
    let credential = &resolved["git_credentials"][0];
    assert_eq!(credential["host"], "github.com");
    assert_eq!(credential["username"], "x-access-token");
    assert_eq!(credential["token"], minted[0].token.as_str());
    assert!(!github.jwt_claims().is_empty(), "the fake verified the App's JWT");
    assert!(!minted[0].revoked);

    let finished = report(json!({"event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "ok"}));
    assert_eq!(t.post(&format!("/agent/runs/{run}/report"), &token, finished).await.0, 204);
    t.wait_state(&t.key_a, &run, "SUCCEEDED").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !github.minted()[0].revoked {
        assert!(tokio::time::Instant::now() < deadline, "the run's token was not revoked when it ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = t.get(&format!("/agent/runs/{run}/transcript"), &t.key_a).await.1;
    assert!(!events.to_string().contains(&minted[0].token), "the token shows in the run's events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_a_read_only_preparation_credential_for_its_own_teams_environments_only() {
    const CLIENT_ID: &str = "Iv1.preparation0123";
    let github = FakeGitHub::start_with_client_id(4242, CLIENT_ID, TEST_APP_PUBLIC_PEM).await;
    github.add_installation(78, "acme", &["api", "web", "secret-infra"], &[("contents", "write")]);
    let t = TestServer::start().await;
    put(&t, "/secrets/github-app-key", json!({"value": TEST_APP_PRIVATE_PEM})).await;
    let provider = json!({"kind": "github_app", "app": CLIENT_ID, "private_key_secret": "github-app-key",
        "api_url": github.base_url()});
    put(&t, "/admin/git-providers/github.com", provider).await;
    let (_, env) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "e", "github_repos": [{"owner": "acme", "repo": "api"}, {"owner": "acme", "repo": "web"}]}),
        )
        .await;
    let env_id = env["uid"].as_str().unwrap().to_owned();
    let path = format!("/selfhosted/worker/environments/{env_id}/git-credentials");
    let worker = t.worker_credential(&t.key_a, "w1").await;

    let (status, answer) = t.post(&path, &worker, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let minted = github.minted();
    assert_eq!(minted.len(), 1);
    let mut repos = minted[0].repos.clone();
    repos.sort();
    assert_eq!(repos, ["api", "web"], "scoped to exactly the environment's repositories");
    assert_eq!(
        minted[0].permissions.get("contents").map(String::as_str),
        Some("read"),
        "read-only: {:?}",
        minted[0].permissions
    );
    assert_eq!(answer["git_credentials"][0]["token"], minted[0].token.as_str());
    assert_eq!(answer["git_credentials"][0]["host"], "github.com");

    // The team's workers share it while it is good: no token per call.
    let (status, again) = t.post(&path, &t.worker_credential(&t.key_a, "w2").await, json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["git_credentials"][0]["token"], minted[0].token.as_str());
    assert_eq!(github.minted().len(), 1);

    // New repositories: a new token for them, and the old one revoked.
    put(
        &t,
        &format!("/agent/environments/{env_id}"),
        json!({"name": "e", "github_repos": [{"owner": "acme", "repo": "api"}]}),
    )
    .await;
    let (status, changed) = t.post(&path, &worker, json!({})).await;
    assert_eq!(status, 200, "{changed}");
    let minted = github.minted();
    assert_eq!(minted.len(), 2);
    assert!(minted[0].revoked, "the token for the old repositories was not revoked");
    assert_eq!(minted[1].repos, ["api"]);
    assert_eq!(changed["git_credentials"][0]["token"], minted[1].token.as_str());

    // Deleting the environment revokes its preparation credential.
    let (status, _) = t.call(reqwest::Method::DELETE, &format!("/agent/environments/{env_id}"), &t.key_a, None).await;
    assert_eq!(status, 200);
    assert!(github.minted()[1].revoked, "the deleted environment's credential still works");
    assert_eq!(t.post(&path, &worker, json!({})).await.0, 404);
    let (_, env) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "e2", "github_repos": [{"owner": "acme", "repo": "api"}]}),
        )
        .await;
    let path = format!("/selfhosted/worker/environments/{}/git-credentials", env["uid"].as_str().unwrap());

    // Only a worker credential, only its own team's environments.
    assert_eq!(t.post(&path, &t.key_a, json!({})).await.0, 403, "an API key is not a worker");
    let other = t.worker_credential(&t.key_b, "w1").await;
    assert_eq!(t.post(&path, &other, json!({})).await.0, 404, "another team's worker");
    // No provider for the environment's host: nothing, and nothing minted.
    let (_, plain) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "p", "github_repos": [{"owner": "acme", "repo": "api"}], "env_vars": {"OZ_GIT_BASE_URL": "https://git.example.com"}}),
        )
        .await;
    let (status, none) = t
        .post(
            &format!("/selfhosted/worker/environments/{}/git-credentials", plain["uid"].as_str().unwrap()),
            &worker,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["git_credentials"], json!([]));
    assert_eq!(github.minted().len(), 2, "nothing minted for a refused caller or a host without a provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolution_closes_after_its_window_even_if_the_harness_never_reports() {
    let config = oz_server::ServerConfig { resolution_window: Duration::from_millis(800), ..server::config() };
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    let t = TestServer::start_with(config, store).await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let a = assigned(&t, &mut w, json!({"worker_host": "w1"})).await;
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let path = format!("/agent/runs/{}/resolved", a.task_id);
    assert_eq!(t.get(&path, &token).await.0, 200);
    assert_eq!(t.get(&path, &token).await.0, 200, "a retry within the window");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(t.get(&path, &token).await.0, 409, "the window closed without a harness_started report");
}

/// The secrets a git provider names (a GitHub App's private key, a token that mints tokens) are the
/// provider's: no environment or agent config can have them handed to a run, whoever wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_providers_secret_is_never_handed_to_a_run() {
    const PAT: &str = "ghp_provider_only_token_0123456789";
    let t = TestServer::start().await;
    put(&t, "/secrets/pat", json!({"value": PAT})).await;
    put(&t, "/secrets/ok", json!({"value": "fine"})).await;
    // An environment made before the provider names the secret.
    let (status, early) =
        t.post("/agent/environments", &t.key_a, json!({"name": "early", "secrets": {"X": "pat"}})).await;
    assert_eq!(status, 200, "{early}");
    put(&t, "/admin/git-providers/github.com", json!({"kind": "static", "token_secret": "pat"})).await;

    let (status, body) =
        t.post("/agent/environments", &t.key_a, json!({"name": "late", "secrets": {"X": "pat"}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("git provider"), "{body}");
    let (status, body) = t
        .post(
            "/agent/runs",
            &t.key_a,
            json!({"prompt": "p", "config": {"worker_host": "w1",
            "harness_auth_secrets": {"claude_auth_secret_name": "pat"}}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t
        .post(
            "/agent/runs",
            &t.key_a,
            json!({"prompt": "p", "config": {"worker_host": "w1",
            "harness_auth_secrets": {"claude_auth_secret_name": "no-such"}}}),
        )
        .await;
    assert_eq!(status, 400, "a missing secret is refused at creation: {body}");

    let mut w = t.worker(&t.key_a, "w1").await;
    let a = assigned(&t, &mut w, json!({"worker_host": "w1", "environment_id": early["uid"]})).await;
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let (status, body) = t.get(&format!("/agent/runs/{}/resolved", a.task_id), &token).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains(PAT));
}

/// An attempt whose run goes back to the queue loses its token: it can neither report nor resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_attempts_token_is_revoked() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let (status, run) = t.post("/agent/runs", &t.key_a, json!({"prompt": "p", "config": {"worker_host": "w1"}})).await;
    assert_eq!(status, 200);
    let ServerMessage::TaskAssignment(a) = w.next().await else { panic!("no assignment") };
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    drop(w);
    t.wait_state(&t.key_a, run["run_id"].as_str().unwrap(), "QUEUED").await;
    // The revocation follows the state change (by a moment).
    let path = format!("/agent/runs/{}/resolved", a.task_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while t.get(&path, &token).await.0 != 401 {
        assert!(tokio::time::Instant::now() < deadline, "the requeued attempt's token still resolves");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = t
        .post(&format!("/agent/runs/{}/report", a.task_id), &token, report(json!({"event": "started", "version": "t"})))
        .await;
    assert_eq!(status, 401);
}
