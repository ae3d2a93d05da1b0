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
//!   process group, its output is the log, its exit the Pod's status;
//! - Events (`add_pod_event`) with field selectors, NetworkPolicies, and RBAC denials (`deny`).
//!
//! ```no_run
//! # async fn demo() {
//! let cluster = oz_k8s_fake::FakeCluster::start().await.unwrap();
//! let url = cluster.url(); // point a kube::Config at it
//! # let _ = url;
//! # }
//! ```

mod kubelet;
mod server;
mod state;

pub use server::FakeCluster;
pub use state::WatchKind;
