//! The Oz worker protocol: JSON envelopes `{"type": "...", "data": {...}}` over a WebSocket.
//! Unknown message types and unknown fields are ignored, as Oz peers do.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::failure::FailureReason;
use crate::run::RunState;
use crate::sidecar::AdditionalSidecar;

/// The raw envelope.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Who a task belongs to; the keys are PascalCase on the wire (`Type`, `Id`), as Oz sends them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// `USER` or `TEAM`.
    #[serde(rename = "Type")]
    pub kind: OwnerType,
    /// The user's or team's id.
    #[serde(rename = "Id")]
    pub id: String,
}

/// The kind of owner.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OwnerType {
    /// A user.
    User,
    /// A team.
    Team,
}

/// The prompt of a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDefinition {
    /// What the agent is asked to do.
    #[serde(default)]
    pub prompt: String,
}

/// The harness of a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HarnessConfig {
    /// `oz`, `claude`, `codex`, `gemini`, or ours: `command` (any case).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub kind: Option<crate::runner::HarnessKind>,
    /// The harness's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// The reasoning level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_level: Option<String>,
    /// Our extension for `command`: the argv to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// The agent configuration captured when the task was created.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfigSnapshot {
    /// The environment to prepare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// A prompt prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_prompt: Option<String>,
    /// The model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// The agent profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<String>,
    /// A skill to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spec: Option<String>,
    /// MCP servers, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<serde_json::Value>,
    /// Whether computer use is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_enabled: Option<bool>,
    /// Minutes to stay idle after completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<u32>,
    /// The harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessConfig>,
    /// Secret names for the harness's own authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_auth_secrets: Option<serde_json::Value>,
    /// Inference provider settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_providers: Option<serde_json::Value>,
    /// Session sharing settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sharing: Option<crate::sharing::SessionSharing>,
}

/// The task inside an assignment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignedTask {
    /// The task id (the run id).
    pub id: String,
    /// The title.
    #[serde(default)]
    pub title: String,
    /// The prompt.
    #[serde(default)]
    pub task_definition: TaskDefinition,
    /// Created.
    pub created_at: Timestamp,
    /// Updated.
    pub updated_at: Timestamp,
    /// The owner.
    pub owner: Owner,
    /// The conversation to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_conversation_id: Option<String>,
    /// The agent config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
}

/// CPU and memory for a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceShape {
    /// CPUs.
    pub vcpus: f64,
    /// Memory in GB (GiB, as the Oz worker treats it).
    pub memory_gb: f64,
}

/// `task_assignment`: the server gives a task to a worker. Its `Debug` names the variables without
/// their values (one is the run's workload token).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The task id.
    pub task_id: String,
    /// This attempt's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The task.
    pub task: AssignedTask,
    /// The image to run in; absent or empty = the backend's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    /// The sidecar image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    /// Variables for the task (including its credentials).
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// More sidecars.
    #[serde(default)]
    pub additional_sidecars: Vec<AdditionalSidecar>,
    /// More arguments for `oz agent run`.
    #[serde(default)]
    pub additional_oz_args: Vec<String>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
}

impl std::fmt::Debug for TaskAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAssignment")
            .field("task_id", &self.task_id)
            .field("execution_id", &self.execution_id)
            .field("task", &self.task)
            .field("docker_image", &self.docker_image)
            .field("sidecar_image", &self.sidecar_image)
            .field("env_vars", &self.env_vars.keys().collect::<Vec<_>>())
            .field("additional_sidecars", &self.additional_sidecars)
            .field("additional_oz_args", &self.additional_oz_args)
            .field("instance_shape", &self.instance_shape)
            .finish()
    }
}

/// `task_cancellation`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancellation {
    /// The task to cancel.
    pub task_id: String,
}

/// `task_claimed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaimed {
    /// The task.
    pub task_id: String,
    /// The worker.
    pub worker_id: String,
    /// The execution (attempt) it is about, echoed from its `task_assignment` (our extension: a
    /// run continued after its end is assigned again under a new execution id, and a late message
    /// of the execution before must not move the new one). Absent from Oz's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// `task_rejected`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRejected {
    /// The task.
    pub task_id: String,
    /// Why (at capacity, shutting down).
    pub reason: String,
    /// The execution (attempt) it is about, echoed from its `task_assignment` (our extension: a
    /// run continued after its end is assigned again under a new execution id, and a late message
    /// of the execution before must not move the new one). Absent from Oz's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// `task_completed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    /// The task.
    pub task_id: String,
    /// A summary.
    #[serde(default)]
    pub message: String,
    /// `CANCELLED` when the task ended by cancellation; absent for success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_state: Option<RunState>,
    /// The execution (attempt) it is about, echoed from its `task_assignment` (our extension: a
    /// run continued after its end is assigned again under a new execution id, and a late message
    /// of the execution before must not move the new one). Absent from Oz's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// `task_failed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task.
    pub task_id: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// Why.
    pub failure_reason: FailureReason,
    /// The exit code, 128+signal for a signal.
    #[serde(default)]
    pub exit_code: i32,
    /// The execution (attempt) it is about, echoed from its `task_assignment` (our extension: a
    /// run continued after its end is assigned again under a new execution id, and a late message
    /// of the execution before must not move the new one). Absent from Oz's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// A message from the server to a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// `task_assignment`.
    TaskAssignment(Box<TaskAssignment>),
    /// `task_cancellation`.
    TaskCancellation(TaskCancellation),
    /// `repos_moved` (our extension): repos were pushed to, so the warm sandboxes prepared from
    /// them are out of date. Sent to the team's workers by `POST /repos/pushed`.
    ReposMoved(ReposMoved),
}

/// The body of `repos_moved`, and of `POST /repos/pushed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReposMoved {
    /// The repos pushed to.
    pub repos: Vec<crate::environment::RepoRef>,
}

/// A message from a worker to the server.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerMessage {
    /// `task_claimed`.
    TaskClaimed(TaskClaimed),
    /// `task_rejected`.
    TaskRejected(TaskRejected),
    /// `task_completed`.
    TaskCompleted(TaskCompleted),
    /// `task_failed`.
    TaskFailed(TaskFailed),
    /// `warm_pools` (our extension): the state of the worker's warm pools, sent when it changes. A
    /// worker sends it only when it has pools.
    WarmPools(WarmPoolsReport),
}

/// A connected worker, as `GET /workers` lists it (our extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedWorker {
    /// The worker id.
    pub worker_id: String,
    /// How many connections it has.
    pub connections: usize,
    /// Runs it holds now.
    pub runs_in_flight: usize,
    /// Its warm pools, as its connections last reported them (omitted without pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_pools: Vec<WarmPoolState>,
}

/// The state of a worker's warm pools.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmPoolsReport {
    /// One per environment.
    pub pools: Vec<WarmPoolState>,
}

/// One warm pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmPoolState {
    /// The environment's id.
    pub environment: String,
    /// Sandboxes waiting for a task.
    pub ready: usize,
    /// Sandboxes being prepared.
    pub warming: usize,
    /// How many ready sandboxes the pool aims at now: its `size`, more after misses (up to its
    /// `max_size`), back down when idle.
    #[serde(default)]
    pub target: usize,
    /// The age of the oldest ready sandbox, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_ready_secs: Option<u64>,
    /// Tasks handed a warm sandbox.
    pub hits: u64,
    /// Tasks of the environment started cold.
    pub misses: u64,
    /// Why the last preparation failed (a setup command, a clone), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The memory the ready sandboxes use together, in bytes, as last measured (absent: the
    /// backend cannot measure it, or none is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

fn envelope<T: Serialize>(kind: &str, data: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Envelope { kind: kind.to_owned(), data: serde_json::to_value(data)? })
}

impl ServerMessage {
    /// The JSON text of the message.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            ServerMessage::TaskAssignment(m) => envelope("task_assignment", m),
            ServerMessage::TaskCancellation(m) => envelope("task_cancellation", m),
            ServerMessage::ReposMoved(m) => envelope("repos_moved", m),
        }
    }

    /// Parses a message; `Ok(None)` for a type this version does not know (to be ignored).
    pub fn from_json(text: &str) -> Result<Option<Self>, serde_json::Error> {
        let env: Envelope = serde_json::from_str(text)?;
        Ok(match env.kind.as_str() {
            "task_assignment" => Some(ServerMessage::TaskAssignment(Box::new(serde_json::from_value(env.data)?))),
            "task_cancellation" => Some(ServerMessage::TaskCancellation(serde_json::from_value(env.data)?)),
            "repos_moved" => Some(ServerMessage::ReposMoved(serde_json::from_value(env.data)?)),
            _ => None,
        })
    }
}

impl WorkerMessage {
    /// The task the message is about (`None`: the worker's pools).
    pub fn task_id(&self) -> Option<&str> {
        match self {
            WorkerMessage::TaskClaimed(m) => Some(&m.task_id),
            WorkerMessage::TaskRejected(m) => Some(&m.task_id),
            WorkerMessage::TaskCompleted(m) => Some(&m.task_id),
            WorkerMessage::TaskFailed(m) => Some(&m.task_id),
            WorkerMessage::WarmPools(_) => None,
        }
    }

    /// The execution the message is about, when the worker said (ours does; Oz's does not).
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            WorkerMessage::TaskClaimed(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskRejected(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskCompleted(m) => m.execution_id.as_deref(),
            WorkerMessage::TaskFailed(m) => m.execution_id.as_deref(),
            WorkerMessage::WarmPools(_) => None,
        }
    }

    /// The JSON text of the message.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            WorkerMessage::TaskClaimed(m) => envelope("task_claimed", m),
            WorkerMessage::TaskRejected(m) => envelope("task_rejected", m),
            WorkerMessage::TaskCompleted(m) => envelope("task_completed", m),
            WorkerMessage::TaskFailed(m) => envelope("task_failed", m),
            WorkerMessage::WarmPools(m) => envelope("warm_pools", m),
        }
    }

    /// Parses a message; `Ok(None)` for a type this version does not know.
    pub fn from_json(text: &str) -> Result<Option<Self>, serde_json::Error> {
        let env: Envelope = serde_json::from_str(text)?;
        Ok(match env.kind.as_str() {
            "task_claimed" => Some(WorkerMessage::TaskClaimed(serde_json::from_value(env.data)?)),
            "task_rejected" => Some(WorkerMessage::TaskRejected(serde_json::from_value(env.data)?)),
            "task_completed" => Some(WorkerMessage::TaskCompleted(serde_json::from_value(env.data)?)),
            "task_failed" => Some(WorkerMessage::TaskFailed(serde_json::from_value(env.data)?)),
            "warm_pools" => Some(WorkerMessage::WarmPools(serde_json::from_value(env.data)?)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An assignment as the Oz server sends it (Go field names, PascalCase owner, RFC 3339 nanos).
    fn oz_assignment() -> serde_json::Value {
        json!({
            "type": "task_assignment",
            "data": {
                "task_id": "run-1",
                "execution_id": "exec-1",
                "task": {
                    "id": "run-1",
                    "title": "Fix the flaky test",
                    "task_definition": {"prompt": "fix it"},
                    "created_at": "2026-08-01T10:00:00.123456789Z",
                    "updated_at": "2026-08-01T10:00:01Z",
                    "owner": {"Type": "TEAM", "Id": "team-1"},
                    "agent_config_snapshot": {
                        "environment_id": "env-1",
                        "model_id": "m",
                        "harness": {"type": "claude"},
                        "computer_use_enabled": false,
                        "something_new": true
                    }
                },
                "docker_image": "ubuntu:22.04",
                "sidecar_image": "warpdotdev/oz-sidecar:1",
                "env_vars": {"A": "1"},
                "additional_sidecars": [{"image": "acme/tools:1", "mount_path": "/opt/tools", "read_write": false}],
                "additional_oz_args": ["--debug"],
                "instance_shape": {"vcpus": 2, "memory_gb": 4},
                "a_future_field": {"x": 1}
            }
        })
    }

    #[test]
    fn parses_an_oz_assignment_and_tolerates_unknown_fields() {
        let text = oz_assignment().to_string();
        let Some(ServerMessage::TaskAssignment(a)) = ServerMessage::from_json(&text).unwrap() else {
            panic!("not an assignment")
        };
        assert_eq!(a.task_id, "run-1");
        assert_eq!(a.task.owner, Owner { kind: OwnerType::Team, id: "team-1".into() });
        assert_eq!(
            a.task.agent_config_snapshot.as_ref().unwrap().harness.as_ref().unwrap().kind,
            Some(crate::runner::HarnessKind::Claude)
        );
        assert_eq!(a.instance_shape, Some(InstanceShape { vcpus: 2.0, memory_gb: 4.0 }));
        assert_eq!(a.additional_sidecars[0].mount_path, "/opt/tools");
        let mut secret = a.clone();
        secret.env_vars.insert("OZ_WORKLOAD_TOKEN".into(), "ozw_debug_never_shows".into());
        let shown = format!("{:?}", ServerMessage::TaskAssignment(secret));
        assert!(shown.contains("OZ_WORKLOAD_TOKEN") && !shown.contains("ozw_debug_never_shows"), "{shown}");
    }

    #[test]
    fn serializes_pascal_case_owner_and_omits_absent_optionals() {
        let text = oz_assignment().to_string();
        let Some(ServerMessage::TaskAssignment(mut a)) = ServerMessage::from_json(&text).unwrap() else { panic!() };
        a.execution_id = None;
        a.instance_shape = None;
        a.docker_image = None;
        a.task.agent_config_snapshot = None;
        let v: serde_json::Value = serde_json::from_str(&ServerMessage::TaskAssignment(a).to_json().unwrap()).unwrap();
        assert_eq!(v["type"], "task_assignment");
        assert_eq!(v["data"]["task"]["owner"], json!({"Type": "TEAM", "Id": "team-1"}));
        let data = v["data"].as_object().unwrap();
        for absent in ["execution_id", "instance_shape", "docker_image"] {
            assert!(!data.contains_key(absent), "{absent} should be omitted");
        }
        assert!(!v["data"]["task"].as_object().unwrap().contains_key("agent_config_snapshot"));
    }

    #[test]
    fn worker_messages_have_the_exact_oz_shapes() {
        let cases = [
            (
                WorkerMessage::TaskClaimed(TaskClaimed {
                    task_id: "t".into(),
                    worker_id: "w".into(),
                    execution_id: None,
                }),
                json!({"type": "task_claimed", "data": {"task_id": "t", "worker_id": "w"}}),
            ),
            (
                WorkerMessage::TaskRejected(TaskRejected {
                    task_id: "t".into(),
                    reason: "at capacity".into(),
                    execution_id: None,
                }),
                json!({"type": "task_rejected", "data": {"task_id": "t", "reason": "at capacity"}}),
            ),
            (
                WorkerMessage::TaskCompleted(TaskCompleted {
                    task_id: "t".into(),
                    message: "done".into(),
                    task_state: None,
                    execution_id: None,
                }),
                json!({"type": "task_completed", "data": {"task_id": "t", "message": "done"}}),
            ),
            (
                WorkerMessage::TaskCompleted(TaskCompleted {
                    task_id: "t".into(),
                    message: "".into(),
                    task_state: Some(RunState::Cancelled),
                    execution_id: None,
                }),
                json!({"type": "task_completed", "data": {"task_id": "t", "message": "", "task_state": "CANCELLED"}}),
            ),
            (
                WorkerMessage::TaskFailed(TaskFailed {
                    task_id: "t".into(),
                    message: "boom".into(),
                    failure_reason: FailureReason::ContainerExit,
                    exit_code: 137,
                    execution_id: None,
                }),
                json!({"type": "task_failed", "data": {"task_id": "t", "message": "boom", "failure_reason": "container_exit", "exit_code": 137}}),
            ),
        ];
        for (message, expected) in cases {
            let text = message.to_json().unwrap();
            assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), expected);
            assert_eq!(WorkerMessage::from_json(&text).unwrap(), Some(message));
        }
    }

    #[test]
    fn unknown_types_are_ignored_not_errors() {
        assert_eq!(ServerMessage::from_json(r#"{"type":"hello_v2","data":{"x":1}}"#).unwrap(), None);
        assert_eq!(WorkerMessage::from_json(r#"{"type":"telemetry"}"#).unwrap(), None);
        assert!(ServerMessage::from_json("not json").is_err());
        assert!(ServerMessage::from_json(r#"{"type":"task_cancellation","data":{}}"#).is_err());
        let cancel = ServerMessage::from_json(r#"{"type":"task_cancellation","data":{"task_id":"t"}}"#).unwrap();
        assert_eq!(cancel, Some(ServerMessage::TaskCancellation(TaskCancellation { task_id: "t".into() })));
    }
}
