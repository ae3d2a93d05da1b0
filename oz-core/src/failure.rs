//! Why a task or run failed: the Oz worker's `failure_reason` values and the API's `error` codes,
//! and which terminal state each leads to (user errors end FAILED, platform errors end ERROR).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::run::RunState;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident (unknown: $fallback:expr) { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant,)*
        }

        impl $name {
            /// Every value, in the documented order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The exact wire string.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            /// Unknown values (from a newer peer) become the fallback rather than failing the message.
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok(raw.parse().unwrap_or($fallback))
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| Error::invalid(stringify!($name), format!("unknown value {s:?}")))
            }
        }
    };
}

wire_enum! {
    /// The `failure_reason` of a `task_failed` message, as the Oz worker names them.
    FailureReason (unknown: FailureReason::Unknown) {
        /// Nothing more specific is known.
        Unknown = "unknown",
        /// The task ran past its time limit.
        TaskTimeout = "task_timeout",
        /// Someone cancelled the task.
        TaskCancelled = "task_cancelled",
        /// The worker shut down and could not keep the task.
        GracefulShutdown = "graceful_shutdown",
        /// The image could not be pulled.
        ImagePull = "image_pull",
        /// The sidecar could not be prepared.
        SidecarPrep = "sidecar_prep",
        /// The container could not be created.
        ContainerCreate = "container_create",
        /// The container could not be started.
        ContainerStart = "container_start",
        /// Waiting for the container failed.
        ContainerWait = "container_wait",
        /// The task's process exited non-zero.
        ContainerExit = "container_exit",
        /// The task ran out of memory.
        ContainerOom = "container_oom",
        /// The workspace could not be prepared.
        WorkspaceSetup = "workspace_setup",
        /// The backend's setup command failed.
        SetupCommand = "setup_command",
        /// The agent could not be started.
        AgentInvocation = "agent_invocation",
        /// The backend's teardown command failed.
        TeardownCommand = "teardown_command",
        /// A dispatch command failed.
        DispatchCommand = "dispatch_command",
        /// A dispatch command timed out.
        DispatchTimeout = "dispatch_timeout",
        /// A cancel command failed.
        CancelCommand = "cancel_command",
        /// The Kubernetes Job could not be created.
        JobCreate = "job_create",
        /// Watching the Job failed.
        JobWatch = "job_watch",
        /// The Job failed.
        JobFailed = "job_failed",
        /// The pod was evicted.
        Evicted = "evicted",
        /// Watching the pod failed.
        PodWatch = "pod_watch",
        /// The pod could not be scheduled in time.
        Unschedulable = "unschedulable",
        /// A volume could not be mounted.
        VolumeMount = "volume_mount",
        /// An init container failed.
        InitContainer = "init_container",
        /// The image reference is invalid or the image does not exist.
        InvalidImage = "invalid_image",
        /// The Job's active deadline passed.
        ActiveDeadline = "active_deadline",
        /// Cleaning up after the task failed.
        Cleanup = "cleanup",
    }
}

impl FailureReason {
    /// The terminal run state this failure leads to. Failures caused by what the user gave us (their
    /// command's exit, their image, their setup, their time and memory budget) end FAILED; failures of
    /// the platform end ERROR; a cancellation ends CANCELLED.
    pub fn terminal_state(self) -> RunState {
        use FailureReason::*;
        match self {
            TaskCancelled => RunState::Cancelled,
            TaskTimeout | ContainerExit | ContainerOom | SetupCommand | TeardownCommand | InvalidImage
            | ActiveDeadline | InitContainer | JobFailed => RunState::Failed,
            Unknown | GracefulShutdown | ImagePull | SidecarPrep | ContainerCreate | ContainerStart | ContainerWait
            | WorkspaceSetup | AgentInvocation | DispatchCommand | DispatchTimeout | CancelCommand | JobCreate
            | JobWatch | Evicted | PodWatch | Unschedulable | VolumeMount | Cleanup => RunState::Error,
        }
    }
}

wire_enum! {
    /// The `error` code of an API problem document.
    ErrorCode (unknown: ErrorCode::InternalError) {
        /// The team has no credits left.
        InsufficientCredits = "insufficient_credits",
        /// The plan lacks this feature.
        FeatureNotAvailable = "feature_not_available",
        /// The user must authenticate with an external provider.
        ExternalAuthenticationRequired = "external_authentication_required",
        /// The caller may not do this.
        NotAuthorized = "not_authorized",
        /// The request is malformed or invalid.
        InvalidRequest = "invalid_request",
        /// Nothing with that id exists for the caller.
        ResourceNotFound = "resource_not_found",
        /// A budget was exceeded.
        BudgetExceeded = "budget_exceeded",
        /// The integration is disabled.
        IntegrationDisabled = "integration_disabled",
        /// The integration is not configured.
        IntegrationNotConfigured = "integration_not_configured",
        /// The operation is not supported.
        OperationNotSupported = "operation_not_supported",
        /// The environment's setup failed.
        EnvironmentSetupFailed = "environment_setup_failed",
        /// The content was refused by policy.
        ContentPolicyViolation = "content_policy_violation",
        /// The request conflicts with the resource's state.
        Conflict = "conflict",
        /// No or bad credentials.
        AuthenticationRequired = "authentication_required",
        /// A resource is temporarily unavailable.
        ResourceUnavailable = "resource_unavailable",
        /// Something broke on our side.
        InternalError = "internal_error",
    }
}

impl ErrorCode {
    /// The terminal state of a run that fails with this code: the last three are the platform's fault
    /// (ERROR), the rest the user's (FAILED).
    pub fn terminal_state(self) -> RunState {
        match self {
            ErrorCode::AuthenticationRequired | ErrorCode::ResourceUnavailable | ErrorCode::InternalError => {
                RunState::Error
            }
            _ => RunState::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_use_the_oz_names() {
        let names: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names.join(","),
            "unknown,task_timeout,task_cancelled,graceful_shutdown,image_pull,sidecar_prep,container_create,\
container_start,container_wait,container_exit,container_oom,workspace_setup,setup_command,agent_invocation,\
teardown_command,dispatch_command,dispatch_timeout,cancel_command,job_create,job_watch,job_failed,evicted,\
pod_watch,unschedulable,volume_mount,init_container,invalid_image,active_deadline,cleanup"
        );
        for r in FailureReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::String(r.as_str().into()));
            assert_eq!(r.as_str().parse::<FailureReason>().unwrap(), *r);
        }
    }

    #[test]
    fn user_errors_fail_and_platform_errors_error() {
        assert_eq!(FailureReason::ContainerExit.terminal_state(), RunState::Failed);
        assert_eq!(FailureReason::SetupCommand.terminal_state(), RunState::Failed);
        assert_eq!(FailureReason::InvalidImage.terminal_state(), RunState::Failed);
        assert_eq!(FailureReason::ImagePull.terminal_state(), RunState::Error);
        assert_eq!(FailureReason::WorkspaceSetup.terminal_state(), RunState::Error);
        assert_eq!(FailureReason::TaskCancelled.terminal_state(), RunState::Cancelled);
        for r in FailureReason::ALL {
            assert!(r.terminal_state().is_terminal());
        }
        let error_codes: Vec<_> =
            ErrorCode::ALL.iter().filter(|c| c.terminal_state() == RunState::Error).map(|c| c.as_str()).collect();
        assert_eq!(error_codes, ["authentication_required", "resource_unavailable", "internal_error"]);
        assert_eq!(ErrorCode::ALL.len(), 16);
        assert_eq!(serde_json::from_str::<FailureReason>("\"from_the_future\"").unwrap(), FailureReason::Unknown);
    }
}
