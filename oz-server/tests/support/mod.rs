//! Test support: a real server on loopback, two teams with API keys, an HTTP client, and a worker
//! that speaks the Oz worker protocol over a real WebSocket.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use oz_core::wire::worker::{ServerMessage, TaskClaimed, WorkerMessage};
use oz_server::store::Store;
use oz_server::store::sqlite::SqliteStore;
use oz_server::{RunningServer, ServerConfig, bootstrap_team, start};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct TestServer {
    pub server: RunningServer,
    pub store: Arc<dyn Store>,
    pub key_a: String,
    pub key_b: String,
    pub team_a: String,
    pub team_b: String,
    pub http: reqwest::Client,
    /// Worker credentials minted so far, by (team, worker id): one live credential per worker id.
    worker_keys: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

pub fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        lease_timeout: Duration::from_secs(2),
        // The providers' fakes listen on loopback.
        provider_api_urls: vec!["http://127.0.0.1:".into()],
        ..Default::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(config(), Arc::new(SqliteStore::temporary().await.unwrap())).await
    }

    pub async fn start_with(config: ServerConfig, store: Arc<dyn Store>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (team_a, key_a) = bootstrap_team(store.as_ref(), "team-a").await.unwrap();
        let (team_b, key_b) = bootstrap_team(store.as_ref(), "team-b").await.unwrap();
        let server = start(config, store.clone()).await.unwrap();
        Self {
            server,
            store,
            key_a,
            key_b,
            team_a,
            team_b,
            http: reqwest::Client::new(),
            worker_keys: Default::default(),
        }
    }

    /// Where the test reaches the server (its socket: the public URL may name a proxy in front).
    pub fn base(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base())
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, key, Some(body)).await
    }

    /// Creates a run for `worker`; returns its id.
    pub async fn create_run(&self, key: &str, worker: &str, prompt: &str) -> String {
        let (status, body) =
            self.post("/agent/runs", key, json!({"prompt": prompt, "config": {"worker_host": worker}})).await;
        assert_eq!(status, 200, "{body}");
        body["run_id"].as_str().unwrap().to_owned()
    }

    /// The messages of the follow-ups recorded in a run's history, in order.
    pub async fn followups_of(&self, key: &str, run_id: &str) -> Vec<String> {
        let (status, events) = self.get(&format!("/agent/runs/{run_id}/transcript/content"), key).await;
        assert_eq!(status, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["event"] == "followup")
            .filter_map(|e| e["event"]["message"].as_str().map(str::to_owned))
            .collect()
    }

    pub async fn state_of(&self, key: &str, run_id: &str) -> String {
        let (status, body) = self.get(&format!("/agent/runs/{run_id}"), key).await;
        assert_eq!(status, 200, "{body}");
        body["state"].as_str().unwrap().to_owned()
    }

    /// Polls until the run is in `state` (bounded; not a timing assertion, a hang guard).
    pub async fn wait_state(&self, key: &str, run_id: &str, state: &str) -> Value {
        for _ in 0..400 {
            let (_, body) = self.get(&format!("/agent/runs/{run_id}"), key).await;
            if body["state"] == state {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (_, body) = self.get(&format!("/agent/runs/{run_id}"), key).await;
        panic!("run {run_id} never reached {state}: {body}");
    }

    /// A worker of the team whose API key is `key`, connected with a worker credential for
    /// `worker_id` (minted once per team and id, then reused, as a real worker reuses its own).
    pub async fn worker(&self, key: &str, worker_id: &str) -> Worker {
        let credential = self.worker_credential(key, worker_id).await;
        Worker::connect(&self.server.url(), &credential, worker_id).await
    }

    /// The worker credential for `worker_id` in the team of API key `key`.
    pub async fn worker_credential(&self, key: &str, worker_id: &str) -> String {
        let team = if key == self.key_b { self.team_b.clone() } else { self.team_a.clone() };
        let slot = (team.clone(), worker_id.to_owned());
        if let Some(found) = self.worker_keys.lock().unwrap().get(&slot) {
            return found.clone();
        }
        let minted =
            oz_server::mint_worker_credential(self.store.as_ref(), &team, "test worker", &[worker_id]).await.unwrap();
        self.worker_keys.lock().unwrap().insert(slot, minted.clone());
        minted
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A worker connection speaking the Oz protocol.
pub struct Worker {
    pub ws: Ws,
    pub worker_id: String,
}

impl Worker {
    pub async fn connect(base: &str, key: &str, worker_id: &str) -> Self {
        Self::try_connect(base, key, worker_id)
            .await
            .unwrap_or_else(|status| panic!("the worker was refused: {status}"))
    }

    /// Connects, or returns the HTTP status the upgrade was refused with.
    pub async fn try_connect(base: &str, key: &str, worker_id: &str) -> Result<Self, u16> {
        let url = format!("{}/api/v1/selfhosted/worker/ws?worker_id={worker_id}", base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("Authorization", format!("Bearer {key}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Self { ws, worker_id: worker_id.to_owned() }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("could not connect: {e}"),
        }
    }

    /// The next protocol message as raw JSON (pings skipped), or None after `wait`.
    pub async fn next_raw(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Whether the server closes the connection within `wait` (messages before that are skipped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn next(&mut self) -> ServerMessage {
        let raw = self.next_raw(Duration::from_secs(10)).await.expect("a message from the server");
        ServerMessage::from_json(&raw.to_string()).unwrap().expect("a known message")
    }

    pub async fn send(&mut self, message: WorkerMessage) {
        self.ws.send(Message::Text(message.to_json().unwrap().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned().into())).await.unwrap();
    }
}

/// A run claimed by a worker, its harness started: (run id, its workload token, the worker, kept
/// connected).
pub async fn running(t: &TestServer) -> (String, String, Worker) {
    let mut worker = t.worker(&t.key_a, "w1").await;
    let run_id = t.create_run(&t.key_a, "w1", "watch me").await;
    let token = start_offered(t, &mut worker, &run_id).await;
    (run_id, token, worker)
}

/// Takes the offer of run `run_id` that `worker` is about to get: claims it and reports its harness
/// started (the run is INPROGRESS); its workload token.
pub async fn start_offered(t: &TestServer, worker: &mut Worker, run_id: &str) -> String {
    let assignment = match worker.next().await {
        ServerMessage::TaskAssignment(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    };
    let token = assignment.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    worker
        .send(WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: run_id.to_owned(),
            worker_id: worker.worker_id.clone(),
            execution_id: None,
        }))
        .await;
    t.wait_state(&t.key_a, run_id, "CLAIMED").await;
    report(t, run_id, &token, json!({"event": "harness_started", "harness": "command"})).await;
    t.wait_state(&t.key_a, run_id, "INPROGRESS").await;
    token
}

/// The runner's report of `event`, now, with the run's token.
pub async fn report(t: &TestServer, run_id: &str, token: &str, mut event: serde_json::Value) {
    event["at"] = json!(jiff::Timestamp::now().to_string());
    let (status, body) = t.post(&format!("/agent/runs/{run_id}/report"), token, event).await;
    assert_eq!(status, 204, "{body}");
}
