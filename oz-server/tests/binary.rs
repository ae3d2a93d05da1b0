//! The `oz-server` program: first start creates a key; the API answers with it; a restart keeps it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

#[allow(clippy::zombie_processes)] // the callers wait for it
fn spawn(data_dir: &std::path::Path) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("OZ_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("oz-server listening on ") {
            let url = rest.split_whitespace().next().unwrap().to_owned();
            return (child, url, seen);
        }
    }
}

#[test]
fn first_start_makes_a_key_and_a_restart_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, output) = spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("api-key")).unwrap().trim().to_owned();
    assert!(key.starts_with("oz_"));
    assert!(output.iter().any(|l| l.contains(&key)), "the key is shown once at creation: {output:?}");
    assert_eq!(std::fs::metadata(dir.path().join("api-key")).unwrap().permissions().mode() & 0o777, 0o600);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let created: serde_json::Value = rt.block_on(async {
        http.post(format!("{url}/api/v1/agent/runs"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"prompt": "p", "config": {"worker_host": "w"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    nix_kill(&child);
    child.wait().unwrap();

    let (mut again, url, output) = spawn(dir.path());
    assert!(!output.iter().any(|l| l.contains("oz_")), "no new key on a restart: {output:?}");
    let state = rt.block_on(async {
        let v: serde_json::Value = http
            .get(format!("{url}/api/v1/agent/runs/{run_id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["state"].clone()
    });
    assert_eq!(state, "QUEUED");
    nix_kill(&again);
    assert!(again.wait().unwrap().success(), "SIGTERM is a clean shutdown");
}

fn nix_kill(child: &Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
}
