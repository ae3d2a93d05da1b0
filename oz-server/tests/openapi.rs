//! The OpenAPI document: served, and pinned by a snapshot. When the API changes on purpose, update the
//! snapshot with `OZ_UPDATE_SNAPSHOTS=1 cargo test -p oz-server --test openapi` and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::TestServer;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_document_matches_the_snapshot() {
    let generated = oz_server::openapi::document_json();
    if std::env::var_os("OZ_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(SNAPSHOT, &generated).unwrap();
    }
    let pinned = std::fs::read_to_string(SNAPSHOT)
        .expect("oz-server/openapi.json exists (run with OZ_UPDATE_SNAPSHOTS=1 to create it)");
    assert!(
        generated == pinned,
        "the OpenAPI document changed; if that is intended, rerun with OZ_UPDATE_SNAPSHOTS=1 and commit oz-server/openapi.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/agent/runs",
        "/agent/runs/{id}/cancel",
        "/agent/schedules/{id}/resume",
        "/agent/environments",
        "/integrations/{id}/webhook",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    for schema in ["RunAgentRequest", "RunItem", "RunState", "Problem", "ScheduleItem", "CloudEnvironment", "ErrorCode"]
    {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "{schema} missing");
    }
    let states = &doc["components"]["schemas"]["RunState"]["enum"];
    assert!(states.as_array().unwrap().iter().any(|s| s == "INPROGRESS"), "{states}");
}

#[tokio::test]
async fn the_document_is_served() {
    let t = TestServer::start().await;
    let resp = t.http.get(t.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["info"]["title"], "oz control plane");
}
