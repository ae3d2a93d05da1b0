//! Serving the API over HTTP/1.1 with the limits a public server needs, which
//! `axum::serve` does not set: a deadline for a request's headers (so a client that opens a
//! connection and sends nothing, or trickles its headers, or sits idle between keep-alive requests,
//! is let go) and a cap on open connections (beyond it, new ones wait in the kernel's backlog).
//! WebSocket upgrades (the worker socket) are served as they are with axum.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connection limits (`ServerConfig::connections`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client has to send a request's headers, from its connection or the end of its
    /// previous request.
    pub header_read_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(30), max_connections: 4096 }
    }
}

/// Serves `app` on `listener` until `stop` resolves; then open connections finish their requests
/// (up to [`DRAIN`]) and close.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // HTTP/1.1 only: telling HTTP/2 apart (hyper-util's auto connection) reads the client's first
    // bytes with no deadline, which a silent client would hold open forever. The API's clients
    // (SDKs, workers, browsers' SSE) speak HTTP/1.1.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        while open.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut stopped = stopped.clone();
        open.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                _ = stopped.wait_for(|s| *s) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN, async { while open.join_next().await.is_some() {} }).await.is_err() {
        open.abort_all();
    }
}

/// How long open connections get to finish their requests once the server stops.
pub const DRAIN: Duration = Duration::from_secs(5);
