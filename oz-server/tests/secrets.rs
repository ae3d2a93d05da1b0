//! Team secrets against a real server on a database file: write-only through the API, an admin's to
//! set, sealed at rest (the database's bytes never hold a value), and still there after a restart
//! with the same keys; an integration's signing secret is sealed too, including one an older version
//! stored in the clear.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use oz_server::store::sqlite::SqliteStore;
use oz_server::store::{IntegrationRecord, IntegrationStore, Store};
use oz_server::vault::Keyring;
use serde_json::json;
use support::TestServer;

/// Every file of the database (the file, its WAL and shared memory), concatenated.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("oz.db") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn config(keys: &Keyring) -> oz_server::ServerConfig {
    oz_server::ServerConfig { secret_keys: Some(keys.clone()), ..support::config() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_write_only_admin_set_and_never_stored_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::generate("k1").unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("oz.db")).await.unwrap());
    let t = TestServer::start_with(config(&keys), store).await;
    let value = "npm_0nly-the-run-sees-this-2f9c";

    let (status, item) =
        t.call(reqwest::Method::PUT, "/secrets/npm-token", &t.key_a, Some(json!({"value": value}))).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["name"], "npm-token");
    assert!(!item.to_string().contains(value), "the answer carries the value");
    let (status, list) = t.get("/secrets", &t.key_a).await;
    assert_eq!(status, 200);
    assert_eq!(list["secrets"][0]["name"], "npm-token");
    assert!(!list.to_string().contains(value));
    assert_eq!(t.get("/secrets", &t.key_b).await.1["secrets"], json!([]), "another team sees none of it");

    // Only an admin sets one.
    let (_, user) = t.post("/admin/users", &t.key_a, json!({"name": "m", "role": "member"})).await;
    let (_, key) = t.post("/admin/keys", &t.key_a, json!({"name": "m", "user_id": user["id"]})).await;
    let member = key["key"].as_str().unwrap();
    assert_eq!(t.call(reqwest::Method::PUT, "/secrets/x", member, Some(json!({"value": "v"}))).await.0, 403);
    assert_eq!(t.get("/secrets", member).await.0, 200, "a member sees the names");
    for (name, body) in
        [("bad name", json!({"value": "v"})), ("ok", json!({"value": ""})), ("ok", json!({"secret": "v"}))]
    {
        let path = format!("/secrets/{}", name.replace(' ', "%20"));
        assert_eq!(t.call(reqwest::Method::PUT, &path, &t.key_a, Some(body)).await.0, 400, "{name}");
    }

    // An integration's signing secret is shown once and sealed at rest.
    let (status, integration) = t
        .post(
            "/integrations",
            &t.key_a,
            json!({"name": "alerts", "prompt": "look", "agent_config": {"worker_host": "w"}}),
        )
        .await;
    assert_eq!(status, 200, "{integration}");
    let signing = integration["secret"].as_str().unwrap().to_owned();

    let bytes = database_bytes(dir.path());
    assert!(!bytes.is_empty());
    assert!(!contains(&bytes, value), "a secret's value is in the database file");
    assert!(!contains(&bytes, &signing), "an integration's signing secret is in the database file");
    assert!(contains(&bytes, "npm-token"), "the search would have seen plain text (the name is stored)");

    // A restart with the same keys: the webhook still verifies with the sealed secret.
    t.server.shutdown().await;
    drop(t.store);
    let store = Arc::new(SqliteStore::open(&dir.path().join("oz.db")).await.unwrap());
    let server = oz_server::start(config(&keys), store).await.unwrap();
    let id = integration["id"].as_str().unwrap();
    let body = br#"{"alert": "disk full"}"#;
    let ts = jiff::Timestamp::now().as_second();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/integrations/{id}/webhook", server.url()))
        .header("x-oz-timestamp", ts.to_string())
        .header("x-oz-signature", oz_server::webhook::sign(&signing, ts, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());
}

/// A signing secret an older version stored in the clear is sealed when the server starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_secret_stored_in_the_clear_is_sealed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let (team, _) = oz_server::bootstrap_team(store.as_ref(), "old").await.unwrap();
    let clear = "whsec_from-an-older-version-7d1e";
    let now = jiff::Timestamp::now();
    store
        .insert_integration(&IntegrationRecord {
            id: "int_old".into(),
            team_id: team.clone(),
            name: "old".into(),
            kind: "webhook".into(),
            secret: clear.into(),
            enabled: true,
            prompt: "p".into(),
            agent_config: None,
            provider: None,
            created_by: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    store.maintenance().await.unwrap();
    let keys = Keyring::generate("k1").unwrap();
    let server = oz_server::start(config(&keys), store.clone()).await.unwrap();
    let sealed = store.integration(&team, "int_old").await.unwrap().unwrap().secret;
    assert!(oz_server::vault::is_sealed(&sealed), "{sealed}");
    server.shutdown().await;
    store.maintenance().await.unwrap();
    assert!(!contains(&database_bytes(dir.path()), clear), "the clear secret is still in the database's bytes");
}
