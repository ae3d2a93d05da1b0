//! Property test: whatever method, path, headers and body arrive, every handler answers with a 2xx, or
//! a 4xx problem document; never a 5xx, never a panic, never a non-problem error body.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use support::TestServer;
use tower::ServiceExt;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%00".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("a%2Fb".to_owned()),
        "[a-zA-Z0-9_.-]{0,40}",
        "\\PC{0,20}"
            .prop_map(|s| s.chars().filter(|c| !c.is_control() && !matches!(c, '/' | '?' | '#' | ' ' | '%')).collect()),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,30}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("prompt".to_owned()),
                    Just("config".to_owned()),
                    Just("worker_host".to_owned()),
                    Just("name".to_owned()),
                    Just("cron_schedule".to_owned()),
                    Just("message".to_owned()),
                    Just("state".to_owned()),
                    Just("event".to_owned()),
                    Just("github_repos".to_owned()),
                    Just("owner".to_owned()),
                    Just("repo".to_owned()),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..200),
        Just(b"{\"prompt\": \"x\", \"config\": {\"worker_host\": \"w\"}}".to_vec()),
    ]
}

const TEMPLATES: &[&str] = &[
    "/api/v1/agent/runs",
    "/api/v1/agent/run",
    "/api/v1/agent/runs/{}",
    "/api/v1/agent/runs/{}/cancel",
    "/api/v1/agent/runs/{}/followups",
    "/api/v1/agent/runs/{}/transcript",
    "/api/v1/agent/runs/{}/transcript/content",
    "/api/v1/agent/runs/{}/report",
    "/api/v1/agent/environments",
    "/api/v1/agent/environments/{}",
    "/api/v1/agent/schedules",
    "/api/v1/agent/schedules/{}",
    "/api/v1/agent/schedules/{}/pause",
    "/api/v1/integrations",
    "/api/v1/integrations/{}",
    "/api/v1/integrations/{}/webhook",
    "/api/v1/selfhosted/worker/ws?worker_id={}",
    "/api/v1/agent/runs?state={}&limit={}&cursor={}",
    "/api/v1/{}",
    "/{}",
];

#[test]
fn every_answer_is_success_or_a_clean_problem() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t = rt.block_on(TestServer::start());
    let router = oz_server::api::router(t.server.state().clone());
    let key = t.key_a.clone();
    let config = ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(
        method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT), Just(Method::DELETE), Just(Method::PATCH)],
        template in prop::sample::select(TEMPLATES),
        segments in prop::collection::vec(segment(), 3),
        body in body(),
        json_type in any::<bool>(),
        auth in prop_oneof![Just(0u8), Just(1), Just(2)],
    )| {
        let mut path = template.to_owned();
        for s in &segments {
            path = path.replacen("{}", s, 1);
        }
        let mut req = Request::builder().method(method.clone()).uri(path.as_str());
        if json_type {
            req = req.header("content-type", "application/json");
        }
        req = match auth {
            0 => req.header("authorization", format!("Bearer {key}")),
            1 => req.header("authorization", "Bearer oz_0123456789abcdef.nope"),
            _ => req,
        };
        let Ok(request) = req.body(Body::from(body.clone())) else { return Ok(()) }; // an unparsable URI never reaches us
        let response = rt.block_on(router.clone().oneshot(request)).unwrap();
        let status = response.status();
        prop_assert!(status.as_u16() < 500, "{method} {path} -> {status}");
        if status.is_client_error() {
            let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
            prop_assert_eq!(&content_type, "application/problem+json", "{} {} -> {}", method, path, status);
            let bytes = rt.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).unwrap();
            let problem: oz_core::wire::problem::Problem = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(problem.status, status.as_u16());
        }
    });
}

/// The case proptest once found: the dashboard's GET-only pages answered a wrong method with an
/// empty 405. Each must answer with the API's problem document.
#[tokio::test]
async fn a_wrong_method_on_a_dashboard_page_is_a_problem_document() {
    let t = TestServer::start().await;
    let router = oz_server::api::router(t.server.state().clone());
    for (method, path) in [
        (Method::POST, "/"),
        (Method::DELETE, "/runs"),
        (Method::PUT, "/sign-out"),
        (Method::POST, "/assets/dashboard.js"),
    ] {
        let request = Request::builder().method(method.clone()).uri(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{method} {path}");
    }
}
