//! The HTTP side of the fake: routes, lists, watches, logs, and the scripted failures; every change
//! goes through the cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::state::{Selector, WatchKind};

type Params = Query<HashMap<String, String>>;

pub(crate) fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message.into(), "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

/// The routes of the API the fake serves, over `cluster`.
pub(crate) fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/apis/batch/v1/namespaces/{ns}/jobs", get(list_jobs).post(create_job))
        .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(get_job).delete(delete_job).patch(patch_job))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/events", get(list_events))
        .route("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", axum::routing::post(create_policy))
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
            axum::routing::delete(delete_policy),
        )
        .route("/api/v1/namespaces/{ns}/secrets", get(list_secrets).post(create_secret))
        .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret).delete(delete_secret))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod).patch(patch_pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .route("/api/v1/namespaces/{ns}/pods/{name}/attach", get(crate::attach::attach))
        .fallback(|uri: Uri| async move { status(404, "NotFound", format!("the fake does not serve {uri}")) })
        .layer(axum::middleware::from_fn_with_state(cluster.clone(), record_request))
        .with_state(cluster)
}

async fn record_request(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    cluster.record_request(format!("{} {}", request.method(), request.uri()));
    let path = request.uri().path().to_owned();
    let failure = cluster.failure(request.method().as_str(), &path);
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

fn list_response(cluster: &Cluster, kind: WatchKind, ns: &str, params: &HashMap<String, String>) -> Response {
    let state = cluster.state();
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

fn watch_response(cluster: Arc<Cluster>, kind: WatchKind, ns: String, params: &HashMap<String, String>) -> Response {
    let selector = Selector::parse(params.get("labelSelector").map(String::as_str))
        .with_fields(params.get("fieldSelector").map(String::as_str));
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(300);
    let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    {
        let state = cluster.state();
        if from != 0 && from < state.compacted_through {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from} ({})", state.compacted_through),
                "reason": "Expired", "code": 410}});
            return Response::new(Body::from(format!("{gone}\n")));
        }
    }
    let changed = cluster.changes();
    let generation = cluster.restarts();
    // resourceVersion 0 (or absent): the current objects first, as ADDED.
    let mut initial = Vec::new();
    let mut last = from;
    if from == 0 {
        let state = cluster.state();
        for object in state.list(kind, &ns, &selector) {
            initial.push(json!({"type": "ADDED", "object": object}));
        }
        last = state.rv;
    }
    struct Cursor {
        cluster: Arc<Cluster>,
        kind: WatchKind,
        ns: String,
        selector: Selector,
        last: u64,
        changed: watch::Receiver<u64>,
        generation: watch::Receiver<u64>,
        pending: std::collections::VecDeque<Value>,
    }
    let cursor = Cursor { cluster, kind, ns, selector, last, changed, generation, pending: initial.into() };
    let stream = futures::stream::unfold(cursor, move |mut c| async move {
        loop {
            if let Some(event) = c.pending.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(format!("{event}\n"))), c));
            }
            {
                let state = c.cluster.state();
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
            let bookmark_every = if bookmarks { c.cluster.bookmark_every() } else { Duration::from_secs(3600) };
            tokio::select! {
                _ = c.changed.changed() => {}
                _ = c.generation.changed() => return None,
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = tokio::time::sleep(bookmark_every) => {
                    let rv = c.cluster.state().rv;
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

async fn list_jobs(AxumState(cluster): AxumState<Arc<Cluster>>, Path(ns): Path<String>, Query(p): Params) -> Response {
    if is_watch(&p) {
        watch_response(cluster, WatchKind::Job, ns, &p)
    } else {
        list_response(&cluster, WatchKind::Job, &ns, &p)
    }
}

async fn create_policy(AxumState(cluster): AxumState<Arc<Cluster>>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(policy) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    match cluster.create(WatchKind::NetworkPolicy, &ns, policy) {
        Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
        Err((code, message)) => refused(code, message),
    }
}

async fn delete_policy(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match cluster.delete(WatchKind::NetworkPolicy, &ns, &name) {
        Some(deleted) => axum::Json(deleted).into_response(),
        None => status(404, "NotFound", format!("networkpolicies {name:?} not found")),
    }
}

/// Creates a Secret as the API server does: `stringData` is write-only, folded into `data` (base64).
async fn create_secret(AxumState(cluster): AxumState<Arc<Cluster>>, Path(ns): Path<String>, body: Bytes) -> Response {
    use base64::Engine;
    let Ok(mut secret) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    if let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|o| o.remove("stringData")) {
        let data = secret["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (key, value) in plain {
            let text = value.as_str().unwrap_or_default();
            data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
        secret["data"] = Value::Object(data);
    }
    match cluster.create(WatchKind::Secret, &ns, secret) {
        Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
        Err((code, message)) => refused(code, message),
    }
}

async fn list_secrets(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path(ns): Path<String>,
    Query(p): Params,
) -> Response {
    list_response(&cluster, WatchKind::Secret, &ns, &p)
}

async fn get_secret(AxumState(cluster): AxumState<Arc<Cluster>>, Path((ns, name)): Path<(String, String)>) -> Response {
    get_object(&cluster, WatchKind::Secret, &ns, &name)
}

async fn delete_secret(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match cluster.delete(WatchKind::Secret, &ns, &name) {
        Some(deleted) => axum::Json(deleted).into_response(),
        None => status(404, "NotFound", format!("secrets {name:?} not found")),
    }
}

/// A creation the cluster refused: 409 if the name is taken, 422 otherwise.
fn refused(code: u16, message: String) -> Response {
    status(code, if code == 409 { "AlreadyExists" } else { "Invalid" }, message)
}

async fn list_events(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path(ns): Path<String>,
    Query(p): Params,
) -> Response {
    if is_watch(&p) {
        watch_response(cluster, WatchKind::Event, ns, &p)
    } else {
        list_response(&cluster, WatchKind::Event, &ns, &p)
    }
}

async fn list_pods(AxumState(cluster): AxumState<Arc<Cluster>>, Path(ns): Path<String>, Query(p): Params) -> Response {
    if is_watch(&p) {
        watch_response(cluster, WatchKind::Pod, ns, &p)
    } else {
        list_response(&cluster, WatchKind::Pod, &ns, &p)
    }
}

fn get_object(cluster: &Cluster, kind: WatchKind, ns: &str, name: &str) -> Response {
    match cluster.get(kind, ns, name) {
        Some(o) => axum::Json(o).into_response(),
        None => status(404, "NotFound", format!("{}s {name:?} not found", kind.kind().to_ascii_lowercase())),
    }
}

async fn get_job(AxumState(cluster): AxumState<Arc<Cluster>>, Path((ns, name)): Path<(String, String)>) -> Response {
    get_object(&cluster, WatchKind::Job, &ns, &name)
}

async fn get_pod(AxumState(cluster): AxumState<Arc<Cluster>>, Path((ns, name)): Path<(String, String)>) -> Response {
    get_object(&cluster, WatchKind::Pod, &ns, &name)
}

/// A JSON merge patch of an object (the only patch type the fake takes; others are 415).
fn patch_object(
    cluster: &Cluster,
    kind: WatchKind,
    ns: &str,
    name: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type != "application/merge-patch+json" {
        let message = format!("the fake takes only application/merge-patch+json patches, not {content_type:?}");
        return status(415, "UnsupportedMediaType", message);
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the patch is not JSON");
    };
    match cluster.merge_patch(kind, ns, name, &patch) {
        Some(object) => axum::Json(object).into_response(),
        None => status(404, "NotFound", format!("{}s {name:?} not found", kind.kind().to_ascii_lowercase())),
    }
}

async fn patch_job(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    patch_object(&cluster, WatchKind::Job, &ns, &name, &headers, &body)
}

async fn patch_pod(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    patch_object(&cluster, WatchKind::Pod, &ns, &name, &headers, &body)
}

async fn create_job(AxumState(cluster): AxumState<Arc<Cluster>>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(job) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    match cluster.create_job(&ns, job) {
        Ok(job) => (StatusCode::CREATED, axum::Json(job)).into_response(),
        Err((code, message)) => refused(code, message),
    }
}

async fn delete_job(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let foreground =
        serde_json::from_slice::<Value>(&body).ok().is_some_and(|b| b["propagationPolicy"] == "Foreground");
    match cluster.delete_job(&ns, &name, foreground).await {
        Some(job) => axum::Json(job).into_response(),
        None => status(404, "NotFound", format!("jobs {name:?} not found")),
    }
}

/// Streams a kubelet-written log file, following it until the Pod ends.
fn file_log(cluster: Arc<Cluster>, key: (String, String), path: std::path::PathBuf, follow: bool) -> Response {
    use std::io::{Read, Seek, SeekFrom};
    let stream = futures::stream::unfold(
        (cluster, key, path, 0u64, false),
        move |(cluster, key, path, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                let finished = {
                    let state = cluster.state();
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
                        let next = (cluster, key, path, offset + n as u64, false);
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), next));
                    }
                    _ if finished || !follow => return None,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        },
    );
    Response::new(Body::from_stream(stream.boxed()))
}

async fn pod_log(
    AxumState(cluster): AxumState<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Params,
) -> Response {
    let phase = {
        let state = cluster.state();
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
    let file = cluster.state().log_files.get(&key).cloned();
    if let Some(path) = file {
        return file_log(cluster, key, path, follow);
    }
    if !follow {
        let text = cluster.state().logs.get(&key).cloned().unwrap_or_default();
        return Response::new(Body::from(text));
    }
    let changed = cluster.changes();
    let stream = futures::stream::unfold(
        (cluster, key, 0usize, changed, false),
        |(cluster, key, sent, mut changed, done)| async move {
            if done {
                return None;
            }
            loop {
                let (chunk, finished) = {
                    let state = cluster.state();
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
                        (cluster, key, sent + len, changed, false),
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
