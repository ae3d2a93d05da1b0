//! A run's history as the store keeps it: large events compressed, and a run's output bounded (its
//! oldest output dropped past the bound, its other events kept), over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use oz_server::store::sqlite::SqliteStore;
use serde_json::json;
use support::{TestServer, config, report, running};

/// Text that does not compress to nothing: numbered lines of varied words.
fn lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("line {i:07} of the agent's output: {}\n", i.wrapping_mul(2_654_435_761) % 1_000_003))
        .collect()
}

#[tokio::test]
async fn large_events_are_stored_compressed_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oz.db");
    let t = TestServer::start_with(config(), Arc::new(SqliteStore::open(&db).await.unwrap())).await;
    let (run, token, _worker) = running(&t).await;
    let text = lines(0, 4000);
    report(&t, &run, &token, json!({"event": "output", "stream": "stdout", "text": text})).await;
    let (_, events) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let stored: String = events.as_array().unwrap().iter().filter_map(|e| e["event"]["text"].as_str()).collect();
    assert_eq!(stored, text, "read back whole");
    // On disk (the database and its log), the text is not there as such.
    t.store.forget_overwritten().await.unwrap();
    let mut on_disk = Vec::new();
    for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
        on_disk.extend(std::fs::read(file.path()).unwrap());
    }
    let needle = b"line 0002000 of the agent's output";
    assert!(!on_disk.windows(needle.len()).any(|w| w == needle), "stored compressed");
    assert!(on_disk.len() < text.len() * 2, "{} bytes on disk for {} of text", on_disk.len(), text.len());
}

#[tokio::test]
async fn a_runs_output_is_bounded_its_oldest_dropped_and_its_other_events_kept() {
    let store = SqliteStore::temporary().await.unwrap().with_max_run_output(1 << 20);
    let t = TestServer::start_with(config(), Arc::new(store)).await;
    let (run, token, _worker) = running(&t).await;
    // About 3 MiB of output in 48 pieces, an artifact in the middle.
    for piece in 0..48 {
        let text = lines(piece * 1000, 1000);
        report(&t, &run, &token, json!({"event": "output", "stream": "stdout", "text": text})).await;
        if piece == 24 {
            let artifact = json!({"event": "artifact", "artifact_type": "PLAN", "content": "the plan"});
            report(&t, &run, &token, artifact).await;
        }
    }
    let (_, events) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let events = events.as_array().unwrap();
    let kept: usize = events.iter().filter_map(|e| e["event"]["text"].as_str()).map(str::len).sum();
    assert!(kept <= 1 << 20, "bounded: {kept} bytes kept");
    assert!(kept > (1 << 20) / 2, "the newest is kept: {kept} bytes");
    let text: String = events.iter().filter_map(|e| e["event"]["text"].as_str()).collect();
    assert!(text.contains("line 0047999"), "the last output is there");
    assert!(!text.contains("line 0000000"), "the first is gone");
    for kind in ["state", "harness_started", "artifact"] {
        assert!(events.iter().any(|e| e["event"]["event"] == kind), "{kind} kept");
    }
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
}
