//! [`DockerBackend`]: the `Backend` implementation tying images, the sidecar, containers and
//! recovery together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use oz_core::backend::{
    Backend, BackendError, Failure, PreparedSandbox, RecoveredTask, RecoveryAction, TaskDriver, TaskEvent, TaskHandle,
    TaskPhase,
};
use oz_core::egress::EgressPolicy;
use oz_core::failure::FailureReason;
use oz_core::image::{ImageRef, resolve_image};
use oz_core::task::{EnvEntry, NetworkMode, TaskSpec, labels};
use oz_core::warm::{Handoff, WarmSpec};

use crate::config::{DefaultNetwork, DockerConfig};
use crate::container::{
    CLEANUP_LABEL, ContainerInputs, DEADLINE_LABEL, WARM_LABEL, container_body, container_name, parse_assigned_name,
};
use crate::engine::describe;
use crate::error::DockerError;
use crate::images::RegistryAuth;
use crate::sidecar::{SidecarContent, SidecarVolumes};
use crate::task::{Follow, follow, follow_attached};
use crate::warm::WarmContainer;

/// Runs tasks in containers on a Docker engine.
pub struct DockerBackend {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Arc<Docker>,
    config: DockerConfig,
    /// The configured `environment`, resolved against the worker's own at start-up.
    environment: Vec<(String, String)>,
    auth: RegistryAuth,
    sidecar: Option<SidecarContent>,
    volumes: SidecarVolumes,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend").field("worker_id", &self.inner.config.worker_id).finish_non_exhaustive()
    }
}

impl DockerBackend {
    /// Connects to the engine (negotiating the API version and checking its platform), reads the
    /// registry credentials and the sidecar content.
    pub async fn connect(config: DockerConfig) -> Result<Self, DockerError> {
        config.validate()?;
        let environment = EnvEntry::resolve_all(&config.environment, "environment", |k| std::env::var(k).ok())
            .map_err(DockerError::invalid)?;
        let docker = crate::engine::connect(&config).await?;
        let auth = RegistryAuth::load(config.docker_config.as_deref())?;
        let sidecar = match &config.sidecar_binary {
            Some(binary) => {
                let ca = config.sidecar_ca_bundle.clone().or_else(|| {
                    let host = std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
                    host.exists().then_some(host)
                });
                Some(SidecarContent::from_binary(binary, ca.as_deref())?)
            }
            None => None,
        };
        let volumes = SidecarVolumes::new(config.worker_id.clone());
        let inner = Inner { docker: Arc::new(docker), config, environment, auth, sidecar, volumes };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The engine client.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// The sidecar content, if configured.
    pub fn sidecar(&self) -> Option<&SidecarContent> {
        self.inner.sidecar.as_ref()
    }

    /// Removes the sidecar volumes this worker made for other content that no container uses.
    pub async fn collect_garbage(&self) -> Vec<String> {
        let keep = self.inner.sidecar.as_ref().map(|s| s.volume_name());
        crate::sidecar::collect_garbage(&self.inner.docker, &self.inner.config.worker_id, keep.as_deref()).await
    }

    /// Containers labelled with this worker id (running or not).
    pub async fn own_containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        list_labelled(&self.inner.docker, &format!("{}={}", labels::WORKER_ID, self.inner.config.worker_id)).await
    }
}

async fn list_labelled(docker: &Docker, label: &str) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert("label".to_owned(), vec![label.to_owned()]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// The network a task's container joins.
enum NetworkChoice {
    /// A network mode as is (`none`, `bridge`, a name).
    Plain(String),
    /// An internal network of its own behind an egress proxy with this policy.
    Isolated(EgressPolicy),
}

impl Inner {
    fn network_for(&self, spec: &TaskSpec) -> NetworkChoice {
        match &spec.sandbox.network {
            NetworkMode::None => NetworkChoice::Plain("none".into()),
            NetworkMode::Isolated { allowed_domains } => NetworkChoice::Isolated(self.egress_policy(allowed_domains)),
            NetworkMode::Default => match &self.config.network {
                DefaultNetwork::None => NetworkChoice::Plain("none".into()),
                DefaultNetwork::Bridge => NetworkChoice::Plain("bridge".into()),
                DefaultNetwork::Named(n) => NetworkChoice::Plain(n.clone()),
                DefaultNetwork::Isolated => NetworkChoice::Isolated(self.egress_policy(&self.config.allowed_domains)),
            },
        }
    }

    fn egress_policy(&self, domains: &[String]) -> EgressPolicy {
        EgressPolicy { domains: domains.to_vec(), allowed_ranges: self.config.allowed_ranges.clone() }
    }

    /// Everything before the container starts; returns the container id. `warm_id`: the container
    /// is a warm sandbox with this id.
    async fn prepare(
        &self,
        spec: &TaskSpec,
        driver: &TaskDriver,
        warm_id: Option<&str>,
    ) -> Result<String, BackendError> {
        let image = resolve_image(
            spec.sandbox.image.as_ref().map(ImageRef::to_string).as_deref(),
            self.config.default_image.as_ref(),
        )
        .map_err(|e| BackendError::new(FailureReason::InvalidImage, e.to_string()))?;
        let network_choice = self.network_for(spec);
        let events = driver.event_sender();
        driver.emit(TaskEvent::Phase(TaskPhase::PullingImage)).await;
        let inspected =
            crate::images::ensure(&self.docker, &image, self.config.pull_policy, &self.auth, &events).await?;
        let image_path = crate::images::image_path(&inspected);
        let sidecar_volume = match &self.sidecar {
            Some(content) => {
                driver.emit(TaskEvent::Phase(TaskPhase::PreparingSidecar)).await;
                Some(self.volumes.ensure(&self.docker, content, &image, &events).await?)
            }
            None => None,
        };
        if driver.cancel_requested().is_some() {
            return Err(BackendError::new(FailureReason::TaskCancelled, "cancelled before the container was created"));
        }
        crate::container::ensure_cache_folder(spec, &self.config).map_err(|e| {
            let message = format!("could not make the package cache folder: {e}");
            BackendError::new(FailureReason::WorkspaceSetup, message)
        })?;
        driver.emit(TaskEvent::Phase(TaskPhase::Preparing)).await;
        let (network, extra_env) = match network_choice {
            NetworkChoice::Plain(plain) => (plain, Vec::new()),
            NetworkChoice::Isolated(policy) => {
                let name = crate::network::create(
                    &self.docker,
                    spec,
                    &self.config,
                    &image,
                    sidecar_volume.as_deref(),
                    &policy,
                )
                .await?;
                (name, crate::network::proxy_env())
            }
        };
        let deadline =
            spec.timeout.map(|t| (SystemTime::now() + t).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
        let inputs = ContainerInputs {
            image: &image,
            image_path,
            sidecar_volume: sidecar_volume.as_deref(),
            sidecar_has_ca_bundle: self.sidecar.as_ref().is_some_and(SidecarContent::has_ca_bundle),
            network,
            deadline,
            configured_env: &self.environment,
            extra_env,
            warm_id,
        };
        let body = container_body(spec, &self.config, &inputs);
        let options =
            bollard::query_parameters::CreateContainerOptionsBuilder::default().name(&container_name(spec)).build();
        let created = self.docker.create_container(Some(options), body).await.map_err(|e| {
            let message = describe(&e);
            let reason = if message.contains("No such image") {
                FailureReason::InvalidImage
            } else {
                FailureReason::ContainerCreate
            };
            BackendError::new(reason, format!("could not create the container: {message}"))
        })?;
        Ok(created.id)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn launch(&self, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        spec.validate().map_err(|e| BackendError::new(FailureReason::ContainerCreate, e.to_string()))?;
        let stdin =
            spec.stdin_delivery().map_err(|e| BackendError::new(FailureReason::ContainerCreate, e.to_string()))?.stdin;
        let inner = self.inner.clone();
        let (handle, driver) = TaskHandle::channel(spec.task_id.clone());
        let span = tracing::info_span!("docker_task", task_id = %spec.task_id, worker_id = %inner.config.worker_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let container = match inner.prepare(&spec, &driver, None).await {
                    Ok(id) => id,
                    Err(e) => {
                        // Something may exist if preparation failed late: remove it all.
                        crate::task::remove_task(&inner.docker, &spec.task_id, &container_name(&spec)).await;
                        driver.finish(None, Some(Failure { reason: e.reason, message: e.message }), None);
                        return;
                    }
                };
                let plan = Follow {
                    task_id: spec.task_id.clone(),
                    made_for: spec.task_id.clone(),
                    container,
                    stdin,
                    deadline: spec.timeout.map(|t| SystemTime::now() + t),
                    cleanup: spec.cleanup && inner.config.cleanup,
                    stop_grace: inner.config.stop_grace,
                    start: true,
                };
                follow(inner.docker.clone(), driver, plan).await;
            },
            span,
        ));
        Ok(handle)
    }

    fn warm_sandboxes(&self) -> bool {
        true
    }

    /// A warm container (`oz-warm-<id>`), made as a task's would be, with `oz agent warm` waiting on
    /// its stdin; returned once its runner says it is ready.
    async fn prepare(&self, warm: WarmSpec) -> Result<PreparedSandbox, BackendError> {
        let inner = &self.inner;
        let warm_id = format!("warm-{}", uuid::Uuid::new_v4().simple());
        let spec = crate::warm::warm_task(&warm_id, &warm);
        spec.validate().map_err(|e| BackendError::new(FailureReason::ContainerCreate, e.to_string()))?;
        let span = tracing::info_span!("docker_warm", warm = %warm_id, worker_id = %inner.config.worker_id);
        // Dropped half-way (a worker shutting down stops waiting), what was made is removed.
        let mut unfinished = crate::warm::Unfinished::new(inner.docker.clone(), &warm_id, &container_name(&spec));
        let made = tracing::Instrument::instrument(
            async {
                // Nobody follows a warm sandbox's preparation: its events go nowhere.
                let (_, driver) = TaskHandle::channel(warm_id.clone());
                let container = inner.prepare(&spec, &driver, Some(&warm_id)).await?;
                crate::warm::upload_environment(&inner.docker, &container, &warm).await?;
                inner
                    .docker
                    .start_container(&container, None::<bollard::query_parameters::StartContainerOptions>)
                    .await
                    .map_err(|e| {
                        BackendError::new(
                            FailureReason::ContainerStart,
                            format!("could not start the warm container: {}", describe(&e)),
                        )
                    })?;
                crate::warm::wait_ready(&inner.docker, &container, warm.ready_within).await?;
                Ok::<_, BackendError>(container)
            },
            span,
        );
        let made = tokio::time::timeout(warm.ready_within, made).await.unwrap_or_else(|_| {
            let message = format!("the warm sandbox was not ready within {}s", warm.ready_within.as_secs());
            Err(BackendError::new(FailureReason::WorkspaceSetup, message))
        });
        unfinished.disarm();
        match made {
            Ok(container) => {
                let state = WarmContainer { warm_id: warm_id.clone(), container };
                Ok(PreparedSandbox { id: warm_id, spec: warm.sandbox, state: Box::new(state) })
            }
            Err(e) => {
                crate::task::remove_task(&inner.docker, &warm_id, &container_name(&spec)).await;
                Err(e)
            }
        }
    }

    /// Renames the container to the task's [`crate::container::assigned_name`], attaches to it, and
    /// writes the task (with its token) to its stdin; from then on it is followed as a task's.
    async fn launch_prepared(&self, prepared: PreparedSandbox, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        let inner = self.inner.clone();
        let refuse = |message: String| BackendError::new(FailureReason::ContainerStart, message);
        let Ok(warm) = prepared.state.downcast::<WarmContainer>() else {
            return Err(refuse("not a sandbox this backend prepared".into()));
        };
        let warm = *warm;
        let gone = |warm: WarmContainer, message: String| {
            let docker = inner.docker.clone();
            async move {
                crate::task::remove_task(&docker, &warm.warm_id, &warm.container).await;
                Err(refuse(message))
            }
        };
        if spec.sandbox != prepared.spec {
            return gone(warm, "the task asks for another sandbox than the one prepared".into()).await;
        }
        if let Err(e) = spec.validate() {
            return gone(warm, e.to_string()).await;
        }
        let handoff = Handoff {
            argv: spec.argv.clone(),
            env: crate::container::task_env(&spec, &inner.environment),
            secret_input: spec.secret_input.clone(),
            // The engine's attach says whether the line got through.
            receipt: None,
        };
        let line = match handoff.to_line() {
            Ok(line) => line,
            // Too large: the runner would refuse it and end; the task goes cold instead.
            Err(message) => return gone(warm, message).await,
        };
        let name = crate::container::assigned_name(&spec.task_id, spec.execution_id.as_deref());
        let rename = bollard::query_parameters::RenameContainerOptionsBuilder::default().name(&name).build();
        let (inspected, renamed, attached) = tokio::join!(
            inner.docker.inspect_container(&warm.container, None::<bollard::query_parameters::InspectContainerOptions>),
            inner.docker.rename_container(&warm.container, rename),
            crate::task::attach(&inner.docker, &warm.container, true),
        );
        let running = inspected.ok().and_then(|c| c.state).and_then(|s| s.running).unwrap_or(false);
        let mut attached = match (running, renamed, attached) {
            (true, Ok(()), Ok(attached)) => attached,
            (false, ..) => return gone(warm, "the warm container is no longer running".into()).await,
            (_, Err(e), _) => return gone(warm, format!("could not rename it: {}", describe(&e))).await,
            (_, _, Err(e)) => return gone(warm, format!("could not attach to it: {}", describe(&e))).await,
        };
        if let Err(message) = crate::warm::hand_over(&mut attached, &line).await {
            // It may have read the token: it goes, never to serve another task.
            return gone(warm, message).await;
        }
        let (handle, driver) = TaskHandle::channel(spec.task_id.clone());
        let plan = Follow {
            task_id: spec.task_id.clone(),
            made_for: warm.warm_id.clone(),
            container: warm.container,
            stdin: None,
            deadline: spec.timeout.map(|t| SystemTime::now() + t),
            cleanup: spec.cleanup && inner.config.cleanup,
            stop_grace: inner.config.stop_grace,
            start: false,
        };
        let span = tracing::info_span!("docker_task", task_id = %spec.task_id, warm = %warm.warm_id);
        tokio::spawn(tracing::Instrument::instrument(
            follow_attached(inner.docker.clone(), driver, plan, Some(attached)),
            span,
        ));
        Ok(handle)
    }

    /// The id of the image the sandbox's tag (or the default image) names on the engine now.
    async fn sandbox_revision(&self, sandbox: &oz_core::task::SandboxSpec) -> Option<String> {
        let image = resolve_image(
            sandbox.image.as_ref().map(ImageRef::to_string).as_deref(),
            self.inner.config.default_image.as_ref(),
        )
        .ok()?;
        crate::images::inspect(&self.inner.docker, &image).await.ok()??.id
    }

    async fn sandbox_memory(&self, prepared: &PreparedSandbox) -> Option<u64> {
        let warm = prepared.state.downcast_ref::<WarmContainer>()?;
        crate::warm::memory(&self.inner.docker, &warm.container).await
    }

    async fn discard(&self, prepared: PreparedSandbox) -> Result<(), BackendError> {
        if let Ok(warm) = prepared.state.downcast::<WarmContainer>() {
            crate::task::remove_task(&self.inner.docker, &warm.warm_id, &warm.container).await;
        }
        Ok(())
    }

    async fn recover(&self) -> Result<Vec<RecoveredTask>, BackendError> {
        let inner = &self.inner;
        let found = self
            .own_containers()
            .await
            .map_err(|e| BackendError::new(FailureReason::ContainerWait, format!("could not list containers: {e}")))?;
        let mut recovered = Vec::new();
        // The ids labelling what the recovered tasks made (a warm one's are its sandbox's).
        let mut kept = std::collections::HashSet::new();
        for container in &found {
            let labels = container.labels.clone().unwrap_or_default();
            let Some(id) = container.id.clone() else { continue };
            if labels.contains_key(crate::network::ROLE_LABEL) {
                // An egress proxy goes with its task; an orphan one is removed below.
                continue;
            }
            let Some(made_for) = labels.get(labels::TASK_ID).cloned() else {
                if labels.contains_key(crate::sidecar::DIGEST_LABEL) {
                    // A sidecar probe its worker was killed in the middle of.
                    crate::task::remove(&inner.docker, &id).await;
                }
                continue;
            };
            let (task_id, execution_id) = match labels.get(WARM_LABEL) {
                None => (made_for.clone(), labels.get(labels::EXECUTION_ID).cloned()),
                Some(warm_id) => {
                    let assigned = container.names.iter().flatten().find_map(|n| parse_assigned_name(n));
                    match assigned {
                        Some(ids) => ids,
                        None => {
                            // A warm sandbox that never got a task: it goes with what it made.
                            tracing::info!(warm = %warm_id, "removing a warm container left by an earlier run");
                            crate::task::remove_task(&inner.docker, &made_for, &id).await;
                            continue;
                        }
                    }
                }
            };
            let cleanup = labels.get(CLEANUP_LABEL).is_none_or(|v| v == "true");
            let deadline = labels
                .get(DEADLINE_LABEL)
                .and_then(|d| d.parse::<u64>().ok())
                .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
            use bollard::models::ContainerSummaryStateEnum as State;
            let running = container.state == Some(State::RUNNING);
            let created_only = container.state == Some(State::CREATED);
            if created_only {
                // Never started: it had not begun; remove it and say so.
                crate::task::remove_task(&inner.docker, &made_for, &id).await;
                recovered.push(RecoveredTask {
                    task_id,
                    execution_id,
                    action: RecoveryAction::NotStarted(
                        "the worker restarted before the task's container started; it was removed".into(),
                    ),
                });
                continue;
            }
            // Running: follow it to its end. Exited meanwhile: report how it ended. A handed-over warm
            // container whose worker died between the rename and the handoff still has its stdin
            // open: attach it and close it, so its runner has its task or ends ("stdin closed").
            let close_stdin = labels.contains_key(WARM_LABEL) && running;
            let (handle, driver) = TaskHandle::channel(task_id.clone());
            let plan = Follow {
                task_id: task_id.clone(),
                made_for: made_for.clone(),
                container: id,
                stdin: close_stdin.then(bytes::Bytes::new),
                deadline,
                cleanup,
                stop_grace: inner.config.stop_grace,
                start: false,
            };
            tracing::info!(task_id, running, "reattaching to a container left by an earlier run");
            tokio::spawn(follow(inner.docker.clone(), driver, plan));
            kept.insert(made_for);
            recovered.push(RecoveredTask { task_id, execution_id, action: RecoveryAction::Reattached(handle) });
        }
        // Proxies and networks whose task container is gone.
        for container in found {
            let labels = container.labels.unwrap_or_default();
            if let (Some(made_for), Some(id)) = (labels.get(labels::TASK_ID), container.id)
                && labels.contains_key(crate::network::ROLE_LABEL)
                && !kept.contains(made_for)
            {
                crate::task::remove_task(&inner.docker, made_for, &id).await;
            }
        }
        self.collect_garbage().await;
        Ok(recovered)
    }

    fn preserves_tasks_on_shutdown(&self) -> bool {
        true
    }
}
