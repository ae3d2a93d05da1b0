//! `pods/attach` over WebSocket, as the API server proxies it to the kubelet: the
//! `v5.channel.k8s.io` (or `v4`) channel protocol, where each binary message starts with its
//! channel (0 stdin, 1 stdout, 2 stderr, 3 status) and, in v5, `[255, 0]` closes stdin. Only stdin
//! is served: data reaches the task container's stdin (a container with `stdin: true` that the
//! fake kubelet runs); `stdinOnce` holds, as the backend uses it: the first attach takes the stdin
//! and it closes when that attach closes it or goes away. A scripted Pod (no kubelet) drops what
//! it is sent.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxumState};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

use crate::cluster::Cluster;
use crate::server::status;
use crate::state::WatchKind;

/// The channel protocols served, in the order of preference.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN_CHANNEL: u8 = 0;
const CLOSE_CHANNEL: u8 = 255;

pub(crate) async fn attach(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let flag = |key: &str| params.get(key).is_some_and(|v| v == "true" || v == "1");
    let Some(pod) = cluster.get(WatchKind::Pod, &ns, &name) else {
        return status(404, "NotFound", format!("pods {name:?} not found"));
    };
    let container_name = params.get("container").cloned().unwrap_or_else(|| "task".to_owned());
    let container = pod["spec"]["containers"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == container_name.as_str()))
        .cloned();
    let Some(container) = container else {
        return status(400, "BadRequest", format!("container {container_name} is not valid for pod {name}"));
    };
    if !(flag("stdin") || flag("stdout") || flag("stderr")) {
        return status(400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr");
    }
    if pod["status"]["phase"] != "Running" {
        return status(400, "BadRequest", format!("pod {name} is not running"));
    }
    if flag("stdin") && container["stdin"] != true {
        return status(400, "BadRequest", format!("container {container_name} in pod {name} does not take stdin"));
    }
    if flag("stdout") || flag("stderr") || flag("tty") {
        return status(400, "BadRequest", "the fake serves attach for stdin only");
    }
    let Ok(upgrade) = upgrade else {
        return status(400, "BadRequest", "attach needs a WebSocket upgrade");
    };
    upgrade.protocols(PROTOCOLS).on_upgrade(move |socket| serve(socket, cluster, ns, name)).into_response()
}

async fn serve(mut socket: WebSocket, cluster: Arc<Cluster>, ns: String, pod: String) {
    let stdin = cluster.take_stdin(&ns, &pod);
    if stdin.is_none() && cluster.node().is_some() {
        // stdinOnce: a later attach finds the stdin closed, and nothing to do.
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    // A scripted Pod (no kubelet runs it) takes what it is sent, and drops it.
    let mut stdin = stdin;
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Binary(data) => match data.first() {
                Some(&STDIN_CHANNEL) if !write(&mut stdin, &data[1..]).await => break,
                // v5: the client closed stdin. Nothing else is streamed: the attach ends.
                Some(&CLOSE_CHANNEL) if data.get(1) == Some(&STDIN_CHANNEL) => break,
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let Some(mut stdin) = stdin {
        let _ = stdin.shutdown().await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Writes to the container's stdin (or drops the bytes of a scripted Pod); false once it is closed.
async fn write(stdin: &mut Option<tokio::process::ChildStdin>, data: &[u8]) -> bool {
    match stdin {
        Some(stdin) => stdin.write_all(data).await.is_ok(),
        None => true,
    }
}
