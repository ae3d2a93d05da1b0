//! The HTTP side of the fake: routes, lists, watches, logs, and the Job controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::state::{Selector, State, WatchKind};

type Params = Query<HashMap<String, String>>;

pub(crate) struct Inner {
    state: Mutex<State>,
    /// The latest resourceVersion: watches wake on its change.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (an API server restart, a load balancer dropping streams).
    generation: watch::Sender<u64>,
    requests: Mutex<Vec<String>>,
    /// How often an idle watch that asked for bookmarks gets one (a real API server: about a minute).
    bookmark_every: Mutex<Duration>,
    /// `(method, path fragment, status)`: requests answered with that error (403 as RBAC would, 5xx
    /// as an overloaded API server would).
    denied: Mutex<Vec<(String, String, u16)>>,
    /// Where the fake kubelet keeps logs and working folders, when enabled.
    kubelet: Mutex<Option<std::path::PathBuf>>,
}

pub(crate) fn register_log_file(inner: &Inner, ns: &str, pod: &str, path: std::path::PathBuf) {
    lock(inner).log_files.insert((ns.to_owned(), pod.to_owned()), path);
}

pub(crate) fn register_process_group(inner: &Inner, ns: &str, pod: &str, pgid: i32) {
    lock(inner).groups.insert((ns.to_owned(), pod.to_owned()), pgid);
}

/// Sets a Pod's status; a Pod that ended completes or fails its Job, as the Job controller does.
pub(crate) fn set_pod_status(inner: &Inner, namespace: &str, pod: &str, new_status: Value) {
    let mut state = lock(inner);
    let Some(updated) = state.modify(WatchKind::Pod, namespace, pod, |p| p["status"] = new_status) else { return };
    let phase = updated["status"]["phase"].as_str().unwrap_or("").to_owned();
    let job = updated["metadata"]["labels"]["job-name"].as_str().map(str::to_owned);
    if let Some(job) = job {
        let condition = match phase.as_str() {
            "Succeeded" => Some(json!({"active": 0, "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True"}]})),
            "Failed" => Some(json!({"active": 0, "failed": 1,
                "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})),
            _ => None,
        };
        if let Some(job_status) = condition {
            state.modify(WatchKind::Job, namespace, &job, |j| j["status"] = job_status);
        }
    }
    let rv = state.rv;
    drop(state);
    inner.changed.send_replace(rv);
}

/// Sets a Job's status.
pub(crate) fn set_job_status(inner: &Inner, namespace: &str, job: &str, new_status: Value) {
    let mut state = lock(inner);
    state.modify(WatchKind::Job, namespace, job, |j| j["status"] = new_status);
    let rv = state.rv;
    drop(state);
    inner.changed.send_replace(rv);
}

/// A running fake API server on loopback. Dropping it stops serving.
#[derive(Clone)]
pub struct FakeCluster {
    inner: Arc<Inner>,
    url: String,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCluster").field("url", &self.url).finish_non_exhaustive()
    }
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message.into(), "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

impl FakeCluster {
    /// Starts serving on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let (changed, _) = watch::channel(0);
        let (generation, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed,
            generation,
            requests: Mutex::default(),
            bookmark_every: Mutex::new(Duration::from_millis(500)),
            denied: Mutex::default(),
            kubelet: Mutex::default(),
        });
        let app = Router::new()
            .route("/apis/batch/v1/namespaces/{ns}/jobs", get(list_jobs).post(create_job))
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(get_job).delete(delete_job))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/events", get(list_events))
            .route("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", axum::routing::post(create_policy))
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
                axum::routing::delete(delete_policy),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .fallback(|uri: Uri| async move { status(404, "NotFound", format!("the fake does not serve {uri}")) })
            .layer(axum::middleware::from_fn_with_state(inner.clone(), record_request))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { inner, url, _server: Arc::new(server) })
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The objects of a kind in a namespace.
    pub fn objects(&self, kind: WatchKind, namespace: &str) -> Vec<Value> {
        self.state().list(kind, namespace, &Selector::default())
    }

    /// Sets a Pod's `status` (phase, container statuses, conditions); a Pod that succeeded or failed
    /// completes or fails its Job, as the Job controller does.
    pub fn set_pod_status(&self, namespace: &str, pod: &str, new_status: Value) {
        set_pod_status(&self.inner, namespace, pod, new_status);
    }

    /// Sets a Job's `status` directly (a deadline exceeded, say).
    pub fn set_job_status(&self, namespace: &str, job: &str, new_status: Value) {
        set_job_status(&self.inner, namespace, job, new_status);
    }

    /// Runs Pods for real from now on: each Pod's `task` command as a local process group (see the
    /// `kubelet` module), with logs and work folders under `dir`.
    pub fn enable_kubelet(&self, dir: impl Into<std::path::PathBuf>) {
        *self.inner.kubelet.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.into());
    }

    /// Records an Event about a Pod (`FailedMount`, `FailedScheduling`, ...), as the kubelet would.
    pub fn add_pod_event(&self, namespace: &str, pod: &str, reason: &str, message: &str) {
        let mut state = self.state();
        let name = format!("{pod}.{}", uuid::Uuid::new_v4().simple());
        let event = json!({
            "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
        });
        let _ = state.create(WatchKind::Event, namespace, event);
        let rv = state.rv;
        drop(state);
        self.inner.changed.send_replace(rv);
    }

    /// Appends to a Pod's log (what its container printed).
    pub fn append_log(&self, namespace: &str, pod: &str, text: &str) {
        let mut state = self.state();
        state.logs.entry((namespace.to_owned(), pod.to_owned())).or_default().push_str(text);
        drop(state);
        // Log followers wake on the same signal.
        self.inner.changed.send_modify(|_| ());
    }

    /// Forgets the event history: a watch resuming from before now gets 410 Gone.
    pub fn compact(&self) {
        self.state().compact();
    }

    /// Answers 403 Forbidden to `method` requests whose path contains `fragment` (`"POST", "/jobs"`).
    pub fn deny(&self, method: &str, fragment: &str) {
        self.fail_requests(method, fragment, 403);
    }

    /// Answers `status` to `method` requests whose path contains `fragment`, until [`FakeCluster::heal`].
    pub fn fail_requests(&self, method: &str, fragment: &str, status: u16) {
        let rule = (method.to_owned(), fragment.to_owned(), status);
        self.inner.denied.lock().unwrap_or_else(|p| p.into_inner()).push(rule);
    }

    /// Stops failing requests.
    pub fn heal(&self) {
        self.inner.denied.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Sets how often idle watches get a bookmark (default 500 ms, so tests see them quickly).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.inner.bookmark_every.lock().unwrap_or_else(|p| p.into_inner()) = every;
    }

    /// Ends every open watch stream (as an API server restart would).
    pub fn drop_watches(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn record_request(
    AxumState(inner): AxumState<Arc<Inner>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", request.method(), request.uri());
    inner.requests.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    let path = request.uri().path().to_owned();
    let failure = inner
        .denied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(m, f, _)| request.method().as_str() == m && path.contains(f.as_str()))
        .map(|(_, _, code)| *code);
    match failure {
        Some(403) => {
            let message = format!("{} {path} is forbidden: the service account lacks the permission", request.method());
            return status(403, "Forbidden", message);
        }
        Some(code) => return status(code, "ServiceUnavailable", "the API server is overloaded; try again"),
        None => {}
    }
    next.run(request).await
}

fn list_response(inner: &Inner, kind: WatchKind, ns: &str, params: &HashMap<String, String>) -> Response {
    let state = lock(inner);
    let selector = Selector::parse(params.get("labelSelector").map(String::as_str))
        .with_fields(params.get("fieldSelector").map(String::as_str));
    let all = state.list(kind, ns, &selector);
    let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let start = params.get("continue").and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    if start + page.len() < all.len() {
        metadata["continue"] = json!((start + page.len()).to_string());
    }
    axum::Json(json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(),
                      "metadata": metadata, "items": page}))
    .into_response()
}

fn watch_response(inner: Arc<Inner>, kind: WatchKind, ns: String, params: &HashMap<String, String>) -> Response {
    let selector = Selector::parse(params.get("labelSelector").map(String::as_str))
        .with_fields(params.get("fieldSelector").map(String::as_str));
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(300);
    let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    {
        let state = lock(&inner);
        if from != 0 && from < state.compacted_through {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from} ({})", state.compacted_through),
                "reason": "Expired", "code": 410}});
            return Response::new(Body::from(format!("{gone}\n")));
        }
    }
    let changed = inner.changed.subscribe();
    let generation = inner.generation.subscribe();
    // resourceVersion 0 (or absent): the current objects first, as ADDED.
    let mut initial = Vec::new();
    let mut last = from;
    if from == 0 {
        let state = lock(&inner);
        for object in state.list(kind, &ns, &selector) {
            initial.push(json!({"type": "ADDED", "object": object}));
        }
        last = state.rv;
    }
    struct Cursor {
        inner: Arc<Inner>,
        kind: WatchKind,
        ns: String,
        selector: Selector,
        last: u64,
        changed: watch::Receiver<u64>,
        generation: watch::Receiver<u64>,
        pending: std::collections::VecDeque<Value>,
    }
    let cursor = Cursor { inner, kind, ns, selector, last, changed, generation, pending: initial.into() };
    let stream = futures::stream::unfold(cursor, move |mut c| async move {
        loop {
            if let Some(event) = c.pending.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(format!("{event}\n"))), c));
            }
            {
                let state = lock(&c.inner);
                for change in state.history.iter().filter(|ch| ch.rv > c.last) {
                    if change.kind == c.kind && change.namespace == c.ns && c.selector.matches(&change.object) {
                        c.pending.push_back(json!({"type": change.event_type, "object": change.object}));
                    }
                }
                c.last = state.rv;
            }
            if !c.pending.is_empty() {
                continue;
            }
            let bookmark_every = if bookmarks {
                *c.inner.bookmark_every.lock().unwrap_or_else(|p| p.into_inner())
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = c.changed.changed() => {}
                _ = c.generation.changed() => return None,
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = tokio::time::sleep(bookmark_every) => {
                    let rv = lock(&c.inner).rv;
                    c.pending.push_back(json!({"type": "BOOKMARK", "object": {"kind": c.kind.kind(),
                        "apiVersion": c.kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}}}));
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "could not build the watch response"))
}

fn is_watch(params: &HashMap<String, String>) -> bool {
    params.get("watch").is_some_and(|w| w == "true" || w == "1")
}

async fn list_jobs(AxumState(inner): AxumState<Arc<Inner>>, Path(ns): Path<String>, Query(p): Params) -> Response {
    if is_watch(&p) {
        watch_response(inner, WatchKind::Job, ns, &p)
    } else {
        list_response(&inner, WatchKind::Job, &ns, &p)
    }
}

async fn create_policy(AxumState(inner): AxumState<Arc<Inner>>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(policy) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    let mut state = lock(&inner);
    match state.create(WatchKind::NetworkPolicy, &ns, policy) {
        Ok(created) => {
            let rv = state.rv;
            drop(state);
            inner.changed.send_replace(rv);
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        Err((code, message)) => status(code, if code == 409 { "AlreadyExists" } else { "Invalid" }, message),
    }
}

async fn delete_policy(AxumState(inner): AxumState<Arc<Inner>>, Path((ns, name)): Path<(String, String)>) -> Response {
    let mut state = lock(&inner);
    match state.delete(WatchKind::NetworkPolicy, &ns, &name) {
        Some(deleted) => {
            let rv = state.rv;
            drop(state);
            inner.changed.send_replace(rv);
            axum::Json(deleted).into_response()
        }
        None => status(404, "NotFound", format!("networkpolicies {name:?} not found")),
    }
}

async fn list_events(AxumState(inner): AxumState<Arc<Inner>>, Path(ns): Path<String>, Query(p): Params) -> Response {
    if is_watch(&p) {
        watch_response(inner, WatchKind::Event, ns, &p)
    } else {
        list_response(&inner, WatchKind::Event, &ns, &p)
    }
}

async fn list_pods(AxumState(inner): AxumState<Arc<Inner>>, Path(ns): Path<String>, Query(p): Params) -> Response {
    if is_watch(&p) {
        watch_response(inner, WatchKind::Pod, ns, &p)
    } else {
        list_response(&inner, WatchKind::Pod, &ns, &p)
    }
}

fn get_object(inner: &Inner, kind: WatchKind, ns: &str, name: &str) -> Response {
    let state = lock(inner);
    match state.objects.get(&(kind, ns.to_owned(), name.to_owned())) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => status(404, "NotFound", format!("{}s {name:?} not found", kind.kind().to_ascii_lowercase())),
    }
}

async fn get_job(AxumState(inner): AxumState<Arc<Inner>>, Path((ns, name)): Path<(String, String)>) -> Response {
    get_object(&inner, WatchKind::Job, &ns, &name)
}

async fn get_pod(AxumState(inner): AxumState<Arc<Inner>>, Path((ns, name)): Path<(String, String)>) -> Response {
    get_object(&inner, WatchKind::Pod, &ns, &name)
}

async fn create_job(AxumState(inner): AxumState<Arc<Inner>>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(job) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    let mut state = lock(&inner);
    let created = match state.create(WatchKind::Job, &ns, job) {
        Ok(j) => j,
        Err((code, message)) => return status(code, if code == 409 { "AlreadyExists" } else { "Invalid" }, message),
    };
    // The Job controller: one Pod from the template.
    let name = created["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
    let mut labels = created["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["job-name"] = json!(name);
    labels["controller-uid"] = created["metadata"]["uid"].clone();
    let pod = json!({
        "metadata": {"name": format!("{name}-{suffix}"), "labels": labels,
                     "annotations": created["spec"]["template"]["metadata"]["annotations"].clone(),
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                          "uid": created["metadata"]["uid"].clone(), "controller": true}]},
        "spec": created["spec"]["template"]["spec"].clone(),
        "status": {"phase": "Pending"},
    });
    let pod = state.create(WatchKind::Pod, &ns, pod);
    let current = state.modify(WatchKind::Job, &ns, &name, |j| j["status"] = json!({"active": 1}));
    let rv = state.rv;
    drop(state);
    inner.changed.send_replace(rv);
    let kubelet = inner.kubelet.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some(dir), Ok(pod)) = (kubelet, pod) {
        let deadline = created["spec"]["activeDeadlineSeconds"].as_u64();
        tokio::spawn(crate::kubelet::run_pod(inner.clone(), dir, ns.clone(), pod, deadline));
    }
    (StatusCode::CREATED, axum::Json(current.unwrap_or(created))).into_response()
}

async fn delete_job(
    AxumState(inner): AxumState<Arc<Inner>>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    body: Bytes,
) -> Response {
    let _ = method;
    let foreground =
        serde_json::from_slice::<Value>(&body).ok().is_some_and(|b| b["propagationPolicy"] == "Foreground");
    // The kubelet stops the Pods' processes first (a deletion completes once they are gone).
    let groups: Vec<i32> = {
        let state = lock(&inner);
        state
            .list(WatchKind::Pod, &ns, &Selector::parse(Some(&format!("job-name={name}"))))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .filter_map(|p| state.groups.get(&(ns.clone(), p.to_owned())).copied())
            .collect()
    };
    for pgid in groups {
        crate::kubelet::stop_group(pgid).await;
    }
    let mut state = lock(&inner);
    let pods: Vec<String> = state
        .list(WatchKind::Pod, &ns, &Selector::parse(Some(&format!("job-name={name}"))))
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    // Foreground: dependents go first; otherwise (background) they go too, just after.
    if foreground {
        for pod in &pods {
            state.delete(WatchKind::Pod, &ns, pod);
        }
    }
    let Some(job) = state.delete(WatchKind::Job, &ns, &name) else {
        return status(404, "NotFound", format!("jobs {name:?} not found"));
    };
    if !foreground {
        for pod in &pods {
            state.delete(WatchKind::Pod, &ns, pod);
        }
    }
    let rv = state.rv;
    drop(state);
    inner.changed.send_replace(rv);
    axum::Json(job).into_response()
}

/// Streams a kubelet-written log file, following it until the Pod ends.
fn file_log(inner: Arc<Inner>, key: (String, String), path: std::path::PathBuf, follow: bool) -> Response {
    use std::io::{Read, Seek, SeekFrom};
    let stream =
        futures::stream::unfold((inner, key, path, 0u64, false), move |(inner, key, path, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                let finished = {
                    let state = lock(&inner);
                    let pod = state.objects.get(&(WatchKind::Pod, key.0.clone(), key.1.clone()));
                    pod.is_none_or(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                };
                let mut chunk = vec![0u8; 64 * 1024];
                let read = std::fs::File::open(&path).and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.read(&mut chunk)
                });
                match read {
                    Ok(n) if n > 0 => {
                        chunk.truncate(n);
                        let next = (inner, key, path, offset + n as u64, false);
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), next));
                    }
                    _ if finished || !follow => return None,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    Response::new(Body::from_stream(stream.boxed()))
}

async fn pod_log(
    AxumState(inner): AxumState<Arc<Inner>>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Params,
) -> Response {
    let phase = {
        let state = lock(&inner);
        match state.objects.get(&(WatchKind::Pod, ns.clone(), name.clone())) {
            Some(pod) => pod["status"]["phase"].as_str().unwrap_or("").to_owned(),
            None => return status(404, "NotFound", format!("pods {name:?} not found")),
        }
    };
    if phase == "Pending" {
        return status(400, "BadRequest", format!("container \"task\" in pod {name:?} is waiting to start"));
    }
    let follow = p.get("follow").is_some_and(|f| f == "true");
    let key = (ns.clone(), name.clone());
    let file = lock(&inner).log_files.get(&key).cloned();
    if let Some(path) = file {
        return file_log(inner, key, path, follow);
    }
    if !follow {
        let text = lock(&inner).logs.get(&key).cloned().unwrap_or_default();
        return Response::new(Body::from(text));
    }
    let changed = inner.changed.subscribe();
    let stream = futures::stream::unfold(
        (inner, key, 0usize, changed, false),
        |(inner, key, sent, mut changed, done)| async move {
            if done {
                return None;
            }
            loop {
                let (chunk, finished) = {
                    let state = lock(&inner);
                    let text = state.logs.get(&key).cloned().unwrap_or_default();
                    let pod = state.objects.get(&(WatchKind::Pod, key.0.clone(), key.1.clone()));
                    let finished =
                        pod.is_none_or(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")));
                    (text.get(sent..).unwrap_or("").to_owned(), finished)
                };
                if !chunk.is_empty() {
                    let len = chunk.len();
                    return Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from(chunk)),
                        (inner, key, sent + len, changed, false),
                    ));
                }
                if finished {
                    return None;
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    Response::new(Body::from_stream(stream.boxed()))
}
