//! The fake, driven by the real kube-rs client: what the Kubernetes backend relies on works as on a
//! real API server (create, list, watches with bookmarks and 410 Gone, live logs, foreground delete).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy, WatchEvent, WatchParams};
use kube::runtime::watcher;
use oz_k8s_fake::{FakeCluster, WatchKind};
use serde_json::json;

async fn client(cluster: &FakeCluster) -> kube::Client {
    let config = kube::Config::new(cluster.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn job(name: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"oz.dev/worker-id": "w1"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"oz.dev/worker-id": "w1", "oz.dev/task-id": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "task", "image": "busybox"}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_makes_a_pod_and_lists_filter_by_label() {
    let cluster = FakeCluster::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&cluster).await, "agents");
    let created = jobs.create(&PostParams::default(), &job("oz-t1")).await.unwrap();
    assert!(created.metadata.resource_version.is_some());
    assert!(jobs.create(&PostParams::default(), &job("oz-t1")).await.is_err(), "names are unique");
    let pods: Api<Pod> = Api::namespaced(client(&cluster).await, "agents");
    let listed = pods.list(&ListParams::default().labels("oz.dev/task-id=oz-t1")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.labels.as_ref().unwrap()["job-name"], "oz-t1");
    assert!(pods.list(&ListParams::default().labels("oz.dev/task-id=other")).await.unwrap().items.is_empty());
    let err = jobs.get("nope").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 404), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_follows_changes_and_relists_after_410_gone() {
    let cluster = FakeCluster::start().await.unwrap();
    let client = client(&cluster).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "agents");
    jobs.create(&PostParams::default(), &job("oz-w1")).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "agents");
    let mut events = watcher(pods, watcher::Config::default().labels("oz.dev/worker-id=w1")).boxed();
    let mut inits = 0;
    let mut saw_running = false;
    let pod_name = cluster.objects(WatchKind::Pod, "agents")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let mut step = 0;
    let mut errors = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        // The watcher reports the 410 as an error, then relists on the next poll: keep polling.
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match event {
            watcher::Event::Init => inits += 1,
            watcher::Event::InitDone if step == 0 => {
                step = 1;
                cluster.set_pod_status("agents", &pod_name, json!({"phase": "Running"}));
            }
            watcher::Event::Apply(p)
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && step == 1 =>
            {
                saw_running = true;
                step = 2;
                // More happens, the history is compacted past what the watcher saw, and every stream
                // drops: resuming must get 410 Gone and relist.
                cluster.set_job_status("agents", "oz-w1", json!({"active": 1}));
                cluster.compact();
                cluster.drop_watches();
            }
            watcher::Event::InitDone if step == 2 => break,
            _ => {}
        }
    }
    assert!(saw_running, "the watch delivered the change");
    assert_eq!(inits, 2, "a 410 Gone made the watcher relist (errors: {errors:?})");
    assert!(errors.iter().any(|e| e.contains("410") || e.to_lowercase().contains("too old")), "{errors:?}");
    assert!(cluster.requests().iter().filter(|r| r.contains("watch=true")).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_a_version_and_send_bookmarks() {
    let cluster = FakeCluster::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client(&cluster).await, "agents");
    jobs.create(&PostParams::default(), &job("oz-b0")).await.unwrap();
    let list = jobs.list(&ListParams::default()).await.unwrap();
    let from = list.metadata.resource_version.unwrap();
    jobs.create(&PostParams::default(), &job("oz-b1")).await.unwrap();
    let mut stream = jobs.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    let mut types = Vec::new();
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Added(j) => types.push(format!("added {}", j.metadata.name.unwrap())),
            WatchEvent::Modified(_) => types.push("modified".into()),
            WatchEvent::Bookmark(_) => {
                types.push("bookmark".into());
                break;
            }
            other => types.push(format!("{other:?}")),
        }
    }
    assert_eq!(types[0], "added oz-b1", "{types:?}");
    assert_eq!(types.last().unwrap(), "bookmark", "{types:?}");
    // A version from before a compaction is gone.
    cluster.compact();
    let mut stale = jobs.watch(&WatchParams::default(), &from).await.unwrap().boxed();
    match stale.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_live_and_foreground_delete_removes_the_pods() {
    let cluster = FakeCluster::start().await.unwrap();
    let client = client(&cluster).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "agents");
    jobs.create(&PostParams::default(), &job("oz-l1")).await.unwrap();
    let pod = cluster.objects(WatchKind::Pod, "agents")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let pods: Api<Pod> = Api::namespaced(client, "agents");
    assert!(pods.logs(&pod, &LogParams::default()).await.is_err(), "a pending pod has no logs yet");
    cluster.set_pod_status("agents", &pod, json!({"phase": "Running"}));
    cluster.append_log("agents", &pod, "first line\n");
    let mut lines = pods.log_stream(&pod, &LogParams { follow: true, ..Default::default() }).await.unwrap().lines();
    assert_eq!(lines.next().await.unwrap().unwrap(), "first line");
    cluster.append_log("agents", &pod, "second line\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), "second line", "appended text arrives live");
    cluster.set_pod_status("agents", &pod, json!({"phase": "Succeeded"}));
    assert!(tokio::time::timeout(Duration::from_secs(5), lines.next()).await.unwrap().is_none(), "ends with the pod");
    assert_eq!(
        jobs.get("oz-l1").await.unwrap().status.unwrap().conditions.unwrap()[0].type_,
        "Complete",
        "the Job controller completed the Job"
    );
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() };
    jobs.delete("oz-l1", &params).await.unwrap();
    assert!(cluster.objects(WatchKind::Pod, "agents").is_empty());
    assert!(cluster.objects(WatchKind::Job, "agents").is_empty());
}
