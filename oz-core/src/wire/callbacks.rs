//! What the in-sandbox runner reports to the control plane, authenticated with the run's workload token
//! (our extension; the hosted Oz agent reports over a private channel).
//!
//! `POST /api/v1/agent/runs/{run_id}/report` with one [`RunnerReport`] per request.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::run::RunState;

/// The path, under `/api/v1`, the runner posts reports to.
pub fn report_path(run_id: &str) -> String {
    format!("/agent/runs/{run_id}/report")
}

/// The path, under `/api/v1`, of a run's resolved configuration (its workload token only, once).
pub fn resolved_path(run_id: &str) -> String {
    format!("/agent/runs/{run_id}/resolved")
}

/// The path, under `/api/v1`, of a run's conversation: what its agent kept of its conversation in
/// one execution (an archive the runner makes and reads; the control plane stores it sealed and
/// never looks inside), for the next execution to go on from. `PUT` stores it, `GET` reads it, with
/// the run's workload token.
pub fn conversation_path(run_id: &str) -> String {
    format!("/agent/runs/{run_id}/conversation")
}

/// The largest conversation the control plane keeps for a run (a runner with more says so and
/// keeps none: the next execution starts without it).
pub const MAX_CONVERSATION_BYTES: usize = 16 * 1024 * 1024;

/// What a runner needs to start, fetched once with its run's workload token: the prompt, the
/// environment, the values of the secrets the run references (by the variable they go into), and
/// short-lived git credentials for the environment's repositories. `Debug` shows no value.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRun {
    /// What the agent is asked to do in this execution: the run's prompt, or in a continuation the
    /// follow-up that continued it.
    pub prompt: String,
    /// Set when this execution continues the run after it ended (a follow-up to an ended run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
    /// The run's environment, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<crate::environment::EnvironmentConfig>,
    /// Variables for setup commands and the harness whose values are team secrets.
    #[serde(default)]
    pub secret_env: std::collections::BTreeMap<String, String>,
    /// For the runner's git credential helper only (never the environment).
    #[serde(default)]
    pub git_credentials: Vec<ResolvedGitCredential>,
}

impl std::fmt::Debug for ResolvedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedRun")
            .field("prompt", &self.prompt)
            .field("continuation", &self.continuation)
            .field("environment", &self.environment)
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .field("git_credentials", &self.git_credentials.iter().map(|c| &c.host).collect::<Vec<_>>())
            .finish()
    }
}

/// An execution that continues a run after its end: the agent goes on with its conversation
/// (restored from [`conversation_path`]) with the follow-up as its prompt.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// Which execution of the run this is: 2 for the first continuation.
    pub execution: u32,
    /// The run's event that continued it (the follow-up): its steering (follow-ups, interrupts,
    /// keys, cancel) is what comes after this one, not what the executions before were sent.
    pub after_seq: i64,
    /// Whether an execution before kept a conversation to go on from.
    pub conversation: bool,
}

/// The path, under `/api/v1`, where a worker gets read-only git credentials for an environment of its
/// team, to keep its git mirrors and check its warm pools' HEADs before any run (worker credential).
pub fn preparation_credentials_path(environment_id: &str) -> String {
    format!("/selfhosted/worker/environments/{environment_id}/git-credentials")
}

/// What a worker may read an environment's repositories with, for its own git only (never a
/// sandbox's): read-only where the team's git provider can narrow a token (a GitHub App, GitLab), and
/// short-lived. Empty when the team has no git provider for the environment's host. `Debug` shows no
/// token.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreparationCredentials {
    /// At most one per git host.
    #[serde(default)]
    pub git_credentials: Vec<ResolvedGitCredential>,
}

impl std::fmt::Debug for PreparationCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparationCredentials")
            .field("git_credentials", &self.git_credentials.iter().map(|c| &c.host).collect::<Vec<_>>())
            .finish()
    }
}

/// A git credential in a [`ResolvedRun`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedGitCredential {
    /// The host it is for.
    pub host: String,
    /// The user name git presents.
    pub username: String,
    /// The token.
    pub token: String,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl ResolvedGitCredential {
    /// As the runner's credential type.
    pub fn to_credential(&self) -> crate::credentials::GitCredential {
        crate::credentials::GitCredential::new(&self.host, &self.username, &self.token, self.expires_at)
    }
}

/// One report from the runner.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunnerReport {
    /// When it happened.
    pub at: Timestamp,
    /// Its place in the run's reports, from 1 with no gap: the control plane stores each once, so
    /// the runner resends until one is acknowledged. Absent from older runners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What happened.
    #[serde(flatten)]
    pub event: RunnerEvent,
}

/// Something the runner did or saw.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunnerEvent {
    /// The runner started.
    Started {
        /// The runner's version.
        version: String,
    },
    /// A repo is being cloned.
    CloneStarted {
        /// `owner/name`.
        repo: String,
    },
    /// A repo was cloned.
    CloneFinished {
        /// `owner/name`.
        repo: String,
        /// How long it took.
        millis: u64,
        /// Whether it worked.
        ok: bool,
        /// Why not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A setup command started.
    SetupStarted {
        /// Its index in the environment.
        index: usize,
        /// The command.
        command: String,
    },
    /// A setup command ended.
    SetupFinished {
        /// Its index.
        index: usize,
        /// Its exit code.
        exit_code: i32,
        /// How long it took.
        millis: u64,
    },
    /// The harness (the agent) started.
    HarnessStarted {
        /// `command`, `claude`, `codex`, `gemini`.
        harness: String,
    },
    /// Output from a setup command or the harness, already redacted.
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The text (lossy UTF-8).
        text: String,
    },
    /// Something the run produced.
    Artifact(Artifact),
    /// The runner is alive (a runner that registered its own run, with no worker to vouch for it,
    /// sends one when it has said nothing for a while): renews the run's lease, is not stored.
    Heartbeat,
    /// The run ended.
    Finished {
        /// `SUCCEEDED`, `FAILED` or `CANCELLED`.
        state: RunState,
        /// The harness's exit code, if it ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// A summary.
        message: String,
    },
}

/// An artifact, as the Oz API lists them on a run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "artifact_type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Artifact {
    /// A plan.
    Plan {
        /// The plan text.
        #[serde(default)]
        content: String,
    },
    /// A pull request.
    PullRequest {
        /// Its URL.
        url: String,
        /// Its branch.
        branch: String,
    },
    /// A screenshot.
    Screenshot {
        /// Where it is.
        #[serde(default)]
        url: String,
    },
    /// A file.
    File {
        /// Its path or URL.
        path: String,
        /// A description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// A reference to something elsewhere (a commit, an issue).
    ExternalReference {
        /// What kind (`git_commit`, ...).
        reference_type: String,
        /// Where.
        url: String,
        /// A title.
        #[serde(default)]
        title: String,
        /// More.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Value>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_flat_tagged_json() {
        let r = RunnerReport {
            at: "2026-11-22T10:00:00Z".parse().unwrap(),
            seq: None,
            event: RunnerEvent::Finished { state: RunState::Succeeded, exit_code: Some(0), message: "ok".into() },
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"at": "2026-11-22T10:00:00Z", "event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "ok"})
        );
        let a = RunnerEvent::Artifact(Artifact::PullRequest { url: "u".into(), branch: "b".into() });
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"event": "artifact", "artifact_type": "PULL_REQUEST", "url": "u", "branch": "b"})
        );
        let back: RunnerEvent = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
