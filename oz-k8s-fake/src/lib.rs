//! A fake Kubernetes API server for tests, faithful where the Kubernetes backend depends on it:
//!
//! - Jobs (`batch/v1`) and Pods (`v1`) in namespaces: create, get, list, delete (foreground
//!   propagation deletes a Job's Pods first);
//! - one cluster-wide `resourceVersion` counter; lists carry it; `labelSelector` (equality terms),
//!   `limit` and `continue` work;
//! - watches (`?watch=true`) stream newline-delimited JSON events over a chunked response, resume from
//!   `resourceVersion`, send `BOOKMARK`s when asked (`allowWatchBookmarks`), end after
//!   `timeoutSeconds`, and answer `410 Gone` (an `ERROR` event with a `Status`) for a version older
//!   than the retained history ([`FakeCluster::compact`]);
//! - a Job controller: creating a Job creates its Pod (`<job>-<suffix>`, labelled `job-name`); a Pod
//!   that succeeds or fails completes or fails its Job;
//! - scripted kubelet: tests set a Pod's status ([`FakeCluster::set_pod_status`]) and append to its
//!   log ([`FakeCluster::append_log`]), which `GET .../log?follow=true` streams live;
//! - or a running kubelet ([`FakeCluster::enable_kubelet`]): each Pod's command runs as a local
//!   process group, its output is the log, its exit the Pod's status; its volumes are host folders;
//!   a container with `stdin: true` is written through `pods/attach` (WebSocket, `v5.channel.k8s.io`);
//! - merge patches (`application/merge-patch+json`) of Jobs and Pods (labels, a deadline);
//! - Events (`add_pod_event`) with field selectors, NetworkPolicies, and RBAC denials (`deny`).
//!
//! ```no_run
//! # async fn demo() {
//! let cluster = oz_k8s_fake::FakeCluster::start().await.unwrap();
//! let url = cluster.url(); // point a kube::Config at it
//! # let _ = url;
//! # }
//! ```

mod attach;
mod cluster;
mod controller;
mod kubelet;
mod server;
mod state;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use state::WatchKind;

use crate::cluster::Cluster;

/// A running fake API server on loopback. Dropping it stops serving.
#[derive(Clone)]
pub struct FakeCluster {
    cluster: Arc<Cluster>,
    url: String,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCluster").field("url", &self.url).finish_non_exhaustive()
    }
}

impl FakeCluster {
    /// Starts serving on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let cluster = Arc::new(Cluster::new());
        let app = server::router(cluster.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { cluster, url, _server: Arc::new(server) })
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.cluster.requests()
    }

    /// The objects of a kind in a namespace.
    pub fn objects(&self, kind: WatchKind, namespace: &str) -> Vec<Value> {
        self.cluster.objects(kind, namespace)
    }

    /// Sets a Pod's `status` (phase, container statuses, conditions); a Pod that succeeded or failed
    /// completes or fails its Job, as the Job controller does.
    pub fn set_pod_status(&self, namespace: &str, pod: &str, new_status: Value) {
        self.cluster.set_pod_status(namespace, pod, new_status);
    }

    /// Sets a Job's `status` directly (a deadline exceeded, say).
    pub fn set_job_status(&self, namespace: &str, job: &str, new_status: Value) {
        self.cluster.set_job_status(namespace, job, new_status);
    }

    /// Runs Pods for real from now on: each Pod's `task` command as a local process group (see the
    /// `kubelet` module), with logs and work folders under `dir`.
    pub fn enable_kubelet(&self, dir: impl Into<std::path::PathBuf>) {
        self.enable_kubelet_with(dir, []);
    }

    /// [`FakeCluster::enable_kubelet`], with host folders standing for the volumes of the given
    /// names (`("agent", folder)`: the sidecar an init container would copy from its image; a
    /// PersistentVolumeClaim's volume). A mount's `subPath` is a folder of its volume.
    /// Each Pod's volumes are host folders, and paths under their mounts in its command, env and
    /// working directory are translated to them (the fake has no mount namespace); a downwardAPI
    /// volume holds its fields and a Secret volume its keys. A task container with `stdin: true`
    /// gets a pipe, written by the first `pods/attach` (`stdinOnce`).
    pub fn enable_kubelet_with(
        &self,
        dir: impl Into<std::path::PathBuf>,
        preloaded: impl IntoIterator<Item = (String, std::path::PathBuf)>,
    ) {
        let node = kubelet::Kubelet::new(dir.into(), preloaded.into_iter().collect());
        self.cluster.set_node(Arc::new(node));
    }

    /// Records an Event about a Pod (`FailedMount`, `FailedScheduling`, ...), as the kubelet would.
    pub fn add_pod_event(&self, namespace: &str, pod: &str, reason: &str, message: &str) {
        self.cluster.add_pod_event(namespace, pod, reason, message);
    }

    /// Appends to a Pod's log (what its container printed).
    pub fn append_log(&self, namespace: &str, pod: &str, text: &str) {
        self.cluster.append_log(namespace, pod, text);
    }

    /// Forgets the event history: a watch resuming from before now gets 410 Gone.
    pub fn compact(&self) {
        self.cluster.compact();
    }

    /// Answers 403 Forbidden to `method` requests whose path contains `fragment` (`"POST", "/jobs"`).
    pub fn deny(&self, method: &str, fragment: &str) {
        self.fail_requests(method, fragment, 403);
    }

    /// Answers `status` to `method` requests whose path contains `fragment`, until [`FakeCluster::heal`].
    pub fn fail_requests(&self, method: &str, fragment: &str, status: u16) {
        self.cluster.fail_requests(method, fragment, status);
    }

    /// Stops failing requests.
    pub fn heal(&self) {
        self.cluster.heal();
    }

    /// Sets how often idle watches get a bookmark (default 500 ms, so tests see them quickly).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.cluster.set_bookmark_every(every);
    }

    /// Ends every open watch stream (as an API server restart would).
    pub fn drop_watches(&self) {
        self.cluster.drop_watches();
    }
}
