//! An optional fake kubelet ([`crate::FakeCluster::enable_kubelet`]): each Pod's `task` container
//! command really runs, as a local process group, with exactly the Pod's env plus what a container
//! runtime adds (`PATH`, `HOSTNAME`); its output (stdout and stderr merged, as in a Pod's log) goes to
//! a file the log endpoint streams; its exit becomes the Pod's status; the Job's
//! `activeDeadlineSeconds` is enforced; deleting the Pod stops the group (SIGTERM, a grace period,
//! SIGKILL) before the deletion completes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::cluster::{Cluster, Node};

/// How long a deleted Pod's processes have between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(1);

fn terminated(code: i32, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut t = json!({"exitCode": code});
    if let Some(r) = reason {
        t["reason"] = json!(r);
    }
    if let Some(m) = message {
        t["message"] = json!(m);
    }
    json!([{"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": t}}])
}

/// The node that runs Pods as local process groups, with their logs and work folders under `dir`.
pub(crate) struct Kubelet {
    dir: PathBuf,
    /// Host folders that stand for volumes of these names (what an init container would have copied
    /// from an image the fake cannot pull: the sidecar's `/agent`).
    preloaded: BTreeMap<String, PathBuf>,
}

impl Kubelet {
    pub(crate) fn new(dir: PathBuf, preloaded: BTreeMap<String, PathBuf>) -> Self {
        Self { dir, preloaded }
    }
}

impl Node for Kubelet {
    fn run(&self, cluster: Arc<Cluster>, namespace: String, pod: Value, deadline: Option<u64>) {
        tokio::spawn(run_pod(cluster, self.dir.clone(), self.preloaded.clone(), namespace, pod, deadline));
    }

    fn stop(&self, pgid: i32) -> BoxFuture<'static, ()> {
        Box::pin(stop_group(pgid))
    }
}

/// Makes the Pod's volumes as host folders under `work` (an emptyDir empty; a downwardAPI volume
/// with its fields; a Secret volume with its keys); returns each volume's folder by name.
fn make_volumes(
    cluster: &Cluster,
    ns: &str,
    pod: &Value,
    work: &Path,
    preloaded: &BTreeMap<String, PathBuf>,
) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut made = BTreeMap::new();
    for volume in pod["spec"]["volumes"].as_array().cloned().unwrap_or_default() {
        let Some(name) = volume["name"].as_str() else { continue };
        if let Some(content) = preloaded.get(name) {
            made.insert(name.to_owned(), content.clone());
            continue;
        }
        let folder = work.join("volumes").join(name);
        std::fs::create_dir_all(&folder)?;
        for item in volume["downwardAPI"]["items"].as_array().cloned().unwrap_or_default() {
            let (Some(path), Some(field)) = (item["path"].as_str(), item["fieldRef"]["fieldPath"].as_str()) else {
                continue;
            };
            std::fs::write(folder.join(path), field_value(pod, field).unwrap_or_default())?;
        }
        if let Some(secret) = volume["secret"]["secretName"].as_str()
            && let Some(secret) = cluster.get(crate::state::WatchKind::Secret, ns, secret)
        {
            use base64::Engine;
            for item in volume["secret"]["items"].as_array().cloned().unwrap_or_default() {
                let (Some(key), Some(path)) = (item["key"].as_str(), item["path"].as_str()) else { continue };
                let encoded = secret["data"][key].as_str().unwrap_or("");
                let value = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
                std::fs::write(folder.join(path), value)?;
            }
        }
        made.insert(name.to_owned(), folder);
    }
    Ok(made)
}

/// A downwardAPI `fieldPath`'s value: `metadata.name`, `metadata.namespace`,
/// `metadata.annotations['key']`, `metadata.labels['key']`.
fn field_value(pod: &Value, field: &str) -> Option<String> {
    let keyed = |prefix: &str| field.strip_prefix(prefix).and_then(|rest| rest.strip_suffix("']")).map(str::to_owned);
    let value = if let Some(key) = keyed("metadata.annotations['") {
        &pod["metadata"]["annotations"][key.as_str()]
    } else if let Some(key) = keyed("metadata.labels['") {
        &pod["metadata"]["labels"][key.as_str()]
    } else {
        field.split('.').fold(pod, |o, k| &o[k])
    };
    value.as_str().map(str::to_owned)
}

/// A path in the container, as the host folder of the volume mounted there; others as they are.
/// Standing in for a mount namespace: argv, env values and the working directory are translated,
/// and so are the words of a shell command (`test -x /agent/bin/oz`).
fn host_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    if value.contains(' ') {
        return value.split(' ').map(|word| host_word(word, mounts)).collect::<Vec<_>>().join(" ");
    }
    host_word(value, mounts)
}

fn host_word(path: &str, mounts: &[(String, PathBuf)]) -> String {
    mounts
        .iter()
        .filter(|(at, _)| path == at || path.strip_prefix(at.as_str()).is_some_and(|rest| rest.starts_with('/')))
        .max_by_key(|(at, _)| at.len())
        .map_or_else(|| path.to_owned(), |(at, host)| format!("{}{}", host.display(), &path[at.len()..]))
}

/// The folders a container sees above its mounts (`/oz-cache` and `/oz-cache/git` for a mount at
/// `/oz-cache/git/acme/app.git`), which its runtime makes: each becomes a folder under `root`
/// holding a link to each mount below it, and is added to `mounts`. A path in one that is no mount
/// is then missing, as in the container.
fn add_parent_folders(mounts: &mut Vec<(String, PathBuf)>, root: &Path) {
    let covered = |path: &str, mounts: &[(String, PathBuf)]| {
        mounts.iter().any(|(at, _)| path == at || path.strip_prefix(at.as_str()).is_some_and(|r| r.starts_with('/')))
    };
    let real: Vec<(String, PathBuf)> = mounts.clone();
    for (at, host) in &real {
        let parent = Path::new(at).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        if parent.is_empty() || parent == "/" || covered(&parent, &real) {
            continue;
        }
        let link = root.join(at.trim_start_matches('/'));
        let made = link.parent().map(std::fs::create_dir_all).unwrap_or(Ok(()));
        if made.is_err() || std::os::unix::fs::symlink(host, &link).is_err() {
            continue;
        }
        let mut folder = Path::new(at).parent();
        while let Some(f) = folder.filter(|f| f != &Path::new("/")) {
            let text = f.to_string_lossy().into_owned();
            if !mounts.iter().any(|(at, _)| *at == text) {
                mounts.push((text.clone(), root.join(text.trim_start_matches('/'))));
            }
            folder = f.parent();
        }
    }
}

/// Runs a Pod's task container to its end.
async fn run_pod(
    cluster: Arc<Cluster>,
    dir: PathBuf,
    preloaded: BTreeMap<String, PathBuf>,
    ns: String,
    pod: Value,
    deadline: Option<u64>,
) {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let job = pod["metadata"]["labels"]["job-name"].as_str().unwrap_or("").to_owned();
    let task = pod["spec"]["containers"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "task")).cloned();
    let Some(task) = task else { return };
    let log_path = dir.join(format!("{ns}-{name}.log"));
    let workdir = dir.join(format!("{ns}-{name}.work"));
    let opened = std::fs::create_dir_all(&workdir).and_then(|()| std::fs::File::create(&log_path));
    let Ok(log) = opened else { return };
    let Ok(volumes) = make_volumes(&cluster, &ns, &pod, &workdir, &preloaded) else { return };
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in task["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let (Some(at), Some(mut host)) =
            (mount["mountPath"].as_str(), mount["name"].as_str().and_then(|n| volumes.get(n)).cloned())
        else {
            continue;
        };
        // A subPath is a folder of the volume, made when missing (as the kubelet does); a path that
        // leaves the volume is refused, as the API server refuses it.
        if let Some(sub) = mount["subPath"].as_str().filter(|p| !p.is_empty()) {
            if sub.starts_with('/') || sub.split('/').any(|part| part == "..") {
                let message = format!("subPath {sub:?} must be a relative path within the volume");
                let status = json!({"phase": "Failed", "containerStatuses": terminated(128, Some("CreateContainerConfigError"), Some(&message))});
                cluster.set_pod_status(&ns, &name, status);
                return;
            }
            host = host.join(sub);
            if std::fs::create_dir_all(&host).is_err() {
                return;
            }
        }
        mounts.push((at.to_owned(), host));
    }
    add_parent_folders(&mut mounts, &dir.join(format!("{ns}-{name}.root")));
    let argv: Vec<String> = task["command"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(|arg| host_path(arg, &mounts))).collect())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("HOSTNAME".into(), name.clone()),
    ];
    for var in task["env"].as_array().cloned().unwrap_or_default() {
        if let (Some(k), Some(v)) = (var["name"].as_str(), var["value"].as_str()) {
            env.retain(|(n, _)| n != k);
            env.push((k.to_owned(), host_path(v, &mounts)));
        }
    }
    let cwd = match task["workingDir"].as_str().map(|w| host_path(w, &mounts)) {
        Some(w) if Path::new(&w).is_dir() => PathBuf::from(w),
        _ => workdir.clone(),
    };
    cluster.register_log_file(&ns, &name, log_path);
    let Some((program, args)) = argv.split_first() else { return };
    let (Ok(out), Ok(err)) = (log.try_clone(), log.try_clone()) else { return };
    let takes_stdin = task["stdin"] == true;
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(&cwd)
        .process_group(0)
        .stdin(if takes_stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(out)
        .stderr(err)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = format!("failed to start container \"task\": exec: {program:?}: {e}");
            cluster.set_pod_status(
                &ns,
                &name,
                json!({"phase": "Failed", "containerStatuses": terminated(128, Some("StartError"), Some(&message))}),
            );
            return;
        }
    };
    if let Some(stdin) = child.stdin.take() {
        cluster.register_stdin(&ns, &name, stdin);
    }
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    cluster.register_process_group(&ns, &name, pgid);
    cluster.set_pod_status(
        &ns,
        &name,
        json!({"phase": "Running", "containerStatuses": [{"name": "task", "image": "", "imageID": "", "ready": true,
               "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T00:00:00Z"}}}]}),
    );
    let limit = deadline.map(Duration::from_secs);
    let timeout = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        status = child.wait() => {
            use std::os::unix::process::ExitStatusExt;
            let Ok(status) = status else { return };
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            cluster.set_pod_status(&ns, &name, json!({"phase": phase, "containerStatuses": terminated(code, None, None)}));
        }
        () = timeout => {
            stop_group(pgid).await;
            let _ = child.wait().await;
            cluster.set_pod_status(&ns, &name, json!({"phase": "Failed", "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline"}));
            cluster.set_job_status(&ns, &job, json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}));
        }
    }
}

/// SIGTERM to the group, the grace period, then SIGKILL; returns once nothing in the group runs.
async fn stop_group(pgid: i32) {
    if pgid <= 0 {
        return;
    }
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGTERM);
    let waited = std::time::Instant::now();
    while waited.elapsed() < GRACE && killpg(group, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(group, Signal::SIGKILL);
    for _ in 0..50 {
        if killpg(group, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
