//! The agent client (a run's workload token): its three calls, its two retry rules, and the token
//! kept out of every message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oz_core::failure::ErrorCode;
use oz_core::retry::RetryPolicy;
use oz_core::wire::callbacks::{RunnerEvent, RunnerReport};
use oz_sdk::AgentClient;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::AsyncReadExt;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "oz_wl_secret_0123456789abcdef";

/// Quick retries, so the tests count attempts without waiting.
const QUICK: RetryPolicy = RetryPolicy::bounded(Duration::from_millis(1), Duration::from_millis(1), 3);

fn agent(root: &str, run_id: &str) -> AgentClient {
    AgentClient::builder(root, run_id, SecretString::from(TOKEN))
        .read_retries(QUICK)
        .report_retries(QUICK)
        .build()
        .unwrap()
}

fn report() -> RunnerReport {
    RunnerReport {
        at: "2026-01-01T00:00:00Z".parse().unwrap(),
        seq: Some(1),
        event: RunnerEvent::Started { version: "1".into() },
    }
}

fn run_json(id: &str, prompt: &str) -> serde_json::Value {
    json!({"run_id": id, "task_id": id, "title": "t", "state": "INPROGRESS", "prompt": prompt,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

/// Every text an error shows: its message, its causes' and its `Debug`.
fn shown(error: &dyn std::error::Error) -> String {
    let mut text = format!("{error} {error:?}");
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(&format!(" {c} {c:?}"));
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn reports_fetches_the_environment_and_the_prompt_with_the_workload_token() {
    let mock = MockServer::start().await;
    let bearer = format!("Bearer {TOKEN}");
    Mock::given(method("POST"))
        .and(path("/api/v1/agent/runs/run-1/report"))
        .and(header("authorization", bearer.as_str()))
        .and(body_json(serde_json::to_value(report()).unwrap()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/environments"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"environments": [
            {"uid": "env-1", "config": {"name": "one"}},
            {"uid": "env-2", "config": {"name": "two", "github_repos": [{"owner": "acme", "repo": "app"}]}},
        ]})))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(run_json("run-1", "fix it")))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(run_json("run-2", "")))
        .mount(&mock)
        .await;

    let a = agent(&mock.uri(), "run-1");
    assert_eq!(a.base_url(), format!("{}/api/v1", mock.uri()));
    assert_eq!(a.run_id(), "run-1");
    a.report(&report()).await.unwrap();
    let env = a.environment("env-2").await.unwrap();
    assert_eq!((env.name.as_str(), env.github_repos.len()), ("two", 1));
    let missing = a.environment("env-9").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));
    assert_eq!(missing.problem().unwrap().error, ErrorCode::ResourceNotFound);
    assert!(missing.to_string().contains("\"env-9\""), "{missing}");
    assert_eq!(a.prompt().await.unwrap().as_deref(), Some("fix it"));
    assert_eq!(agent(&mock.uri(), "run-2").prompt().await.unwrap(), None, "an empty prompt is none");
}

#[tokio::test]
async fn reads_retry_on_5xx_and_reports_on_5xx_and_429_but_not_on_4xx() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-1"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(run_json("run-1", "p")))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/agent/runs/run-1/report"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/agent/runs/run-1/report"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/agent/runs/run-2/report"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no"))
        .mount(&mock)
        .await;

    assert_eq!(agent(&mock.uri(), "run-1").prompt().await.unwrap().as_deref(), Some("p"));
    let err = agent(&mock.uri(), "run-1").report(&report()).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    let err = agent(&mock.uri(), "run-2").report(&report()).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    let hits = mock.received_requests().await.unwrap();
    let count = |m: &str, p: &str| hits.iter().filter(|r| r.method.as_str() == m && r.url.path() == p).count();
    assert_eq!(count("GET", "/api/v1/agent/runs/run-1"), 3, "2 failures, then the answer");
    assert_eq!(count("POST", "/api/v1/agent/runs/run-1/report"), 4, "1 try + 3 retries");
    assert_eq!(count("POST", "/api/v1/agent/runs/run-2/report"), 1, "a 4xx is not retried");
}

/// A server that reads each request and hangs up without answering: the request may have been
/// acted on, so a read is tried again and a report is not.
#[tokio::test]
async fn a_connection_lost_after_sending_retries_a_read_but_never_a_report() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            drop(socket);
        }
    });
    let a = agent(&root, "run-1");

    let err = a.environment("env-1").await.unwrap_err();
    assert!(matches!(err, oz_sdk::Error::Transport(_)), "{err:?}");
    assert_eq!(connections.swap(0, Ordering::SeqCst), 4, "1 try + 3 retries");

    let err = a.report(&report()).await.unwrap_err();
    assert!(matches!(err, oz_sdk::Error::Transport(_)), "{err:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "a report that may have arrived is not sent again");
}

/// A report that could not connect was not sent, so it is retried: the retries' delays pass.
#[tokio::test]
async fn a_report_that_could_not_connect_is_retried() {
    let policy = RetryPolicy::bounded(Duration::from_millis(100), Duration::from_millis(100), 2);
    let a = AgentClient::builder("http://127.0.0.1:9", "run-1", SecretString::from(TOKEN))
        .report_retries(policy)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = a.report(&report()).await.unwrap_err();
    assert!(matches!(err, oz_sdk::Error::Transport(_)), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(200), "2 retries, 100 ms apart: {:?}", started.elapsed());
}

#[tokio::test]
async fn the_token_is_in_no_message_and_no_debug_output() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-1"))
        .respond_with(ResponseTemplate::new(401).set_body_string("bad token"))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/agent/runs/run-3"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"run_id\": 3"))
        .mount(&mock)
        .await;
    let builder = AgentClient::builder("http://127.0.0.1:9", "run-1", SecretString::from(TOKEN));
    assert!(!format!("{builder:?}").contains(TOKEN));
    let unreachable = builder.read_retries(QUICK).report_retries(QUICK).build().unwrap();
    assert!(!format!("{unreachable:?}").contains(TOKEN));

    let refused = agent(&mock.uri(), "run-1").prompt().await.unwrap_err();
    assert_eq!(refused.status(), Some(401));
    let unreadable = agent(&mock.uri(), "run-3").prompt().await.unwrap_err();
    assert!(
        matches!(&unreadable, oz_sdk::Error::Decode { excerpt, .. } if excerpt == "{\"run_id\": 3"),
        "{unreadable:?}"
    );
    let errors = [
        unreachable.prompt().await.unwrap_err(),
        unreachable.report(&report()).await.unwrap_err(),
        refused,
        unreadable,
    ];
    for error in &errors {
        let text = shown(error);
        assert!(!text.contains(TOKEN), "{text}");
        assert!(!text.contains("oz_wl_secret"), "no part of the token either: {text}");
    }
    assert!(matches!(errors[0], oz_sdk::Error::Transport(_)));
}

#[test]
fn the_default_retries_are_the_runners() {
    let total = |p: RetryPolicy| p.delays().map(|d| d.as_millis()).sum::<u128>();
    assert_eq!(AgentClient::READ_RETRIES.delays().count(), 7, "8 attempts");
    assert_eq!(total(AgentClient::READ_RETRIES), 12_000);
    assert_eq!(AgentClient::REPORT_RETRIES.delays().count(), 3, "4 attempts");
    assert_eq!(total(AgentClient::REPORT_RETRIES), 1_400);
}
