//! `oz-agent-worker` over `wss://` (a TLS-terminating proxy in front of the control plane, trusted
//! through `SSL_CERT_FILE`), with its Prometheus metrics served and read over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use oz_core::wire::api::AgentConfig;
use oz_core::wire::worker::HarnessConfig;
use oz_server::store::sqlite::SqliteStore;
use tokio::net::TcpListener;

fn oz_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().join("oz")
}

/// Accepts TLS on a loopback port with a certificate for `localhost` and forwards the plaintext to
/// `upstream`. Returns the port and the CA certificate (PEM) to trust.
async fn tls_proxy(upstream: std::net::SocketAddr) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, pem)
}

async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_wss_runs_a_task_and_its_metrics_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::temporary().await.unwrap());
    let (team, key) = oz_server::bootstrap_team(store.as_ref(), "t").await.unwrap();
    let worker_key = oz_server::mint_worker_credential(store.as_ref(), &team, "tls", &["tls-worker"]).await.unwrap();
    let config = oz_server::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() };
    let server = oz_server::start(config, store).await.unwrap();
    let upstream: std::net::SocketAddr = server.url().trim_start_matches("http://").parse().unwrap();
    let (tls_port, ca_pem) = tls_proxy(upstream).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let metrics_port = free_port();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--backend", "direct", "--worker-id", "tls-worker", "--log-level", "warn"])
        .args(["--server-root-url", &server.url()])
        .args(["--web-socket-url", &format!("wss://localhost:{tls_port}/api/v1/selfhosted/worker/ws")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("WARP_API_KEY", &worker_key)
        .env("OZ_WORKER_OUTBOX_FILE", dir.path().join("worker.outbox"))
        .env("SSL_CERT_FILE", &ca_file)
        .env("TMPDIR", dir.path())
        .env("PATH", format!("{}:/usr/bin:/bin", oz_binary().parent().unwrap().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let client = oz_sdk::Client::builder().base_url(server.url()).api_key(&key).build().unwrap();
    // Connected over TLS: the metrics say so, and the server lists the worker.
    let mut connected = false;
    for _ in 0..200 {
        let text = match reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await {
            Ok(resp) => resp.text().await.unwrap(),
            Err(_) => String::new(),
        };
        if text.contains("oz_worker_connected 1") {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "the worker never connected over wss");

    let run_with = |script: &str| AgentConfig {
        worker_host: Some("tls-worker".into()),
        harness: Some(HarnessConfig {
            kind: Some(oz_core::runner::HarnessKind::Command),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ok = client.runs().create("ok").agent_config(run_with("echo fine")).send().await.unwrap();
    let bad = client.runs().create("bad").agent_config(run_with("exit 3")).send().await.unwrap();
    for id in [&ok.run_id, &bad.run_id] {
        for _ in 0..400 {
            if client.runs().get(id).await.unwrap().state.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(client.runs().get(&ok.run_id).await.unwrap().state.as_str(), "SUCCEEDED");
    assert_eq!(client.runs().get(&bad.run_id).await.unwrap().state.as_str(), "FAILED");

    let text = metrics_text(metrics_port).await;
    assert!(text.contains("oz_worker_tasks_claimed_total 2"), "{text}");
    assert!(text.contains("oz_worker_tasks_completed_total{result=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("oz_worker_tasks_completed_total{result=\"failed\"} 1"), "{text}");
    assert!(
        text.contains("oz_worker_task_failures_total{phase=\"run\",reason=\"agent_exited\"}")
            || text.contains("oz_worker_task_failures_total{phase=\"run\","),
        "{text}"
    );
    assert!(text.contains("oz_worker_task_duration_seconds_count{result=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("oz_worker_tasks_active 0"), "{text}");

    Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    let status = worker.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_bad_websocket_url_or_metrics_address_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--backend", "direct", "--worker-id", "w", "--server-root-url", "http://127.0.0.1:1"])
        .args(["--web-socket-url", "ftp://example"])
        .env("WARP_API_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with ws:// or wss://"));
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--backend", "direct", "--worker-id", "w", "--server-root-url", "http://127.0.0.1:1"])
        .args(["--metrics-listen", "not-an-address"])
        .env("WARP_API_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not serve metrics on not-an-address"));
}
