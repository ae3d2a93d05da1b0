//! Reading a task's Pod and Job: what state they are in, and which failure reason that means.
//! Pure, so each failure mode is tested on its own.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use oz_core::failure::FailureReason;

use crate::manifest::{SETUP_INIT, TASK_CONTAINER};

/// What a Pod or Job says about the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Nothing decisive yet (scheduling, pulling, init containers running).
    Waiting,
    /// The scheduler cannot place the Pod; the message says why.
    Unschedulable(String),
    /// The task container runs.
    Running,
    /// The task ended with this exit code (0 is success).
    Exited(i32),
    /// The task failed for this reason, with a message and the exit code if there was one.
    Failed(FailureReason, String, Option<i32>),
}

fn waiting_failure(statuses: &[ContainerStatus]) -> Option<Observed> {
    for status in statuses {
        let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.clone().unwrap_or_default();
        let image = status.image.clone();
        match reason {
            "ErrImagePull" | "ImagePullBackOff" => {
                let missing = message.contains("not found") || message.contains("manifest unknown");
                let reason = if missing { FailureReason::InvalidImage } else { FailureReason::ImagePull };
                return Some(Observed::Failed(
                    reason,
                    format!(
                        "could not pull image {image}: {reason_text}",
                        reason_text = if message.is_empty() { reason.to_string() } else { message }
                    ),
                    None,
                ));
            }
            "InvalidImageName" => {
                return Some(Observed::Failed(
                    FailureReason::InvalidImage,
                    format!("invalid image {image}: {message}"),
                    None,
                ));
            }
            "CreateContainerConfigError" | "CreateContainerError" => {
                return Some(Observed::Failed(
                    FailureReason::ContainerCreate,
                    format!("{}: {reason}: {message}", status.name),
                    None,
                ));
            }
            _ => {}
        }
    }
    None
}

/// Reads a Pod.
pub fn observe_pod(pod: &Pod) -> Observed {
    let Some(status) = pod.status.as_ref() else { return Observed::Waiting };
    let init = status.init_container_statuses.clone().unwrap_or_default();
    let containers = status.container_statuses.clone().unwrap_or_default();
    if let Some(failed) = waiting_failure(&init).or_else(|| waiting_failure(&containers)) {
        return failed;
    }
    for s in &init {
        if let Some(t) = s.state.as_ref().and_then(|st| st.terminated.as_ref()).filter(|t| t.exit_code != 0) {
            let reason = if s.name == SETUP_INIT { FailureReason::SetupCommand } else { FailureReason::InitContainer };
            return Observed::Failed(
                reason,
                format!(
                    "init container {} exited with code {}{}",
                    s.name,
                    t.exit_code,
                    t.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                ),
                Some(t.exit_code),
            );
        }
    }
    match status.reason.as_deref() {
        Some("Evicted") => {
            return Observed::Failed(
                FailureReason::Evicted,
                format!("the pod was evicted: {}", status.message.clone().unwrap_or_default()),
                None,
            );
        }
        Some("DeadlineExceeded") => {
            return Observed::Failed(
                FailureReason::ActiveDeadline,
                "the task ran past its deadline (activeDeadlineSeconds)".into(),
                None,
            );
        }
        _ => {}
    }
    let task = containers.iter().find(|c| c.name == TASK_CONTAINER);
    let terminated = task.and_then(|c| c.state.as_ref()).and_then(|s| s.terminated.as_ref());
    match status.phase.as_deref() {
        Some("Succeeded") => return Observed::Exited(terminated.map_or(0, |t| t.exit_code)),
        Some("Failed") => {
            let code = terminated.map(|t| t.exit_code);
            if matches!(terminated.and_then(|t| t.reason.as_deref()), Some("StartError" | "ContainerCannotRun")) {
                let message = terminated.and_then(|t| t.message.clone()).unwrap_or_default();
                return Observed::Failed(
                    FailureReason::ContainerStart,
                    format!("the task could not start: {message}"),
                    code,
                );
            }
            if terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
                return Observed::Failed(
                    FailureReason::ContainerOom,
                    "the task ran out of memory and was killed (OOMKilled)".into(),
                    code,
                );
            }
            return match code {
                Some(code) => Observed::Exited(code),
                None => Observed::Failed(
                    FailureReason::JobFailed,
                    format!("the pod failed: {}", status.message.clone().unwrap_or_default()),
                    None,
                ),
            };
        }
        _ => {}
    }
    if task.and_then(|c| c.state.as_ref()).and_then(|s| s.running.as_ref()).is_some() {
        return Observed::Running;
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    if let Some(c) = unschedulable {
        return Observed::Unschedulable(c.message.clone().unwrap_or_else(|| "no node fits the pod".into()));
    }
    Observed::Waiting
}

/// Reads a Job: only a failure the Pod may not show (the deadline) is decisive here.
pub fn observe_job(job: &Job) -> Observed {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    for c in conditions.iter().filter(|c| c.status == "True") {
        if c.type_ == "Failed" && c.reason.as_deref() == Some("DeadlineExceeded") {
            return Observed::Failed(
                FailureReason::ActiveDeadline,
                "the task ran past its deadline (activeDeadlineSeconds)".into(),
                None,
            );
        }
    }
    Observed::Waiting
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn each_failure_mode_has_its_reason() {
        let pull = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "task", "image": "acme/x:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
        );
        assert!(matches!(observe_pod(&pull), Observed::Failed(FailureReason::ImagePull, _, None)));
        let missing = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "task", "image": "acme/x:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}}]}),
        );
        assert!(matches!(observe_pod(&missing), Observed::Failed(FailureReason::InvalidImage, _, None)));
        let setup = pod(
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "setup", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 2}}}]}),
        );
        assert!(matches!(observe_pod(&setup), Observed::Failed(FailureReason::SetupCommand, _, Some(2))));
        let init = pod(
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "oz-sidecar", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1}}}]}),
        );
        assert!(matches!(observe_pod(&init), Observed::Failed(FailureReason::InitContainer, _, Some(1))));
        let oom = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        assert!(matches!(observe_pod(&oom), Observed::Failed(FailureReason::ContainerOom, _, Some(137))));
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted", "message": "node low on disk"}));
        assert!(
            matches!(observe_pod(&evicted), Observed::Failed(FailureReason::Evicted, m, None) if m.contains("low on disk"))
        );
        let deadline = pod(json!({"phase": "Failed", "reason": "DeadlineExceeded"}));
        assert!(matches!(observe_pod(&deadline), Observed::Failed(FailureReason::ActiveDeadline, _, None)));
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: insufficient memory"}]}),
        );
        assert_eq!(observe_pod(&unschedulable), Observed::Unschedulable("0/3 nodes: insufficient memory".into()));
        let exited = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 3}}}]}),
        );
        assert_eq!(observe_pod(&exited), Observed::Exited(3));
        let running = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "task", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {}}}]}),
        );
        assert_eq!(observe_pod(&running), Observed::Running);
        assert_eq!(observe_pod(&pod(json!({"phase": "Succeeded"}))), Observed::Exited(0));
        let job: Job = serde_json::from_value(json!({"metadata": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}})).unwrap();
        assert!(matches!(observe_job(&job), Observed::Failed(FailureReason::ActiveDeadline, _, _)));
    }
}
