//! Warm Pods ([`oz_core::backend::Backend::prepare`]): a Job made as a task's would be (image,
//! sidecar, resources, `pod_template`, egress policy, labels) plus [`labels::WARM_ID`], whose task
//! container runs `oz agent warm --handoff-stdin` and keeps its stdin open for one attach
//! (`stdinOnce`). Ready once its runner says so in the Pod's log. Handed a task, the Job and its
//! Pod are claimed by label (the task's id and execution, written before anything secret is sent),
//! then the task and its token go through `pods/attach` to the runner's stdin: the API server
//! carries them, and neither the Job nor the Pod spec ever holds them. A restarted worker tells a
//! claimed Pod (a run's: reattached) from a waiting one (no one's: removed) by that label.

use std::path::Path;
use std::time::Duration;

use futures::{AsyncBufReadExt, AsyncReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use oz_core::backend::BackendError;
use oz_core::failure::FailureReason;
use oz_core::task::{TaskSpec, labels};
use oz_core::warm::{TAKEN_LINE, WarmSpec};
use tokio::io::AsyncWriteExt;

use crate::manifest::{self, TASK_CONTAINER};
use crate::status::{Observed, observe_pod};

/// How long an attach may take to carry the handoff, and the runner to say it took it.
const HANDOFF_WITHIN: Duration = Duration::from_secs(10);
/// The longest log line read as one (a longer one is read in pieces).
const MAX_LINE: u64 = 64 * 1024;

/// A warm Pod waiting for its task.
#[derive(Debug)]
pub(crate) struct WarmPod {
    /// The warm sandbox's id (`warm-...`): its Job's `oz.dev/task-id` until it is claimed.
    pub warm_id: String,
    /// The Job's name.
    pub job: String,
    /// The Pod's name.
    pub pod: String,
    /// When the Job was created (a task's deadline counts from its handoff, the Job's from this).
    pub created: std::time::Instant,
}

/// The annotation a claimed warm Pod carries: the receipt its runner prints once it took the task,
/// where the task's own output starts in the Pod's log (a restarted worker reads it there).
pub(crate) const RECEIPT_ANNOTATION: &str = "oz.dev/warm-receipt";

/// The task a warm Job is made as: `oz agent warm` reading the environment its annotation mounts.
pub(crate) fn warm_task(warm_id: &str, warm: &WarmSpec) -> TaskSpec {
    warm.stdin_task(warm_id, Path::new(manifest::WARM_ENVIRONMENT_FILE))
}

/// The selector of a warm sandbox's Pod.
pub(crate) fn selector(worker_id: &str, warm_id: &str) -> String {
    format!("{},{}={warm_id}", manifest::worker_selector(worker_id), labels::WARM_ID)
}

/// Waits for the warm Pod to run, then follows its log until its runner says it is ready; returns
/// the Pod's name. An error says why not: the Pod failed (how, and the last lines of its log).
pub(crate) async fn wait_ready(pods: &Api<Pod>, selector: &str) -> Result<String, BackendError> {
    let mut updates = Box::pin(watcher(pods.clone(), watcher::Config::default().labels(selector)).default_backoff());
    let name = loop {
        match updates.try_next().await {
            Ok(Some(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => match observe_pod(&pod) {
                Observed::Running => break pod.metadata.name.unwrap_or_default(),
                Observed::Exited(code) => return Err(setup_error(format!("the warm Pod ended (exit code {code})"))),
                Observed::Failed(_, message, _) => return Err(setup_error(format!("the warm Pod failed: {message}"))),
                Observed::Waiting | Observed::Unschedulable(_) => {}
            },
            Ok(Some(watcher::Event::Delete(_))) => return Err(setup_error("the warm Pod was deleted")),
            Ok(Some(_)) => {}
            Ok(None) => return Err(setup_error("the watch of the warm Pod ended")),
            Err(e) => tracing::debug!("warm pod watch: {e}; retrying"),
        }
    };
    drop(updates);
    let params = LogParams { follow: true, container: Some(TASK_CONTAINER.into()), ..Default::default() };
    let reader = pods
        .log_stream(&name, &params)
        .await
        .map_err(|e| setup_error(format!("could not follow the warm Pod's log: {e}")))?;
    let mut reader = futures::io::BufReader::new(reader);
    let mut log = oz_core::warm::PreparationLog::default();
    let ready = read_lines_until(&mut reader, |line| log.line(line)).await;
    if ready {
        return Ok(name);
    }
    let how = match pods.get(&name).await.map(|p| observe_pod(&p)) {
        Ok(Observed::Exited(code) | Observed::Failed(_, _, Some(code))) => format!("exit code {code}"),
        Ok(Observed::Failed(_, message, None)) => message,
        _ => "its log ended".to_owned(),
    };
    Err(setup_error(log.failure(&how)))
}

/// Reads a log's lines (decoded lossily, each cut at [`MAX_LINE`] bytes) until `stop` says so:
/// true if it did, false if the log ended first.
pub(crate) async fn read_lines_until<R: futures::AsyncBufRead + Unpin>(
    reader: &mut R,
    mut stop: impl FnMut(&str) -> bool,
) -> bool {
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut *reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if stop(String::from_utf8_lossy(&line).trim_end()) => return true,
            Ok(_) => {}
        }
    }
}

/// Waits (at most [`HANDOFF_WITHIN`]) for the runner to say it took the handoff with `receipt`.
pub(crate) async fn wait_taken(pods: &Api<Pod>, pod: &str, receipt: &str) -> Result<(), String> {
    let taken = format!("{TAKEN_LINE} {receipt}");
    let params = LogParams { follow: true, container: Some(TASK_CONTAINER.into()), ..Default::default() };
    let watch = async {
        let reader = pods.log_stream(pod, &params).await.map_err(|e| format!("could not follow the Pod's log: {e}"))?;
        let mut reader = futures::io::BufReader::new(reader);
        match read_lines_until(&mut reader, |line| line == taken).await {
            true => Ok(()),
            false => Err("the Pod's log ended before its runner took the task".to_owned()),
        }
    };
    tokio::time::timeout(HANDOFF_WITHIN, watch)
        .await
        .map_err(|_| format!("the runner did not take the task within {} s", HANDOFF_WITHIN.as_secs()))?
}

/// Writes the handoff line to the warm Pod's task container through `pods/attach`, and closes its
/// stdin. Returns once the line is written to the attach stream (whether it arrived is the
/// runner's receipt to tell, [`wait_taken`]); the session is then left to end (`stdinOnce`: the
/// container's stdin closes with it).
pub(crate) async fn hand_over(pods: &Api<Pod>, pod: &str, line: &[u8]) -> Result<(), String> {
    let params = AttachParams::default()
        .container(TASK_CONTAINER)
        .stdin(true)
        .stdout(false)
        .stderr(false)
        .max_stdin_buf_size(64 * 1024);
    let write = async {
        let mut attached = pods.attach(pod, &params).await.map_err(|e| format!("could not attach to the Pod: {e}"))?;
        let mut stdin = attached.stdin().ok_or_else(|| "the attach has no stdin".to_owned())?;
        stdin.write_all(line).await.map_err(|e| format!("could not send the task: {e}"))?;
        stdin.shutdown().await.map_err(|e| format!("could not send the task: {e}"))?;
        drop(stdin);
        Ok::<_, String>(attached)
    };
    let attached = tokio::time::timeout(HANDOFF_WITHIN, write)
        .await
        .map_err(|_| format!("the handoff was not taken within {} s", HANDOFF_WITHIN.as_secs()))??;
    tokio::spawn(async move {
        // A real API server keeps the session until the container ends: dropped after a while.
        match tokio::time::timeout(HANDOFF_WITHIN, attached.join()).await {
            Ok(Err(e)) => tracing::warn!("the handoff's attach session failed: {e}"),
            Ok(Ok(())) => {}
            Err(_) => tracing::debug!("the handoff's attach session is still open; dropping it"),
        }
    });
    Ok(())
}

/// Waits (at most a minute) until a Pod is gone, so that nothing of it runs on; a Pod already gone
/// returns at once.
pub(crate) async fn wait_deleted(pods: &Api<Pod>, pod: &str) {
    let Ok(found) = pods.get(pod).await else { return };
    let uid = found.metadata.uid.unwrap_or_default();
    let gone =
        kube::runtime::wait::await_condition(pods.clone(), pod, kube::runtime::wait::conditions::is_deleted(&uid));
    if tokio::time::timeout(Duration::from_secs(60), gone).await.is_err() {
        tracing::warn!(pod, "a warm Pod that did not take its task is still there after a minute");
    }
}

/// Closes the stdin of a claimed warm Pod whose handoff may never have come (its worker died in
/// between): its runner then ends instead of waiting. Harmless after a handoff (stdin is closed).
pub(crate) async fn close_stdin(pods: &Api<Pod>, pod: &str) {
    if let Err(e) = hand_over(pods, pod, b"").await {
        tracing::debug!(pod, "closing a claimed warm Pod's stdin: {e}");
    }
}

fn setup_error(message: impl Into<String>) -> BackendError {
    BackendError::new(FailureReason::WorkspaceSetup, message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_warm_task_runs_the_warm_runner_on_stdin_in_the_task_workdir() {
        let warm = WarmSpec {
            sandbox: oz_core::task::SandboxSpec { workdir: Some("sub".into()), ..Default::default() },
            entrypoint: "/agent/entrypoint.sh".into(),
            environment: Default::default(),
            git_base_url: Some("https://git.example".into()),
            env: vec![("A".into(), "1".into())],
            ready_within: Duration::from_secs(1),
        };
        let spec = warm_task("warm-1", &warm);
        assert_eq!(
            spec.argv,
            [
                "/agent/entrypoint.sh",
                "agent",
                "warm",
                "--handoff-stdin",
                "--environment-file",
                "/oz-warm/environment.json",
                "--workdir",
                "/workspace/sub",
                "--git-base-url",
                "https://git.example"
            ]
        );
        assert_eq!((spec.task_id.as_str(), spec.env.clone()), ("warm-1", warm.env));
        assert!(spec.secret_input.is_none());
    }
}
