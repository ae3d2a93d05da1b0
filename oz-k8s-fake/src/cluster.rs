//! The cluster both the HTTP side and the kubelet work on: the objects ([`State`]), the signals that
//! wake watches and log followers, the request log and the scripted failures the HTTP side consults,
//! and the node that runs Pods, if any. A change that makes a new resourceVersion ends with
//! [`Cluster::publish`], so that every open watch sees it. The Job controller's reactions are in
//! `controller.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::state::{Selector, State, WatchKind};

/// What runs the Pods the Job controller makes (the fake kubelet, once enabled). Without one, Pods
/// stay as tests script them. A trait, so that the cluster never depends on the kubelet, which
/// reports to the cluster.
pub(crate) trait Node: Send + Sync {
    /// Starts running a new Pod; `deadline` is its Job's `activeDeadlineSeconds`.
    fn run(&self, cluster: Arc<Cluster>, namespace: String, pod: Value, deadline: Option<u64>);
    /// Stops a process group the node started; resolves once nothing in it runs.
    fn stop(&self, pgid: i32) -> BoxFuture<'static, ()>;
}

/// A request rule: `(method, path fragment, status)`.
type Failure = (String, String, u16);

pub(crate) struct Cluster {
    state: Mutex<State>,
    /// The latest resourceVersion: watches wake on its change.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (an API server restart, a load balancer dropping streams).
    generation: watch::Sender<u64>,
    requests: Mutex<Vec<String>>,
    /// How often an idle watch that asked for bookmarks gets one (a real API server: about a minute).
    bookmark_every: Mutex<Duration>,
    /// Requests answered with an error (403 as RBAC would, 5xx as an overloaded API server would).
    failures: Mutex<Vec<Failure>>,
    node: Mutex<Option<Arc<dyn Node>>>,
}

/// Locks, even after a panic while locked: the fake keeps serving the tests that still run.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub(crate) fn new() -> Self {
        let (changed, _) = watch::channel(0);
        let (generation, _) = watch::channel(0);
        Self {
            state: Mutex::new(State::default()),
            changed,
            generation,
            requests: Mutex::default(),
            bookmark_every: Mutex::new(Duration::from_millis(500)),
            failures: Mutex::default(),
            node: Mutex::default(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// Ends a change made under `state`: releases it, then wakes watches and log followers.
    pub(crate) fn publish(&self, state: MutexGuard<'_, State>) {
        let rv = state.rv;
        drop(state);
        self.changed.send_replace(rv);
    }

    /// Changes whenever the objects (or a scripted log) do.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes when every open watch must end ([`Cluster::drop_watches`]).
    pub(crate) fn restarts(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub(crate) fn drop_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Stores a new object (`(status, message)` if it cannot be).
    pub(crate) fn create(&self, kind: WatchKind, namespace: &str, object: Value) -> Result<Value, (u16, String)> {
        let mut state = self.state();
        let created = state.create(kind, namespace, object)?;
        self.publish(state);
        Ok(created)
    }

    /// Removes an object; `None` if there was none.
    pub(crate) fn delete(&self, kind: WatchKind, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.state();
        let deleted = state.delete(kind, namespace, name)?;
        self.publish(state);
        Some(deleted)
    }

    /// Applies a JSON merge patch (RFC 7386, `application/merge-patch+json`) to an object; its
    /// identity (name, namespace, uid) and `status` are not the patch's to change. `None` if there
    /// is no such object.
    pub(crate) fn merge_patch(&self, kind: WatchKind, namespace: &str, name: &str, patch: &Value) -> Option<Value> {
        let mut state = self.state();
        let patched = state.modify(kind, namespace, name, |object| {
            let kept = [
                object["metadata"]["name"].clone(),
                object["metadata"]["namespace"].clone(),
                object["metadata"]["uid"].clone(),
                object["status"].clone(),
            ];
            json_patch::merge(object, patch);
            let [name, namespace, uid, status] = kept;
            object["metadata"]["name"] = name;
            object["metadata"]["namespace"] = namespace;
            object["metadata"]["uid"] = uid;
            object["status"] = status;
        });
        self.publish(state);
        patched
    }

    pub(crate) fn get(&self, kind: WatchKind, namespace: &str, name: &str) -> Option<Value> {
        self.state().objects.get(&(kind, namespace.to_owned(), name.to_owned())).cloned()
    }

    pub(crate) fn objects(&self, kind: WatchKind, namespace: &str) -> Vec<Value> {
        self.state().list(kind, namespace, &Selector::default())
    }

    pub(crate) fn set_job_status(&self, namespace: &str, job: &str, new_status: Value) {
        let mut state = self.state();
        state.modify(WatchKind::Job, namespace, job, |j| j["status"] = new_status);
        self.publish(state);
    }

    /// Records an Event about a Pod, as the kubelet would.
    pub(crate) fn add_pod_event(&self, namespace: &str, pod: &str, reason: &str, message: &str) {
        let mut state = self.state();
        let name = format!("{pod}.{}", uuid::Uuid::new_v4().simple());
        let event = json!({
            "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
        });
        let _ = state.create(WatchKind::Event, namespace, event);
        self.publish(state);
    }

    /// Appends to a Pod's scripted log.
    pub(crate) fn append_log(&self, namespace: &str, pod: &str, text: &str) {
        self.state().logs.entry((namespace.to_owned(), pod.to_owned())).or_default().push_str(text);
        // Log followers wake on the same signal; the resourceVersion stays.
        self.changed.send_modify(|_| ());
    }

    /// Makes a Pod's log the file the kubelet writes.
    pub(crate) fn register_log_file(&self, namespace: &str, pod: &str, path: PathBuf) {
        self.state().log_files.insert((namespace.to_owned(), pod.to_owned()), path);
    }

    /// Records the process group the kubelet runs a Pod in, to stop it when the Pod is deleted.
    pub(crate) fn register_process_group(&self, namespace: &str, pod: &str, pgid: i32) {
        self.state().groups.insert((namespace.to_owned(), pod.to_owned()), pgid);
    }

    /// Records the open stdin of a Pod's task container, for the first attach to take.
    pub(crate) fn register_stdin(&self, namespace: &str, pod: &str, stdin: tokio::process::ChildStdin) {
        self.state().stdins.insert((namespace.to_owned(), pod.to_owned()), stdin);
    }

    /// Takes a Pod's open stdin (`stdinOnce`: the first attach has it, and it closes with that one).
    pub(crate) fn take_stdin(&self, namespace: &str, pod: &str) -> Option<tokio::process::ChildStdin> {
        self.state().stdins.remove(&(namespace.to_owned(), pod.to_owned()))
    }

    pub(crate) fn compact(&self) {
        self.state().compact();
    }

    pub(crate) fn record_request(&self, line: String) {
        locked(&self.requests).push(line);
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        locked(&self.requests).clone()
    }

    pub(crate) fn fail_requests(&self, method: &str, fragment: &str, status: u16) {
        locked(&self.failures).push((method.to_owned(), fragment.to_owned(), status));
    }

    pub(crate) fn heal(&self) {
        locked(&self.failures).clear();
    }

    /// The status to answer a `method` request on `path` with instead of serving it, if any.
    pub(crate) fn failure(&self, method: &str, path: &str) -> Option<u16> {
        locked(&self.failures)
            .iter()
            .find(|(m, f, _)| method == m && path.contains(f.as_str()))
            .map(|(_, _, code)| *code)
    }

    pub(crate) fn bookmark_every(&self) -> Duration {
        *locked(&self.bookmark_every)
    }

    pub(crate) fn set_bookmark_every(&self, every: Duration) {
        *locked(&self.bookmark_every) = every;
    }

    pub(crate) fn node(&self) -> Option<Arc<dyn Node>> {
        locked(&self.node).clone()
    }

    pub(crate) fn set_node(&self, node: Arc<dyn Node>) {
        *locked(&self.node) = Some(node);
    }
}
