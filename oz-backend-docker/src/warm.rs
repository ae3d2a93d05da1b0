//! Warm containers ([`oz_core::backend::Backend::prepare`]): a container made as a task's would be
//! (image, sidecar, limits, hardening, network, labels), started with `oz agent warm --handoff-stdin`
//! instead of a task, and ready once its runner says so on stderr. Its task comes on its stdin,
//! attached once through the engine's API: the one write carries the task and its token, which are
//! never in the container's spec. Handed a task, the container is renamed to
//! [`crate::container::assigned_name`], which is how a restarted worker knows whose it is.

use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{LogsOptionsBuilder, UploadToContainerOptionsBuilder};
use bytes::Bytes;
use futures::StreamExt;
use oz_core::backend::BackendError;
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;
use oz_core::warm::WarmSpec;
use tokio::io::AsyncWriteExt;

use crate::engine::describe;

/// The folder in a warm container that holds its environment file (uploaded before it starts).
const PRIVATE_DIR: &str = "oz-warm";
/// The environment file's path in a warm container.
const ENVIRONMENT_FILE: &str = "/oz-warm/environment.json";

/// A warm container waiting for its task.
#[derive(Debug)]
pub(crate) struct WarmContainer {
    /// The warm sandbox's id (`warm-...`): the `oz.dev/task-id` of everything made for it.
    pub warm_id: String,
    /// The container's id.
    pub container: String,
}

/// Removes what a preparation made if it is dropped before [`Unfinished::disarm`] (its future was
/// abandoned: a worker that stops waits for a preparation only so long).
pub(crate) struct Unfinished {
    docker: std::sync::Arc<Docker>,
    warm_id: String,
    container: String,
    armed: bool,
}

impl Unfinished {
    pub(crate) fn new(docker: std::sync::Arc<Docker>, warm_id: &str, container: &str) -> Self {
        Self { docker, warm_id: warm_id.to_owned(), container: container.to_owned(), armed: true }
    }

    /// The preparation ended either way; its own path cleans up.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (docker, warm_id, container) = (self.docker.clone(), self.warm_id.clone(), self.container.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { crate::task::remove_task(&docker, &warm_id, &container).await });
        }
    }
}

/// The task a warm container is made as: `oz agent warm` reading the uploaded environment file.
pub(crate) fn warm_task(warm_id: &str, warm: &WarmSpec) -> TaskSpec {
    warm.stdin_task(warm_id, Path::new(ENVIRONMENT_FILE))
}

/// Puts the environment file into a created container.
pub(crate) async fn upload_environment(docker: &Docker, container: &str, warm: &WarmSpec) -> Result<(), BackendError> {
    let json = serde_json::to_vec(&warm.environment).map_err(|e| setup_error(e.to_string()))?;
    let tar = environment_tar(&json).map_err(|e| setup_error(format!("could not pack the environment: {e}")))?;
    let options = UploadToContainerOptionsBuilder::default().path("/").build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(tar))
        .await
        .map_err(|e| setup_error(format!("could not upload the environment: {}", describe(&e))))
}

fn environment_tar(json: &[u8]) -> std::io::Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder.append_data(&mut dir, format!("{PRIVATE_DIR}/"), std::io::empty())?;
    // Settings only (an environment holds no secret): readable by whatever user the image runs as.
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(json.len() as u64);
    builder.append_data(&mut file, ENVIRONMENT_FILE.trim_start_matches('/'), json)?;
    Ok(Bytes::from(builder.into_inner()?))
}

/// Follows a started warm container's output until its runner says it is ready; an error says why
/// not (its preparation ended: the last lines of its output; or the time ran out).
pub(crate) async fn wait_ready(docker: &Docker, container: &str, within: Duration) -> Result<(), BackendError> {
    let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
    let mut logs = docker.logs(container, Some(options));
    let mut log = oz_core::warm::PreparationLog::default();
    let mut partial = Vec::new();
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            item = logs.next() => match item {
                Some(Ok(LogOutput::StdErr { message } | LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    partial.extend_from_slice(&message);
                    while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        if log.line(String::from_utf8_lossy(&line).trim_end()) {
                            return Ok(());
                        }
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                // The output ends with the container: its preparation failed.
                Some(Err(_)) | None => break,
            },
            () = &mut deadline => {
                return Err(setup_error(format!("the warm sandbox was not ready within {}s", within.as_secs())));
            }
        }
    }
    let code = docker
        .inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.exit_code);
    let how = code.map_or_else(|| "it ended".to_owned(), |c| format!("exit code {c}"));
    Err(setup_error(log.failure(&how)))
}

/// The memory a container uses now, less the page cache it could drop (as `docker stats` shows it).
pub(crate) async fn memory(docker: &Docker, container: &str) -> Option<u64> {
    let options = bollard::query_parameters::StatsOptionsBuilder::default().stream(false).one_shot(true).build();
    let stats = docker.stats(container, Some(options)).next().await?.ok()?;
    let memory = stats.memory_stats?;
    let cache =
        memory.stats.as_ref().and_then(|s| s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied());
    Some(memory.usage?.saturating_sub(cache.unwrap_or(0)))
}

/// Writes the handoff line to an attached warm container's stdin, and closes it.
pub(crate) async fn hand_over(attached: &mut crate::task::Attached, line: &[u8]) -> Result<(), String> {
    let write = async {
        attached.input.write_all(line).await?;
        attached.input.shutdown().await
    };
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .map_err(|_| "the handoff was not taken within 10 s".to_owned())?
        .map_err(|e| format!("could not send the task: {e}"))
}

fn setup_error(message: impl Into<String>) -> BackendError {
    BackendError::new(FailureReason::WorkspaceSetup, message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_environment_tar_holds_a_readable_file_in_its_folder() {
        let tar = environment_tar(b"{}").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(entries, [("oz-warm/".to_owned(), 0o755), ("oz-warm/environment.json".to_owned(), 0o644)]);
    }

    #[test]
    fn a_warm_task_runs_the_warm_runner_on_stdin_in_the_task_workdir() {
        let warm = WarmSpec {
            sandbox: oz_core::task::SandboxSpec { workdir: Some("sub".into()), ..Default::default() },
            entrypoint: "/agent/bin/oz".into(),
            environment: Default::default(),
            git_base_url: None,
            env: vec![("A".into(), "1".into())],
            ready_within: Duration::from_secs(1),
        };
        let spec = warm_task("warm-1", &warm);
        assert_eq!(spec.task_id, "warm-1");
        assert_eq!(
            spec.argv,
            [
                "/agent/bin/oz",
                "agent",
                "warm",
                "--handoff-stdin",
                "--environment-file",
                "/oz-warm/environment.json",
                "--workdir",
                "/workspace/sub"
            ]
        );
        assert_eq!(spec.env, warm.env);
        assert!(spec.secret_input.is_none());
    }
}
