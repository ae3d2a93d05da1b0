//! Scripting the API with the SDK against a control plane started right here (SQLite in a temp
//! folder): an environment, runs, paging, watching a run's events, cancelling, a schedule's life,
//! and an integration fired by a signed webhook.
//!
//! ```text
//! cargo run -p oz-examples --example sdk_script
//! ```

use std::sync::Arc;

use futures::StreamExt;
use oz_core::environment::{EnvironmentConfig, RepoRef};
use oz_sdk::Client;
use oz_server::store::sqlite::SqliteStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A control plane on loopback, with one team and its API key.
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("oz.db")).await?);
    let (_, api_key) = oz_server::bootstrap_team(store.as_ref(), "example").await?;
    let server =
        oz_server::start(oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }, store).await?;
    println!("control plane at {}", server.url());

    let client = Client::builder().base_url(server.url()).api_key(&api_key).build()?;

    // An environment.
    let env = client
        .environments()
        .create(&EnvironmentConfig {
            name: "api".into(),
            docker_image: Some("ubuntu:22.04".into()),
            github_repos: vec![RepoRef::new("acme", "api")?],
            setup_commands: vec!["make deps".into()],
            ..Default::default()
        })
        .await?;
    println!("environment {} ({})", env.uid, env.config.name);

    // Runs for a worker called "laptop" (none is connected, so they wait in the queue).
    for i in 1..=5 {
        let run = client
            .runs()
            .create(format!("task {i}: fix a flaky test"))
            .worker_host("laptop")
            .environment_id(&env.uid)
            .send()
            .await?;
        println!("created run {} ({:?})", run.run_id, run.state);
    }
    let first = client.runs().list().limit(1).send().await?;
    if let Some(run) = first.runs.first() {
        println!("why is it waiting? {}", run.status_message.as_ref().map(|m| m.message.as_str()).unwrap_or("-"));
    }

    // Page through them two at a time.
    let mut all = Box::pin(client.runs().list().limit(2).stream());
    let mut n = 0;
    while let Some(run) = all.next().await {
        let run = run?;
        n += 1;
        println!("  page item {n}: {} {} {:?}", run.run_id, run.title, run.state);
    }

    // Watch a run's events while cancelling it.
    let victim = client.runs().create("this one gets cancelled").worker_host("laptop").send().await?;
    let mut events = Box::pin(client.runs().events(&victim.run_id));
    client.runs().cancel(&victim.run_id).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        println!("  event #{} {} {:?}", event.seq, event.kind(), event.state());
    }
    println!("run {} is {:?}", victim.run_id, client.runs().get(&victim.run_id).await?.state);

    // A schedule: create, pause, resume, delete.
    let schedule = client
        .schedules()
        .create("nightly deps", "0 2 * * *")
        .prompt("update dependencies")
        .worker_host("laptop")
        .send()
        .await?;
    println!("schedule {} next runs at {:?}", schedule.id, schedule.history.next_run);
    println!("paused: enabled = {}", client.schedules().pause(&schedule.id).await?.enabled);
    println!("resumed: next run {:?}", client.schedules().resume(&schedule.id).await?.history.next_run);
    client.schedules().delete(&schedule.id).await?;
    println!("schedule deleted");

    // An integration, fired by a signed webhook.
    let integration = client
        .integrations()
        .create("alerts", "Investigate this alert: {{payload}}")
        .worker_host("laptop")
        .send()
        .await?;
    let secret = integration.secret.clone().ok_or("the secret is returned on creation")?;
    let body = r#"{"alert": "disk full on db-1"}"#;
    let timestamp = jiff::Timestamp::now().as_second();
    let signature = oz_server::webhook::sign(&secret, timestamp, body.as_bytes());
    let response = reqwest::Client::new()
        .post(&integration.webhook_url)
        .header("X-Oz-Timestamp", timestamp.to_string())
        .header("X-Oz-Signature", signature)
        .body(body)
        .send()
        .await?;
    let accepted: serde_json::Value = response.json().await?;
    let run_id = accepted["run_id"].as_str().ok_or("a run id")?;
    println!("webhook started run {run_id}: {:?}", client.runs().get(run_id).await?.prompt);

    server.shutdown().await;
    Ok(())
}
