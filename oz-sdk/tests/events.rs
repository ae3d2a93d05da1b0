//! A run's event stream over a real socket, byte by byte as the network delivers it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use oz_core::wire::callbacks::RunnerEvent;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A multi-byte character split across two TCP writes comes back whole: the stream decodes UTF-8
/// across chunk boundaries instead of each chunk on its own.
#[tokio::test]
async fn a_character_split_across_two_chunks_comes_back_whole() {
    let text = "café ☕ 🎉 done";
    let output = json!({"seq": 1, "at": "2026-01-01T00:00:00Z", "run_id": "r1",
        "event": {"event": "output", "stream": "stdout", "text": text, "at": "2026-01-01T00:00:00Z"}});
    let end = json!({"seq": 2, "at": "2026-01-01T00:00:00Z", "run_id": "r1",
        "event": {"event": "state", "state": "SUCCEEDED"}});
    let body = format!("id: 1\nevent: output\ndata: {output}\n\nid: 2\nevent: state\ndata: {end}\n\n");
    // Cut inside the `é` (0xC3 0xA9) and again inside the emoji (4 bytes).
    let cut = |ch: char| body.find(ch).unwrap() + 1;
    let cuts = [0, cut('é'), cut('🎉') + 1, body.len()];

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = body.clone();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        for part in cuts.windows(2) {
            socket.write_all(&served.as_bytes()[part[0]..part[1]]).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        String::from_utf8(request).unwrap()
    });

    let client = oz_sdk::Client::builder().base_url(format!("http://{addr}")).api_key("oz_test").build().unwrap();
    let events: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), client.runs().events("r1").collect::<Vec<_>>()).await.unwrap();
    let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    match events[0].runner_report().map(|r| r.event) {
        Some(RunnerEvent::Output { text: got, .. }) => assert_eq!(got, text),
        other => panic!("expected an output event, got {other:?}"),
    }
    let request = server.await.unwrap().to_ascii_lowercase();
    assert!(request.contains("last-event-id: 0"), "{request}");
    assert!(request.contains("accept: text/event-stream"), "{request}");
}
