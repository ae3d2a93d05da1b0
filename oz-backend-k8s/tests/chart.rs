//! The Helm chart (deploy/helm/oz-worker), rendered without helm (the templates keep to a small
//! subset of Go templates, rendered here) and parsed as Kubernetes objects: a non-root worker with
//! capabilities dropped, its configuration, and a Role granting exactly the verbs the backend uses,
//! measured from the requests it makes against the fake API server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::{Backend, CancelReason};
use oz_core::task::TaskSpec;
use oz_k8s_fake::{FakeCluster, WatchKind};
use serde_json::{Value, json};

// ---- a renderer for the template subset the chart uses --------------------------------------------

struct Context {
    values: Value,
    release: Value,
}

fn lookup(ctx: &Context, path: &str) -> Value {
    let (root, rest) = if let Some(r) = path.strip_prefix(".Values.") {
        (&ctx.values, r)
    } else if let Some(r) = path.strip_prefix(".Release.") {
        (&ctx.release, r)
    } else {
        panic!("unsupported reference {path}");
    };
    rest.split('.').fold(root.clone(), |v, key| v.get(key).cloned().unwrap_or(Value::Null))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn arg(ctx: &Context, token: &str) -> Value {
    if let Some(s) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Value::String(s.to_owned())
    } else {
        lookup(ctx, token)
    }
}

fn pipeline(ctx: &Context, expr: &str) -> Value {
    let mut stages = expr.split('|').map(str::trim);
    let mut value = arg(ctx, stages.next().unwrap());
    for stage in stages {
        let mut words = stage.split_whitespace();
        value = match words.next().unwrap() {
            "quote" => Value::String(serde_json::to_string(&text(&value)).unwrap()),
            "toJson" => Value::String(value.to_string()),
            "default" => {
                if truthy(&value) {
                    value
                } else {
                    arg(ctx, words.next().unwrap())
                }
            }
            other => panic!("unsupported function {other}"),
        };
    }
    value
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders `template`: `{{ pipeline }}`, `{{ if pipeline }}..{{ else }}..{{ end }}`, and `{{-`/`-}}`.
fn render(template: &str, ctx: &Context) -> String {
    let mut out = String::new();
    // A stack of (condition held, in else branch) for if blocks; output only when all are active.
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(cond, in_else)| cond != in_else);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        let end = after.find("}}").expect("unclosed action");
        let mut action = &after[2..end];
        let trim_left = action.starts_with('-');
        let trim_right = action.ends_with('-');
        action = action.trim_start_matches('-').trim_end_matches('-').trim();
        if active(&stack) {
            out.push_str(before);
        }
        if trim_left {
            let trimmed = out.trim_end().len();
            out.truncate(trimmed);
        }
        rest = &after[end + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
        if let Some(cond) = action.strip_prefix("if ") {
            let held = active(&stack) && truthy(&pipeline(ctx, cond));
            stack.push((held, false));
        } else if action == "else" {
            stack.last_mut().expect("else without if").1 = true;
        } else if action == "end" {
            stack.pop().expect("end without if");
        } else if active(&stack) {
            out.push_str(&text(&pipeline(ctx, action)));
        }
    }
    if active(&stack) {
        out.push_str(rest);
    }
    out
}

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/oz-worker")
}

/// Every rendered document of the chart, by kind.
fn rendered(overrides: Value) -> Vec<Value> {
    let mut values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap()).unwrap();
    merge(&mut values, overrides);
    let ctx = Context { values, release: json!({"Name": "ozw", "Namespace": "agents"}) };
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let out = render(&std::fs::read_to_string(&path).unwrap(), &ctx);
        if out.trim().is_empty() {
            continue;
        }
        let doc: Value = serde_saphyr::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}\n{out}", path.display()));
        docs.push(doc);
    }
    docs
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

fn of_kind(docs: &[Value], kind: &str) -> Option<Value> {
    docs.iter().find(|d| d["kind"] == kind).cloned()
}

#[test]
fn the_chart_renders_valid_objects_with_a_locked_down_worker() {
    let docs = rendered(json!({"apiKey": {"value": "oz_test_key"}}));
    let deployment: Deployment = serde_json::from_value(of_kind(&docs, "Deployment").unwrap()).unwrap();
    let _: ServiceAccount = serde_json::from_value(of_kind(&docs, "ServiceAccount").unwrap()).unwrap();
    let _: RoleBinding = serde_json::from_value(of_kind(&docs, "RoleBinding").unwrap()).unwrap();
    let _: Service = serde_json::from_value(of_kind(&docs, "Service").unwrap()).unwrap();
    let secret: Secret = serde_json::from_value(of_kind(&docs, "Secret").unwrap()).unwrap();
    assert_eq!(secret.string_data.unwrap()["api-key"], "oz_test_key");
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("ozw"));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let worker = &pod.containers[0];
    let security = worker.security_context.clone().unwrap();
    assert_eq!(security.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let env = worker.env.clone().unwrap();
    let key = env[0].value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("ozw-api-key", "api-key"));

    // The ConfigMap holds a worker configuration the worker itself accepts.
    let config: ConfigMap = serde_json::from_value(of_kind(&docs, "ConfigMap").unwrap()).unwrap();
    let yaml = config.data.unwrap()["worker.yaml"].clone();
    let parsed = oz_worker::config::parse_file(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(parsed.worker_id.as_deref(), Some("my-worker"));
    let Some(oz_worker::config::BackendConfig::Kubernetes(k8s)) = parsed.backend else {
        panic!("the chart's worker.yaml configures the kubernetes backend: {yaml}")
    };
    assert_eq!(k8s.namespace, "agents", "defaults to the release namespace");
    assert_eq!(k8s.sidecar_image, "ghcr.io/example/oz-sidecar:0.1.0");
    assert!(parsed.warm_pools.is_empty() && parsed.git_mirrors.is_none() && k8s.package_cache_claim.is_none());

    // Warm pools, the package caches claim and the git mirrors claim, which the worker's Pod mounts.
    let docs = rendered(json!({"worker": {
        "warmPools": [{"environment": "env_1", "size": 2, "max_memory_mb": 512}],
        "gitMirrors": {"claim": "oz-mirrors"},
        "kubernetes": {"packageCacheClaim": "oz-caches"},
    }}));
    let config: ConfigMap = serde_json::from_value(of_kind(&docs, "ConfigMap").unwrap()).unwrap();
    let yaml = config.data.unwrap()["worker.yaml"].clone();
    let parsed = oz_worker::config::parse_file(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(parsed.warm_pools.len(), 1, "{yaml}");
    assert_eq!((parsed.warm_pools[0].size, parsed.warm_pools[0].max_memory_mb), (2, Some(512)));
    assert_eq!(parsed.git_mirrors.as_deref(), Some(Path::new("/var/lib/oz/git-mirrors")));
    let Some(oz_worker::config::BackendConfig::Kubernetes(k8s)) = parsed.backend else { panic!("{yaml}") };
    assert_eq!(k8s.package_cache_claim.as_deref(), Some("oz-caches"));
    assert_eq!(k8s.git_mirror_claim.as_deref(), Some("oz-mirrors"));
    let deployment: Deployment = serde_json::from_value(of_kind(&docs, "Deployment").unwrap()).unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.security_context.clone().unwrap().fs_group, Some(65532), "the worker writes the mirrors claim");
    let mirrors = pod.volumes.unwrap().into_iter().find(|v| v.name == "git-mirrors").unwrap();
    assert_eq!(mirrors.persistent_volume_claim.unwrap().claim_name, "oz-mirrors");
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    assert!(mounts.iter().any(|m| m.name == "git-mirrors" && m.mount_path == "/var/lib/oz/git-mirrors"));

    // An existing Secret instead: none is made, and the worker reads that one.
    let docs = rendered(json!({"apiKey": {"existingSecret": "team-key"}, "metrics": {"enabled": false}}));
    assert!(of_kind(&docs, "Secret").is_none());
    assert!(of_kind(&docs, "Service").is_none());
    let deployment: Deployment = serde_json::from_value(of_kind(&docs, "Deployment").unwrap()).unwrap();
    let env = deployment.spec.template.spec.unwrap().containers[0].env.clone().unwrap();
    assert_eq!(env[0].value_from.clone().unwrap().secret_key_ref.unwrap().name, "team-key");
}

/// The `(resource, verb)`s RBAC checks for an API request. A WebSocket upgrade of `pods/attach` is a
/// GET, authorized as `get` by older API servers and as `create` by newer ones (as a POST is): both.
fn rbac_of(request: &str) -> Vec<(String, String)> {
    let Some((method, uri)) = request.split_once(' ') else { return Vec::new() };
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Some(after_ns) = parts.iter().position(|p| *p == "namespaces").map(|p| p + 2) else { return Vec::new() };
    let Some(resource) = parts.get(after_ns) else { return Vec::new() };
    let named = parts.get(after_ns + 1).is_some();
    let sub = parts.get(after_ns + 2);
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => (*resource).to_owned(),
    };
    let verbs: &[&str] = match (method, named, query.contains("watch=true")) {
        ("GET", true, false) if resource == "pods/attach" => &["get", "create"],
        ("POST", _, _) => &["create"],
        ("DELETE", _, _) => &["delete"],
        ("PATCH", _, _) => &["patch"],
        ("GET", _, true) => &["watch"],
        ("GET", true, false) => &["get"],
        ("GET", false, false) => &["list"],
        (other, _, _) => panic!("unexpected method {other}"),
    };
    verbs.iter().map(|verb| (resource.clone(), (*verb).to_owned())).collect()
}

/// The name of the warm Pod the backend is preparing, once it exists.
async fn warm_pod(cluster: &FakeCluster, not: &[String]) -> String {
    for _ in 0..250 {
        let found = cluster.objects(WatchKind::Pod, "agents").into_iter().find_map(|p| {
            let name = p["metadata"]["name"].as_str()?.to_owned();
            (p["metadata"]["labels"]["oz.dev/warm-id"].is_string() && !not.contains(&name)).then_some(name)
        });
        if let Some(name) = found {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no warm pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_grants_exactly_what_the_backend_uses() {
    // Exercise every path: a task to its end with logs, a cancelled one, and a restart's recovery.
    let cluster = FakeCluster::start().await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    let mut config = KubernetesConfig::new("rbac-worker", "acme/oz-sidecar:1");
    config.namespace = "agents".into();
    let backend = KubernetesBackend::new(client, config).unwrap();
    let running = json!({"phase": "Running", "containerStatuses": [{"name": "task", "image": "x", "imageID": "",
        "ready": true, "restartCount": 0, "state": {"running": {}}}]});
    let done = json!({"phase": "Succeeded", "containerStatuses": [{"name": "task", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]});
    let pod_name = |task: &str| {
        cluster
            .objects(WatchKind::Pod, "agents")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["oz.dev/task-id"] == task)
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let mut with_token = TaskSpec::new("rbac-1", vec!["true".into()]);
    with_token.secret_input = Some(oz_core::task::SecretInput::new("ozw_token"));
    let handle = backend.launch(with_token).await.unwrap();
    let pod = pod_name("rbac-1");
    cluster.set_pod_status("agents", &pod, running.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.append_log("agents", &pod, "hi\n");
    cluster.set_pod_status("agents", &pod, done);
    assert!(handle.wait().await.succeeded());
    let handle = backend.launch(TaskSpec::new("rbac-2", vec!["true".into()])).await.unwrap();
    cluster.set_pod_status("agents", &pod_name("rbac-2"), running.clone());
    handle.canceller().cancel(CancelReason::Requested);
    handle.wait().await;
    let _ = backend.launch(TaskSpec::new("rbac-3", vec!["true".into()])).await.unwrap();
    // With an egress policy: its NetworkPolicy is made and removed with the task.
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    let mut with_policy = KubernetesConfig::new("rbac-worker", "acme/oz-sidecar:1");
    with_policy.namespace = "agents".into();
    with_policy.egress_policy =
        Some(oz_backend_k8s::EgressPolicy { allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()], ports: vec![] });
    let policed = KubernetesBackend::new(client, with_policy).unwrap();
    let handle = policed.launch(TaskSpec::new("rbac-4", vec!["true".into()])).await.unwrap();
    handle.canceller().cancel(CancelReason::Requested);
    handle.wait().await;
    // Warm Pods: one prepared (ready in its log) and handed a task (claimed, attached), one whose
    // preparation fails (its Pod read for how), one left claimed for a restart's recovery.
    let warm = oz_core::warm::WarmSpec {
        sandbox: Default::default(),
        entrypoint: "/agent/entrypoint.sh".into(),
        environment: Default::default(),
        git_base_url: None,
        env: vec![],
        ready_within: Duration::from_secs(10),
    };
    let mut seen = Vec::new();
    for outcome in ["ready", "failed", "ready"] {
        let preparing = tokio::spawn({
            let (backend, warm) = (backend.clone(), warm.clone());
            async move { backend.prepare(warm).await }
        });
        let pod = warm_pod(&cluster, &seen).await;
        seen.push(pod.clone());
        cluster.set_pod_status("agents", &pod, running.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if outcome == "ready" {
            cluster.append_log("agents", &pod, &format!("{}\n", oz_core::warm::READY_LINE));
            let prepared = preparing.await.unwrap().unwrap();
            let argv = vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into()];
            let launching = tokio::spawn({
                let (backend, spec) = (backend.clone(), TaskSpec::new(format!("rbac-warm-{}", seen.len()), argv));
                async move { backend.launch_prepared(prepared, spec).await }
            });
            // The scripted runner takes the task: its receipt, from the claimed Pod, in its log.
            let receipt = loop {
                let pod = cluster
                    .objects(WatchKind::Pod, "agents")
                    .into_iter()
                    .find(|p| p["metadata"]["name"] == pod.as_str());
                if let Some(r) =
                    pod.and_then(|p| p["metadata"]["annotations"]["oz.dev/warm-receipt"].as_str().map(str::to_owned))
                {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            cluster.append_log("agents", &pod, &format!("{} {receipt}\n", oz_core::warm::TAKEN_LINE));
            assert!(launching.await.unwrap().is_ok());
        } else {
            cluster.append_log("agents", &pod, "setup failed\n");
            let failed = json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}]});
            cluster.set_pod_status("agents", &pod, failed);
            assert!(preparing.await.unwrap().is_err());
        }
    }
    let _ = backend.recover().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let used: BTreeSet<(String, String)> = cluster.requests().iter().flat_map(|r| rbac_of(r)).collect();
    let docs = rendered(json!({}));
    let role: Role = serde_json::from_value(of_kind(&docs, "Role").unwrap()).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap() {
        for resource in rule.resources.unwrap_or_default() {
            for verb in &rule.verbs {
                granted.insert((resource.clone(), verb.clone()));
            }
        }
    }
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(missing.is_empty(), "the backend calls what the Role does not grant: {missing:?}");
    assert!(unused.is_empty(), "the Role grants what the backend never calls: {unused:?}");
}
