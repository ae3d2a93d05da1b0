//! The Kubernetes backend against the fake API server (oz-k8s-fake): the Job it creates, each failure
//! mode a Pod or Job can show, live logs, cancellation, a watch that survives 410 Gone, and
//! reattaching after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use oz_backend_k8s::{KubernetesBackend, KubernetesConfig};
use oz_core::backend::{Backend, CancelReason, TaskEvent, TaskHandle, TaskOutcome};
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;
use oz_k8s_fake::{FakeCluster, WatchKind};
use serde_json::{Value, json};

const NS: &str = "agents";

async fn setup() -> (FakeCluster, KubernetesBackend) {
    setup_with(|_| {}).await
}

/// A fake cluster and a backend on it, configured further by `configure`.
async fn setup_with(configure: impl FnOnce(&mut KubernetesConfig)) -> (FakeCluster, KubernetesBackend) {
    let cluster = FakeCluster::start().await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    let mut config = KubernetesConfig::new("k8s-worker", "acme/oz-sidecar:1");
    config.namespace = NS.into();
    config.unschedulable_timeout = Duration::from_secs(1);
    configure(&mut config);
    (cluster.clone(), KubernetesBackend::new(client, config).unwrap())
}

fn spec(id: &str) -> TaskSpec {
    TaskSpec::new(id, vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into()]).env("TASK_ID", id)
}

/// Waits for the task's Pod; returns its name.
async fn pod_of(cluster: &FakeCluster, task: &str) -> String {
    for _ in 0..200 {
        if let Some(p) =
            cluster.objects(WatchKind::Pod, NS).into_iter().find(|p| p["metadata"]["labels"]["oz.dev/task-id"] == task)
        {
            return p["metadata"]["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pod for {task}");
}

fn container(state: Value) -> Value {
    json!([{"name": "task", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0, "state": state}])
}

async fn outcome(handle: TaskHandle) -> (TaskOutcome, String) {
    let mut handle = handle;
    let mut events = handle.take_events().unwrap();
    let collect = tokio::spawn(async move {
        let mut out = String::new();
        while let Some(e) = events.recv().await {
            if let TaskEvent::Stdout(b) = e {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
        out
    });
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.wait()).await.expect("the task ends");
    (outcome, collect.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_streams_its_log_live_and_its_job_is_removed() {
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec("t-ok")).await.unwrap();
    let job = &cluster.objects(WatchKind::Job, NS)[0];
    assert_eq!(job["metadata"]["name"], "oz-t-ok");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["metadata"]["labels"]["oz.dev/worker-id"], "k8s-worker");
    let pod = pod_of(&cluster, "t-ok").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.append_log(NS, &pod, "cloning...\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.append_log(NS, &pod, "done\n");
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (outcome, out) = outcome(handle).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(out, "cloning...\ndone\n");
    assert!(outcome.started_at.is_some());
    assert!(cluster.objects(WatchKind::Job, NS).is_empty(), "cleanup removed the Job");
    assert!(cluster.requests().iter().any(|r| r.starts_with("DELETE /apis/batch/v1/namespaces/agents/jobs/oz-t-ok")));
}

/// Runs a task whose Pod gets `status` (after Running, when `run_first`), and returns the outcome.
/// The workload token reaches the Pod as a file of a Secret volume: neither the Job nor the Pod spec
/// holds it (searched for its bytes), the task container is told where it is, and the Secret is
/// removed when the task ends even with cleanup off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_input_is_a_secret_volume_never_in_the_pod_spec() {
    let (cluster, backend) = setup_with(|c| c.cleanup = false).await;
    let token = "ozw_0123456789abcdef.never-in-a-pod-spec";
    let mut task = spec("t-secret");
    task.secret_input = Some(oz_core::task::SecretInput::new(token));
    let handle = backend.launch(task).await.unwrap();
    let pod = pod_of(&cluster, "t-secret").await;
    let job = cluster.objects(WatchKind::Job, NS)[0].clone();
    let pod_spec = cluster.objects(WatchKind::Pod, NS)[0].clone();
    for object in [&job, &pod_spec] {
        assert!(!object.to_string().contains("never-in-a-pod-spec"), "the token is in the spec: {object}");
    }
    let task_container = &pod_spec["spec"]["containers"][0];
    assert!(
        task_container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "OZ_SECRET_INPUT", "value": "/var/run/oz/secret-input/value"}))
    );
    let volume = pod_spec["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "secret-input").unwrap();
    assert_eq!(volume["secret"]["secretName"], "oz-t-secret");
    let secrets = cluster.objects(WatchKind::Secret, NS);
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["metadata"]["labels"]["oz.dev/task-id"], "t-secret");
    use base64::Engine;
    let stored =
        base64::engine::general_purpose::STANDARD.decode(secrets[0]["data"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(stored, token.as_bytes());
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (outcome, _) = outcome(handle).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(cluster.objects(WatchKind::Job, NS).len(), 1, "cleanup is off: the Job stays");
    assert!(cluster.objects(WatchKind::Secret, NS).is_empty(), "the token's Secret went with the task");
}

async fn failing(id: &str, run_first: bool, status: Value) -> (TaskOutcome, FakeCluster) {
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec(id)).await.unwrap();
    let pod = pod_of(&cluster, id).await;
    if run_first {
        cluster.set_pod_status(
            NS,
            &pod,
            json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.set_pod_status(NS, &pod, status);
    (outcome(handle).await.0, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_mode_ends_with_its_reason() {
    let exited = json!({"phase": "Failed", "containerStatuses": container(json!({"terminated": {"exitCode": 3}}))});
    let (o, _) = failing("t-exit", true, exited).await;
    assert_eq!(o.reason(), Some(FailureReason::JobFailed), "{o:?}");
    assert_eq!(o.exit.unwrap().code, Some(3));

    let pull = json!({"phase": "Pending", "containerStatuses": [{"name": "task", "image": "acme/x:1", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}}]});
    let (o, cluster) = failing("t-pull", false, pull).await;
    assert_eq!(o.reason(), Some(FailureReason::ImagePull), "{o:?}");
    assert!(o.failure.unwrap().message.contains("acme/x:1"));
    assert!(cluster.objects(WatchKind::Job, NS).is_empty(), "a Job that can never run is removed");

    let oom = json!({"phase": "Failed", "containerStatuses": container(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))});
    let (o, _) = failing("t-oom", true, oom).await;
    assert_eq!(o.reason(), Some(FailureReason::ContainerOom), "{o:?}");

    let evicted = json!({"phase": "Failed", "reason": "Evicted", "message": "the node was low on memory"});
    let (o, _) = failing("t-evict", true, evicted).await;
    assert_eq!(o.reason(), Some(FailureReason::Evicted), "{o:?}");

    let init = json!({"phase": "Pending", "initContainerStatuses": [{"name": "oz-sidecar", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "message": "cp: permission denied"}}}]});
    let (o, _) = failing("t-init", false, init).await;
    assert_eq!(o.reason(), Some(FailureReason::InitContainer), "{o:?}");
    assert!(o.failure.unwrap().message.contains("permission denied"));

    let started = std::time::Instant::now();
    let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/3 nodes are available: insufficient memory"}]});
    let (o, _) = failing("t-sched", false, unschedulable).await;
    assert_eq!(o.reason(), Some(FailureReason::Unschedulable), "{o:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "only after unschedulable_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_on_the_job_fails_the_task() {
    // The backend's own deadline (the task has no timeout of its own): active_deadline.
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec("t-deadline")).await.unwrap();
    assert_eq!(cluster.objects(WatchKind::Job, NS)[0]["spec"]["activeDeadlineSeconds"], 28_800);
    let pod = pod_of(&cluster, "t-deadline").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    cluster.set_job_status(
        NS,
        "oz-t-deadline",
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}),
    );
    let (o, _) = outcome(handle).await;
    assert_eq!(o.reason(), Some(FailureReason::ActiveDeadline), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_deletes_the_job_in_the_foreground() {
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec("t-cancel")).await.unwrap();
    let pod = pod_of(&cluster, "t-cancel").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    handle.canceller().cancel(CancelReason::Requested);
    let (o, _) = outcome(handle).await;
    assert_eq!(o.reason(), Some(FailureReason::TaskCancelled), "{o:?}");
    assert!(cluster.objects(WatchKind::Job, NS).is_empty());
    assert!(cluster.objects(WatchKind::Pod, NS).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_gets_410_gone_does_not_fail_the_task() {
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec("t-410")).await.unwrap();
    let pod = pod_of(&cluster, "t-410").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Something else changes, history is compacted past it, and every watch stream drops.
    cluster.set_job_status(NS, "oz-t-410", json!({"active": 1}));
    cluster.compact();
    cluster.drop_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (o, _) = outcome(handle).await;
    assert!(o.succeeded(), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_reattaches_to_its_jobs_and_reports_their_outcome() {
    let (cluster, backend) = setup().await;
    let first = backend.launch(spec("t-reattach")).await.unwrap();
    let pod = pod_of(&cluster, "t-reattach").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    // The worker goes away (its handle with it); a new process of the same worker starts.
    drop(first);
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse().unwrap())).unwrap();
    let mut config = KubernetesConfig::new("k8s-worker", "acme/oz-sidecar:1");
    config.namespace = NS.into();
    let restarted = KubernetesBackend::new(client.clone(), config.clone()).unwrap();
    let mut found = restarted.recover().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].task_id, "t-reattach");
    let other =
        KubernetesBackend::new(client, KubernetesConfig { worker_id: "someone-else".into(), ..config }).unwrap();
    assert!(other.recover().await.unwrap().is_empty(), "another worker's Jobs are not its business");
    let oz_core::backend::RecoveryAction::Reattached(handle) = found.remove(0).action else { panic!("not reattached") };
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.append_log(NS, &pod, "still going\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (o, out) = outcome(handle).await;
    assert!(o.succeeded(), "{o:?}");
    assert!(out.contains("still going"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_job_checks_permissions_and_the_init_container_pattern() {
    // A cluster where it works: the scripted kubelet runs the Pod to success.
    let (cluster, backend) = setup().await;
    let kubelet = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                if let Some(p) = cluster.objects(WatchKind::Pod, NS).into_iter().next() {
                    let name = p["metadata"]["name"].as_str().unwrap().to_owned();
                    cluster.set_pod_status(
                        NS,
                        &name,
                        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
                    );
                    cluster.set_pod_status(NS, &name, json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    backend.preflight().await.unwrap();
    kubelet.await.unwrap();
    let job = cluster.requests().into_iter().find(|r| r.starts_with("POST")).unwrap();
    assert!(job.contains("/namespaces/agents/jobs"), "{job}");
    assert!(cluster.objects(WatchKind::Job, NS).is_empty(), "the preflight Job is removed");

    // A worker that may not create Jobs: the error says which permission is missing.
    let (cluster, backend) = setup().await;
    cluster.deny("POST", "/jobs");
    let err = backend.preflight().await.unwrap_err().to_string();
    assert!(err.contains("preflight failed") && err.contains("batch/jobs create"), "{err}");

    // A sidecar image without /agent: the init container fails, and the error says so.
    let (cluster, backend) = setup().await;
    let kubelet = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                if let Some(p) = cluster.objects(WatchKind::Pod, NS).into_iter().next() {
                    let name = p["metadata"]["name"].as_str().unwrap().to_owned();
                    cluster.set_pod_status(NS, &name, json!({"phase": "Pending", "initContainerStatuses": [{"name": "oz-sidecar",
                        "image": "acme/oz-sidecar:1", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 1, "message": "cp: can't stat '/agent/.': No such file or directory"}}}]}));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let err = backend.preflight().await.unwrap_err().to_string();
    kubelet.await.unwrap();
    assert!(err.contains("sidecar init container failed") && err.contains("acme/oz-sidecar:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_mount_its_volumes_fails_as_volume_mount() {
    let (cluster, backend) = setup_with(|c| c.mount_timeout = Duration::from_secs(1)).await;
    let handle = backend.launch(spec("t-mount")).await.unwrap();
    let pod = pod_of(&cluster, "t-mount").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = "MountVolume.SetUp failed for volume \"creds\": secret \"creds\" not found";
    cluster.add_pod_event(NS, &pod, "FailedMount", message);
    let started = std::time::Instant::now();
    let (o, _) = outcome(handle).await;
    assert_eq!(o.reason(), Some(FailureReason::VolumeMount), "{o:?}");
    assert!(o.failure.unwrap().message.contains("secret \"creds\" not found"));
    assert!(started.elapsed() >= Duration::from_millis(500), "a mount failure gets its grace period first");
    assert!(cluster.objects(WatchKind::Job, NS).is_empty(), "a Job that cannot start is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_policy_goes_with_each_task_and_is_removed_with_it() {
    let (cluster, backend) = setup_with(|c| {
        c.egress_policy = Some(oz_backend_k8s::EgressPolicy {
            allowed_cidrs: vec!["10.20.0.0/16".parse().unwrap()],
            ports: vec![443],
        })
    })
    .await;
    let handle = backend.launch(spec("t-np")).await.unwrap();
    let policies = cluster.objects(WatchKind::NetworkPolicy, NS);
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["spec"]["podSelector"]["matchLabels"]["oz.dev/task-id"], "t-np");
    assert_eq!(policies[0]["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"], "10.20.0.0/16");
    let pod = pod_of(&cluster, "t-np").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (o, _) = outcome(handle).await;
    assert!(o.succeeded(), "{o:?}");
    assert!(cluster.objects(WatchKind::NetworkPolicy, NS).is_empty(), "removed with the Job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_errors_never_fail_a_task() {
    let (cluster, backend) = setup().await;
    let handle = backend.launch(spec("t-blip")).await.unwrap();
    let pod = pod_of(&cluster, "t-blip").await;
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The API server answers 503 to every list and watch, and drops the open streams, for a while.
    cluster.fail_requests("GET", "/namespaces/agents/", 503);
    cluster.drop_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(cluster.requests().iter().rev().take(20).any(|r| r.starts_with("GET")), "the watchers kept retrying");
    cluster.heal();
    cluster.set_pod_status(
        NS,
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0}}))}),
    );
    let (o, _) = outcome(handle).await;
    assert!(o.succeeded(), "a blip is not a failure: {o:?}");
}
