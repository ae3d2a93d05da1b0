//! The `oz-server` program: first start creates a team and shows its admin key once (a file only
//! when asked); the API answers with it; a restart keeps it; `oz-server admin` manages credentials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

#[allow(clippy::zombie_processes)] // the callers wait for it
fn spawn(data_dir: &std::path::Path) -> (Child, String, Vec<String>) {
    spawn_with(data_dir, &[])
}

#[allow(clippy::zombie_processes)] // the callers wait for it
fn spawn_with(data_dir: &std::path::Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
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

/// The key printed at first start.
fn shown_key(output: &[String]) -> String {
    output.iter().find_map(|l| l.trim().strip_prefix("oz_").map(|rest| format!("oz_{rest}"))).expect("a key was shown")
}

#[test]
fn a_key_file_is_written_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-key");
    let (mut child, _, output) = spawn_with(dir.path(), &["--api-key-file", file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), shown_key(&output));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    nix_kill(&child);
    child.wait().unwrap();
}

/// The data folder is made 0700 and the database's files 0600 (its WAL and shared memory take the
/// database file's mode), whatever the umask.
#[test]
fn the_data_folder_and_the_database_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let (mut child, _, _) = spawn(&data);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("oz.db"))
        .collect();
    assert!(files.len() >= 2, "the database and its WAL: {files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    nix_kill(&child);
    child.wait().unwrap();
}

#[test]
fn first_start_makes_a_key_and_a_restart_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, output) = spawn(dir.path());
    let key = shown_key(&output);
    assert!(key.starts_with("oz_"));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let secret = key.split('.').nth(1).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds the key", path.display());
    }
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

/// `--metrics-listen`: the metrics on their own address, printed at start; the API port has none;
/// without the flag there is no metrics listener.
#[test]
fn metrics_are_served_only_on_the_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, output) = spawn_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_url = output
        .iter()
        .find_map(|l| l.strip_prefix("oz-server metrics at "))
        .expect("the metrics address is printed")
        .trim()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    let (metrics, on_api) = rt.block_on(async {
        let metrics = http.get(&metrics_url).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        let on_api = http.get(format!("{url}/metrics")).send().await.unwrap().status().as_u16();
        (metrics.text().await.unwrap(), on_api)
    });
    assert!(metrics.contains("oz_server_workers_connected 0"), "{metrics}");
    assert_eq!(on_api, 404, "the API port never serves metrics");
    nix_kill(&child);
    child.wait().unwrap();

    let (mut again, _, output) = spawn(dir.path());
    assert!(!output.iter().any(|l| l.contains("metrics")), "no metrics listener by default: {output:?}");
    nix_kill(&again);
    again.wait().unwrap();
}

fn nix_kill(child: &Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
}

fn admin(data_dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oz-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("admin")
        .args(args)
        .env("OZ_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `oz-server admin`: a team, a viewer, a viewer's key that can read but not cancel, and a revoked
/// key refused on the next request, all against the running server.
#[test]
fn admin_commands_manage_users_and_keys_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, _) = spawn(dir.path());
    let created = admin(dir.path(), &["team", "create", "--name", "acme"]);
    let admin_key = shown_key(&created.lines().map(str::to_owned).collect::<Vec<_>>());
    let user = admin(dir.path(), &["user", "create", "--team", "acme", "--name", "vera", "--role", "viewer"]);
    let user_id = user.split_whitespace().nth(2).unwrap().to_owned();
    let key_out = admin(dir.path(), &["key", "create", "--team", "acme", "--user", &user_id, "--name", "vera's"]);
    let viewer_key = shown_key(&key_out.lines().map(str::to_owned).collect::<Vec<_>>());
    let listed = admin(dir.path(), &["key", "list", "--team", "acme"]);
    assert!(listed.contains("vera's") && !listed.contains(&viewer_key[3..]), "the list never shows secrets: {listed}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let status = |key: &str, method: reqwest::Method, path: &str| {
        rt.block_on(async {
            let mut req = http.request(method, format!("{url}/api/v1{path}")).bearer_auth(key);
            req = req.json(&serde_json::json!({"prompt": "p", "config": {"worker_host": "w"}}));
            req.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(status(&admin_key, reqwest::Method::POST, "/agent/runs"), 200);
    assert_eq!(status(&viewer_key, reqwest::Method::GET, "/agent/runs"), 200, "a viewer reads");
    assert_eq!(status(&viewer_key, reqwest::Method::POST, "/agent/runs"), 403, "a viewer cannot create");
    let key_id = viewer_key.trim_start_matches("oz_").split('.').next().unwrap().to_owned();
    admin(dir.path(), &["key", "revoke", "--team", "acme", &key_id]);
    assert_eq!(status(&viewer_key, reqwest::Method::GET, "/agent/runs"), 401, "revoked: refused on the next request");
    nix_kill(&child);
    child.wait().unwrap();
}
