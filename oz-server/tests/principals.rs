//! Users, roles and credentials through the admin API, against a real server: what each role may do,
//! revocation, rotation and expiry taking effect on the next request, and a run's workload token
//! reading only its own run's environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::TestServer;

/// Makes a user with `role` in team A and an API key for it; returns the key.
async fn key_for(t: &TestServer, role: &str) -> String {
    let (status, user) = t.post("/admin/users", &t.key_a, json!({"name": format!("a {role}"), "role": role})).await;
    assert_eq!(status, 200, "{user}");
    let (status, key) = t.post("/admin/keys", &t.key_a, json!({"name": role, "user_id": user["id"]})).await;
    assert_eq!(status, 200, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_what_it_may_and_no_more() {
    let t = TestServer::start().await;
    let viewer = key_for(&t, "viewer").await;
    let member = key_for(&t, "member").await;
    let run = t.create_run(&t.key_a, "w1", "someone's run").await;

    // A viewer reads, and cannot cancel, create or administer.
    assert_eq!(t.get(&format!("/agent/runs/{run}"), &viewer).await.0, 200);
    assert_eq!(t.get("/agent/environments", &viewer).await.0, 200);
    let (status, body) = t.post(&format!("/agent/runs/{run}/cancel"), &viewer, json!({})).await;
    assert_eq!(status, 403, "a viewer cancelled a run: {body}");
    assert_eq!(body["error"], "not_authorized");
    assert!(detail(&body).contains("member"), "{body}");
    assert_eq!(t.post("/agent/runs", &viewer, json!({"prompt": "p", "config": {"worker_host": "w1"}})).await.0, 403);
    assert_eq!(t.post("/agent/environments", &viewer, json!({"name": "e"})).await.0, 403);
    assert_eq!(t.get("/admin/keys", &viewer).await.0, 403);
    assert_eq!(t.state_of(&t.key_a, &run).await, "QUEUED", "the refused cancel changed nothing");

    // A member runs and cancels, manages environments, and cannot administer.
    let (status, body) = t.post(&format!("/agent/runs/{run}/cancel"), &member, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(t.post("/agent/environments", &member, json!({"name": "e"})).await.0, 200);
    assert_eq!(t.get("/admin/users", &member).await.0, 403);
    assert_eq!(t.post("/admin/keys", &member, json!({"name": "more"})).await.0, 403);
    assert_eq!(
        t.post("/integrations", &member, json!({"name": "i", "prompt": "x"})).await.0,
        403,
        "integrations are an admin's"
    );

    // Another team's admin sees none of it.
    assert_eq!(t.get(&format!("/agent/runs/{run}"), &t.key_b).await.0, 404);
    let (_, users_b) = t.get("/admin/users", &t.key_b).await;
    assert_eq!(users_b["users"].as_array().unwrap().len(), 1, "team b lists only its own: {users_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_grants_more_than_its_user_has() {
    let t = TestServer::start().await;
    let (_, viewer) = t.post("/admin/users", &t.key_a, json!({"name": "v", "role": "viewer"})).await;
    let (status, body) =
        t.post("/admin/keys", &t.key_a, json!({"name": "k", "user_id": viewer["id"], "role": "admin"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(detail(&body).contains("above the user's role"), "{body}");
    // An admin's key narrowed to viewer acts as a viewer.
    let (status, narrowed) = t.post("/admin/keys", &t.key_a, json!({"name": "read-only", "role": "viewer"})).await;
    assert_eq!(status, 200, "{narrowed}");
    let narrowed = narrowed["key"].as_str().unwrap();
    assert_eq!(t.get("/agent/runs", narrowed).await.0, 200);
    assert_eq!(t.post("/agent/runs", narrowed, json!({"prompt": "p", "config": {"worker_host": "w"}})).await.0, 403);
    // A user in another team is not this team's to issue keys for.
    let (_, other) = t.post("/admin/users", &t.key_b, json!({"name": "b", "role": "admin"})).await;
    let (status, _) = t.post("/admin/keys", &t.key_a, json!({"name": "x", "user_id": other["id"]})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_rotated_expired_and_disabled_keys_are_refused_on_the_next_request() {
    let t = TestServer::start().await;
    let member = key_for(&t, "member").await;
    let id = member.trim_start_matches("oz_").split('.').next().unwrap().to_owned();
    assert_eq!(t.get("/agent/runs", &member).await.0, 200);

    // Rotation: the new secret works, the old one does not, with the same rights.
    let (status, rotated) = t.post(&format!("/admin/keys/{id}/rotate"), &t.key_a, json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(t.get("/agent/runs", &member).await.0, 401, "the old secret after rotation");
    assert_eq!(t.post("/agent/environments", &new_key, json!({"name": "still a member"})).await.0, 200);
    assert_eq!(t.get("/admin/keys", &new_key).await.0, 403, "rotation keeps the role");

    // Revocation.
    let new_id = rotated["item"]["id"].as_str().unwrap();
    let (status, revoked) = t.call(Method::DELETE, &format!("/admin/keys/{new_id}"), &t.key_a, None).await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (status, body) = t.get("/agent/runs", &new_key).await;
    assert_eq!(status, 401);
    assert!(detail(&body).contains("revoked"), "{body}");

    // Expiry.
    let (_, short) = t.post("/admin/keys", &t.key_a, json!({"name": "short", "expires_in_secs": 1})).await;
    let short = short["key"].as_str().unwrap().to_owned();
    assert_eq!(t.get("/agent/runs", &short).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = t.get("/agent/runs", &short).await;
    assert_eq!(status, 401, "{body}");
    assert!(detail(&body).contains("expired"), "{body}");

    // A disabled user's keys stop working.
    let (_, user) = t.post("/admin/users", &t.key_a, json!({"name": "leaver", "role": "member"})).await;
    let (_, key) = t.post("/admin/keys", &t.key_a, json!({"name": "theirs", "user_id": user["id"]})).await;
    let theirs = key["key"].as_str().unwrap().to_owned();
    assert_eq!(t.get("/agent/runs", &theirs).await.0, 200);
    let uid = user["id"].as_str().unwrap();
    let (status, _) =
        t.call(Method::PUT, &format!("/admin/users/{uid}"), &t.key_a, Some(json!({"disabled": true}))).await;
    assert_eq!(status, 200);
    assert_eq!(t.get("/agent/runs", &theirs).await.0, 401);

    // The list shows every key without a secret.
    let (_, keys) = t.get("/admin/keys", &t.key_a).await;
    let text = keys.to_string();
    for secret in [&member, &new_key, &short, &theirs] {
        assert!(!text.contains(secret.split('.').nth(1).unwrap()), "a secret is listed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_credential_opens_nothing_but_the_worker_socket() {
    let t = TestServer::start().await;
    let credential = t.worker_credential(&t.key_a, "w1").await;
    let (status, body) = t.get("/agent/runs", &credential).await;
    assert_eq!(status, 403, "{body}");
    assert!(detail(&body).contains("worker credential"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_server_admin_creates_teams() {
    let t = TestServer::start().await;
    let (status, created) = t.post("/admin/teams", &t.key_a, json!({"name": "third"})).await;
    assert_eq!(status, 200, "{created}");
    let third_key = created["key"]["key"].as_str().unwrap().to_owned();
    assert_eq!(t.get("/agent/runs", &third_key).await.0, 200);
    let (status, _) = t.post("/admin/teams", &third_key, json!({"name": "fourth"})).await;
    assert_eq!(status, 403, "a new team's admin is not a server admin");
}

/// A rotated key keeps its rights, so only a server admin rotates a server admin's key: a team
/// admin would otherwise mint themselves one (and lock its owner out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_cannot_rotate_the_server_admins_key() {
    let t = TestServer::start().await;
    let admin = key_for(&t, "admin").await;
    let keys = t.store.api_keys(&t.team_a).await.unwrap();
    let root = keys.iter().find(|k| k.server_admin).unwrap().id.clone();
    let (status, body) = t.post(&format!("/admin/keys/{root}/rotate"), &admin, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(t.get("/agent/runs", &t.key_a).await.0, 200, "the server admin's key still works");
    let (status, rotated) = t.post(&format!("/admin/keys/{root}/rotate"), &t.key_a, json!({})).await;
    assert_eq!(status, 200, "a server admin rotates its own: {rotated}");
}

/// A run's workload token reads its own run's environment and no other (404, as for another team's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_token_reads_only_its_own_runs_environment() {
    let t = TestServer::start().await;
    let (_, mine) = t.post("/agent/environments", &t.key_a, json!({"name": "mine", "env_vars": {"A": "1"}})).await;
    let (_, other) =
        t.post("/agent/environments", &t.key_a, json!({"name": "other", "env_vars": {"OTHER_SETTING": "x"}})).await;
    let (mine, other) = (mine["uid"].as_str().unwrap(), other["uid"].as_str().unwrap());
    let mut w = t.worker(&t.key_a, "w1").await;
    let (status, run) = t
        .post("/agent/runs", &t.key_a, json!({"prompt": "p", "config": {"worker_host": "w1", "environment_id": mine}}))
        .await;
    assert_eq!(status, 200, "{run}");
    let oz_core::wire::worker::ServerMessage::TaskAssignment(a) = w.next().await else { panic!("no assignment") };
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();

    let (status, list) = t.get("/agent/environments", &token).await;
    assert_eq!(status, 200);
    let uids: Vec<&str> = list["environments"].as_array().unwrap().iter().map(|e| e["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, [mine], "a run token lists only its run's environment");
    assert!(!list.to_string().contains("OTHER_SETTING"));
    assert_eq!(t.get(&format!("/agent/environments/{mine}"), &token).await.0, 200);
    assert_eq!(t.get(&format!("/agent/environments/{other}"), &token).await.0, 404);
    let another_run = t.create_run(&t.key_a, "w2", "not yours").await;
    assert_eq!(t.get(&format!("/agent/runs/{another_run}"), &token).await.0, 404);
}

/// A local run's runner is handed its environment's secrets on the registering machine: a member
/// (who may not read secrets) registers local runs only without one; nothing is made when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_registers_a_local_run_only_without_an_environment() {
    let t = TestServer::start().await;
    let member = key_for(&t, "member").await;
    let (status, env) = t.post("/agent/environments", &member, json!({"name": "with secrets"})).await;
    assert_eq!(status, 200, "{env}");
    let env_id = env["uid"].as_str().unwrap();
    let local = json!({"prompt": "on my laptop", "config": {"environment_id": env_id}});

    let (status, body) = t.post("/agent/runs/local", &member, local.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(detail(&body).contains("admin") && detail(&body).contains("secrets"), "{body}");
    assert!(body.get("workload_token").is_none());
    let (_, list) = t.get("/agent/runs", &t.key_a).await;
    assert!(list["runs"].as_array().unwrap().is_empty(), "the refused registration made no run: {list}");

    let (status, body) = t.post("/agent/runs/local", &member, json!({"prompt": "on my laptop"})).await;
    assert_eq!(status, 200, "without an environment a member may: {body}");
    let (status, body) = t.post("/agent/runs/local", &t.key_a, local).await;
    assert_eq!(status, 200, "an admin may: {body}");
}
