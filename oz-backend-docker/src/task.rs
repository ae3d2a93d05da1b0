//! Running one task's container: create, attach, start, stream output live, wait, detect OOM, stop on
//! cancel or timeout, and remove. Also follows a container found after a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptions,
};
use futures::StreamExt;
use oz_core::backend::{CancelReason, ExitStatus, Failure, TaskDriver, TaskEvent, TaskPhase};
use oz_core::failure::FailureReason;
use tokio::io::AsyncWriteExt;

use crate::engine::describe;

fn failure(reason: FailureReason, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into() }
}

/// How a followed container should be treated.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The task.
    pub task_id: String,
    /// The id that labels what was made for the task (`oz.dev/task-id`): the task's own, or the warm
    /// sandbox's it was handed to; all of it is removed at the end.
    pub made_for: String,
    /// The container id.
    pub container: String,
    /// Bytes for stdin, if the task has any (only for a fresh start).
    pub stdin: Option<bytes::Bytes>,
    /// When to stop it as timed out.
    pub deadline: Option<SystemTime>,
    /// Whether to remove it at the end.
    pub cleanup: bool,
    /// How long SIGTERM has before SIGKILL.
    pub stop_grace: Duration,
    /// Whether to start it (a fresh task) or only follow it (a reattached one).
    pub start: bool,
}

/// Attaches to the container (starting it if asked), streams its output as events, and finishes the
/// driver with its outcome. Everything the task made is removed at the end when `cleanup` is set.
pub async fn follow(docker: Arc<Docker>, driver: TaskDriver, plan: Follow) {
    follow_attached(docker, driver, plan, None).await;
}

/// [`follow`], on an attachment made already (a warm container, attached for its handoff).
pub async fn follow_attached(docker: Arc<Docker>, driver: TaskDriver, plan: Follow, attached: Option<Attached>) {
    let mut started_at = None;
    let (exit, failure) = run(&docker, &driver, &plan, &mut started_at, attached).await;
    if plan.cleanup {
        driver.emit(TaskEvent::Phase(TaskPhase::CleaningUp)).await;
        remove_task(&docker, &plan.made_for, &plan.container).await;
    }
    driver.finish(exit, failure, started_at);
}

/// A container's attached streams.
pub type Attached = bollard::container::AttachContainerResults;

/// Attaches to a container's output (and its stdin if asked), before it starts or while it runs.
pub async fn attach(docker: &Docker, container: &str, stdin: bool) -> Result<Attached, bollard::errors::Error> {
    let options = AttachContainerOptionsBuilder::default()
        .stdin(stdin)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    docker.attach_container(container, Some(options)).await
}

/// Removes a task's container, anything else labelled with its id (an egress proxy), and its networks.
pub async fn remove_task(docker: &Docker, task_id: &str, container: &str) {
    remove(docker, container).await;
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_owned(), vec![format!("{}={task_id}", oz_core::task::labels::TASK_ID)]);
    let options =
        bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    if let Ok(found) = docker.list_containers(Some(options)).await {
        for c in found {
            if let Some(id) = c.id {
                remove(docker, &id).await;
            }
        }
    }
    crate::network::remove_networks(docker, task_id).await;
}

/// Removes a container and its anonymous volumes, tolerating one already gone.
pub async fn remove(docker: &Docker, container: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(container, Some(options)).await {
        Err(e) if !crate::engine::is_not_found(&e) => {
            tracing::warn!(container, "could not remove the container: {}", describe(&e));
        }
        _ => {}
    }
}

async fn run(
    docker: &Docker,
    driver: &TaskDriver,
    plan: &Follow,
    started_at: &mut Option<SystemTime>,
    attached: Option<Attached>,
) -> (Option<ExitStatus>, Option<Failure>) {
    let id = plan.container.as_str();
    // Attach before starting so not a byte of output is missed.
    // A container found after a restart may have exited already: it cannot be attached to, but its
    // exit status is still there to report.
    let attached = match attached {
        Some(a) => Some(a),
        None => match attach(docker, id, plan.stdin.is_some()).await {
            Ok(a) => Some(a),
            Err(_) if !plan.start => None,
            Err(e) => {
                let message = format!("could not attach: {}", describe(&e));
                return (None, Some(failure(FailureReason::ContainerStart, message)));
            }
        },
    };
    if plan.start {
        driver.emit(TaskEvent::Phase(TaskPhase::Starting)).await;
        if let Err(e) = docker.start_container(id, None::<bollard::query_parameters::StartContainerOptions>).await {
            let message = describe(&e);
            let reason =
                if message.contains("executable file not found") || message.contains("no such file or directory") {
                    FailureReason::AgentInvocation
                } else {
                    FailureReason::ContainerStart
                };
            return (None, Some(failure(reason, format!("could not start the container: {message}"))));
        }
    }
    *started_at = Some(SystemTime::now());
    driver.emit(TaskEvent::Phase(TaskPhase::Running)).await;

    let (input, output) = match attached {
        Some(a) => (Some(a.input), Some(a.output)),
        None => (None, None),
    };
    if let (Some(mut input), Some(stdin)) = (input, plan.stdin.clone()) {
        tokio::spawn(async move {
            let _ = input.write_all(&stdin).await;
            let _ = input.shutdown().await;
        });
    }
    let events = driver.event_sender();
    let pump = async move {
        let Some(mut output) = output else { return };
        while let Some(item) = output.next().await {
            let event = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => TaskEvent::Stdout(message),
                Ok(LogOutput::StdErr { message }) => TaskEvent::Stderr(message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(_) => break,
            };
            // Awaiting the consumer is the backpressure: nothing piles up here.
            if !events.emit(event).await {
                break;
            }
        }
    };
    let wait = async {
        let mut stream = docker.wait_container(id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // A non-zero exit comes back as this error: the code is in it.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(describe(&e)),
            None => Err("the engine closed the wait without a status".to_owned()),
        }
    };
    let deadline = plan.deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(pump, wait, timeout);
    let mut pumped = false;
    let mut stop: Option<FailureReason> = None;
    let status = loop {
        tokio::select! {
            () = &mut pump, if !pumped => pumped = true,
            status = &mut wait => break status,
            reason = driver.cancelled(), if stop.is_none() => {
                let reason = match reason { CancelReason::Shutdown => FailureReason::GracefulShutdown, _ => FailureReason::TaskCancelled };
                stop = Some(reason);
                stop_container(docker, driver, id, plan.stop_grace).await;
            }
            () = &mut timeout, if stop.is_none() => {
                stop = Some(FailureReason::TaskTimeout);
                stop_container(docker, driver, id, plan.stop_grace).await;
            }
        }
    };
    // The output stream ends shortly after the process: deliver the rest before reporting.
    if !pumped {
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut pump).await;
    }
    let code = match status {
        Ok(code) => i32::try_from(code).unwrap_or(i32::MAX),
        Err(message) => {
            return (
                None,
                Some(failure(FailureReason::ContainerWait, format!("waiting for the container failed: {message}"))),
            );
        }
    };
    let exit = ExitStatus::code(code);
    driver.emit(TaskEvent::Exited(exit)).await;
    if let Some(reason) = stop {
        let message = match reason {
            FailureReason::TaskTimeout => "the task ran past its timeout and was stopped".to_owned(),
            FailureReason::GracefulShutdown => "the worker shut down".to_owned(),
            _ => "the task was cancelled".to_owned(),
        };
        return (Some(exit), Some(failure(reason, message)));
    }
    // A process the kernel killed for memory, and the task failed: that is why.
    let oom = code != 0
        && docker
            .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
    if oom {
        return (
            Some(exit),
            Some(failure(FailureReason::ContainerOom, "the task ran out of memory and was killed (OOM)")),
        );
    }
    if code == 0 {
        (Some(exit), None)
    } else if code == 127 {
        (Some(exit), Some(failure(FailureReason::ContainerExit, "the task's command was not found (exit 127)")))
    } else {
        (Some(exit), Some(failure(FailureReason::ContainerExit, format!("the task exited with code {code}"))))
    }
}

async fn stop_container(docker: &Docker, driver: &TaskDriver, id: &str, grace: Duration) {
    driver.emit(TaskEvent::Phase(TaskPhase::Stopping)).await;
    let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
    let options = StopContainerOptionsBuilder::default().t(seconds).build();
    if let Err(e) = docker.stop_container(id, Some(options)).await {
        tracing::warn!(container = id, "could not stop the container: {}", describe(&e));
    }
}
