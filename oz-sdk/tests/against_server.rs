//! The SDK against the real oz-server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_core::run::RunState;
use oz_core::wire::worker::{ServerMessage, TaskClaimed, WorkerMessage};
use oz_sdk::Client;
use oz_server::store::sqlite::SqliteStore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn server() -> (oz_server::RunningServer, Client) {
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (_, key) = oz_server::bootstrap_team(store.as_ref(), "sdk").await.unwrap();
    let config = oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() };
    let server = oz_server::start(config, store).await.unwrap();
    let client = Client::builder().base_url(server.url()).api_key(key).build().unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_environments_and_pagination() {
    let (_server, client) = server().await;
    let env = client
        .environments()
        .create(&EnvironmentConfig {
            name: "api".into(),
            github_repos: vec![RepoRef::new("acme", "api").unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(client.environments().list().await.unwrap().len(), 1);
    let bad = EnvironmentConfig { name: "x".into(), docker_image: Some("../../etc".into()), ..Default::default() };
    assert!(matches!(client.environments().create(&bad).await, Err(oz_sdk::Error::Config(_))));

    let mut ids = Vec::new();
    for i in 0..7 {
        let created = client
            .runs()
            .create(format!("task {i}"))
            .worker_host("w1")
            .environment_id(&env.uid)
            .title(format!("t{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(created.state, RunState::Queued);
        ids.push(created.run_id);
    }
    // Pages of 2, followed by the stream: all 7, newest first, no repeats.
    let all: Vec<String> = client.runs().list().limit(2).stream().map(|r| r.unwrap().run_id).collect().await;
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(all, expected);
    let page = client.runs().list().limit(3).ascending().send().await.unwrap();
    assert_eq!(page.runs[0].run_id, ids[0]);
    assert!(page.page_info.has_next_page);

    let one = client.runs().get(&ids[3]).await.unwrap();
    assert_eq!(one.title, "t3");
    assert_eq!(client.runs().cancel(&ids[3]).await.unwrap(), ids[3]);
    let cancelled: Vec<_> = client.runs().list().state(RunState::Cancelled).stream().collect().await;
    assert_eq!(cancelled.len(), 1);

    let err = client.runs().get("no-such-run").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.problem().unwrap().error, oz_core::failure::ErrorCode::ResourceNotFound);
    let err = client.runs().create("x").send().await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("worker_host"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_integrations_and_workers() {
    let (server, client) = server().await;
    let s =
        client.schedules().create("nightly", "0 2 * * *").prompt("update deps").worker_host("w1").send().await.unwrap();
    assert!(s.enabled && s.history.next_run.is_some());
    assert!(!client.schedules().pause(&s.id).await.unwrap().enabled);
    assert!(client.schedules().resume(&s.id).await.unwrap().enabled);
    assert_eq!(client.schedules().list().await.unwrap().len(), 1);
    let err = client.schedules().create("bad", "0 25 * * *").prompt("p").worker_host("w1").send().await.unwrap_err();
    assert!(err.to_string().contains("hour"), "{err}");
    client.schedules().delete(&s.id).await.unwrap();
    assert_eq!(client.schedules().get(&s.id).await.unwrap_err().status(), Some(404));

    let i = client.integrations().create("alerts", "Investigate: {{payload}}").worker_host("w1").send().await.unwrap();
    assert!(i.secret.is_some());
    assert!(client.integrations().get(&i.id).await.unwrap().secret.is_none());

    assert!(client.workers().list().await.unwrap().is_empty());
    drop(server);
}

/// The SDK follows a run's events live until it ends, while a worker and the runner drive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_run_to_its_end() {
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "sdk").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "w1", &["w1"]).await.unwrap();
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store)
            .await
            .unwrap();
    let client = Client::builder().base_url(server.url()).api_key(&key).build().unwrap();

    let mut request = format!("{}/api/v1/selfhosted/worker/ws?worker_id=w1", server.url().replace("http", "ws"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {worker_key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The server registers the connection just after the upgrade: wait for it (a hang guard).
    let mut workers = Vec::new();
    for _ in 0..200 {
        workers = client.workers().list().await.unwrap();
        if !workers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(workers[0].worker_id, "w1");

    let run = client.runs().create("stream me").worker_host("w1").send().await.unwrap();
    let events = tokio::spawn(client.runs().events(&run.run_id).map(|e| e.unwrap()).collect::<Vec<_>>());
    let assignment = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await
            && let Ok(Some(ServerMessage::TaskAssignment(a))) = ServerMessage::from_json(&t)
        {
            break a;
        }
    };
    let claim = WorkerMessage::TaskClaimed(TaskClaimed {
        task_id: run.run_id.clone(),
        worker_id: "w1".into(),
        execution_id: None,
    });
    ws.send(Message::Text(claim.to_json().unwrap().into())).await.unwrap();
    let token = assignment.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let http = reqwest::Client::new();
    for body in [
        serde_json::json!({"at": "2026-11-22T10:00:00Z", "event": "harness_started", "harness": "command"}),
        serde_json::json!({"at": "2026-11-22T10:00:01Z", "event": "output", "stream": "stdout", "text": "hi"}),
        serde_json::json!({"at": "2026-11-22T10:00:02Z", "event": "finished", "state": "SUCCEEDED", "message": "ok"}),
    ] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = http
            .post(format!("{}/api/v1/agent/runs/{}/report", server.url(), run.run_id))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let events = tokio::time::timeout(Duration::from_secs(20), events).await.unwrap().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert!(kinds.contains(&"output") && kinds.contains(&"finished"), "{kinds:?}");
    assert_eq!(events.last().unwrap().state(), Some(RunState::Succeeded));
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let output = events.iter().find_map(|e| e.runner_report()).unwrap();
    assert_eq!(output.at.to_string(), "2026-11-22T10:00:00Z");
}
