//! The Job controller, done synchronously with the change that calls for it (a real one reacts to
//! watch events): a new Job gets one Pod from its template (`<job>-<suffix>`, labelled `job-name`)
//! and is active; a Pod that succeeds or fails completes or fails its Job; deleting a Job deletes its
//! Pods, before the Job with foreground propagation, just after it otherwise.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::state::{Selector, WatchKind};

impl Cluster {
    /// Creates a Job and its Pod, and hands the Pod to the node if there is one. Returns the Job as
    /// it is once active.
    pub(crate) fn create_job(self: &Arc<Self>, namespace: &str, job: Value) -> Result<Value, (u16, String)> {
        let mut state = self.state();
        let created = state.create(WatchKind::Job, namespace, job)?;
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
        let pod = state.create(WatchKind::Pod, namespace, pod);
        let current = state.modify(WatchKind::Job, namespace, &name, |j| j["status"] = json!({"active": 1}));
        self.publish(state);
        if let (Some(node), Ok(pod)) = (self.node(), pod) {
            let deadline = created["spec"]["activeDeadlineSeconds"].as_u64();
            node.run(self.clone(), namespace.to_owned(), pod, deadline);
        }
        Ok(current.unwrap_or(created))
    }

    /// Sets a Pod's status; a Pod that ended completes or fails its Job.
    pub(crate) fn set_pod_status(&self, namespace: &str, pod: &str, new_status: Value) {
        let mut state = self.state();
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
        self.publish(state);
    }

    /// Deletes a Job and its Pods, once the node has stopped the Pods' processes; returns the Job,
    /// or `None` if there was none.
    pub(crate) async fn delete_job(&self, namespace: &str, name: &str, foreground: bool) -> Option<Value> {
        let selector = Selector::parse(Some(&format!("job-name={name}")));
        let groups: Vec<i32> = {
            let state = self.state();
            state
                .list(WatchKind::Pod, namespace, &selector)
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .filter_map(|p| state.groups.get(&(namespace.to_owned(), p.to_owned())).copied())
                .collect()
        };
        if let Some(node) = self.node() {
            for pgid in groups {
                node.stop(pgid).await;
            }
        }
        let mut state = self.state();
        let pods: Vec<String> = state
            .list(WatchKind::Pod, namespace, &selector)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if foreground {
            for pod in &pods {
                state.delete(WatchKind::Pod, namespace, pod);
            }
        }
        let job = state.delete(WatchKind::Job, namespace, name)?;
        if !foreground {
            for pod in &pods {
                state.delete(WatchKind::Pod, namespace, pod);
            }
        }
        self.publish(state);
        Some(job)
    }
}
