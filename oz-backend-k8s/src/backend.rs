//! [`KubernetesBackend`]: a Job per task, followed by watches (never polling loops), logs streamed
//! live from the task container, cancellation by deleting the Job (foreground), and reattachment to
//! the Jobs a previous process of this worker left.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::{WatchStreamExt, watcher};
use oz_core::backend::{
    Backend, BackendError, CancelReason, ExitStatus, Failure, PreparedSandbox, RecoveredTask, RecoveryAction,
    TaskDriver, TaskEvent, TaskHandle, TaskPhase,
};
use oz_core::failure::FailureReason;
use oz_core::task::{TaskSpec, labels};
use oz_core::warm::{Handoff, WarmSpec};

use crate::config::KubernetesConfig;
use crate::error::KubernetesError;
use crate::manifest::{self, TASK_CONTAINER};
use crate::status::{Observed, observe_job, observe_pod};

/// The preflight's exit code when the git mirrors claim is not the worker's mirrors folder.
const MIRROR_CHECK_FAILED: i32 = 3;

/// Runs tasks as Jobs in a namespace.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: kube::Client,
    config: Arc<KubernetesConfig>,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend").field("namespace", &self.config.namespace).finish_non_exhaustive()
    }
}

impl KubernetesBackend {
    /// A backend over a client (in-cluster, a kubeconfig, or a test server); checks the
    /// configuration and resolves its `environment` (see [`KubernetesConfig::validate_and_resolve`]).
    pub fn new(client: kube::Client, mut config: KubernetesConfig) -> Result<Self, KubernetesError> {
        config.validate_and_resolve()?;
        Ok(Self { client, config: Arc::new(config) })
    }

    /// A backend with the client from `config.kubeconfig`, else the default loading rules:
    /// in-cluster, else `KUBECONFIG`, else `~/.kube/config`.
    pub async fn connect(mut config: KubernetesConfig) -> Result<Self, KubernetesError> {
        // A bad configuration is named before any cluster is asked for.
        config.validate_and_resolve()?;
        let client = match &config.kubeconfig {
            Some(path) => {
                let kubeconfig_error = |source| KubernetesError::Kubeconfig { path: path.clone(), source };
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
                let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(kubeconfig_error)?;
                kube::Client::try_from(client_config).map_err(KubernetesError::Client)?
            }
            None => kube::Client::try_default().await.map_err(KubernetesError::Client)?,
        };
        Self::new(client, config)
    }

    /// Checks, before taking tasks, that tasks can run: that this worker may create, watch and delete
    /// Jobs and read Pod logs in its namespace, and that the init-container pattern works (the sidecar
    /// image's `/agent` is copied into the Pod and the preflight image can read it). Runs one small Job
    /// (`preflight_image`, the sidecar init container) and removes it. The error names what is missing.
    pub async fn preflight(&self) -> Result<(), KubernetesError> {
        let id = format!("preflight-{}", uuid_suffix());
        let mut script = "test -x /agent/bin/oz && echo preflight-ok".to_owned();
        if let Some(check) = &self.config.git_mirror_check {
            // The worker's mirrors folder must be what the claim holds.
            let file = format!("{}/{}", oz_core::task::SANDBOX_GIT_MIRRORS, crate::config::MIRROR_CHECK_FILE);
            script.push_str(&format!(" && {{ grep -qx {check} {file} || exit {MIRROR_CHECK_FAILED}; }}"));
        }
        let argv = vec!["/bin/sh".into(), "-c".into(), script];
        let mut spec = TaskSpec::new(id, argv);
        spec.sandbox.image = oz_core::image::ImageRef::parse(&self.config.preflight_image).ok();
        spec.sandbox.resources = self.config.preflight_resources.clone();
        let fail = KubernetesError::Preflight;
        let handle = self.launch(spec).await.map_err(|e| fail(e.message))?;
        let limit = self.config.preflight_timeout;
        let outcome = tokio::time::timeout(limit, handle.wait())
            .await
            .map_err(|_| fail(format!("the preflight Job did not finish within {}s", limit.as_secs())))?;
        let exit_code = outcome.exit.and_then(|e| e.code);
        match outcome.failure {
            None => Ok(()),
            Some(f) => Err(fail(match f.reason {
                FailureReason::ImagePull | FailureReason::InvalidImage => format!(
                    "cannot pull the preflight image {} or the sidecar image {}: {}",
                    self.config.preflight_image, self.config.sidecar_image, f.message
                ),
                FailureReason::InitContainer => format!(
                    "the sidecar init container failed (does {} contain /agent and cp?): {}",
                    self.config.sidecar_image, f.message
                ),
                FailureReason::JobFailed if exit_code == Some(MIRROR_CHECK_FAILED) => format!(
                    "the claim {} does not hold the worker's git_mirrors folder: mount it there in the worker's Pod",
                    self.config.git_mirror_claim.as_deref().unwrap_or_default()
                ),
                FailureReason::JobFailed => format!("the sidecar was not usable in the task container: {}", f.message),
                _ => f.message,
            })),
        }
    }

    fn policies(&self) -> Api<k8s_openapi::api::networking::v1::NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn secrets(&self) -> Api<k8s_openapi::api::core::v1::Secret> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Removes a task's secret input (named like its Job), if it has one.
    async fn delete_secret_input(&self, name: &str) {
        match self.secrets().delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(secret = name, "could not delete the task's secret input: {e}"),
        }
    }

    fn events(&self) -> Api<Event> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    async fn delete_job(&self, name: &str) {
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() };
        match self.jobs().delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(job = name, "could not delete the Job: {e}"),
        }
        self.delete_secret_input(name).await;
        if self.config.egress_policy.is_some() {
            match self.policies().delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!(policy = name, "could not delete the NetworkPolicy: {e}"),
            }
        }
    }

    /// A claimed warm Pod found after a restart: its handoff may never have come (the worker died
    /// between the claim and the attach), so its stdin is closed (a runner still waiting reads the
    /// end of its input and exits). Returns the line that ends its preparation in its log: its
    /// receipt's, else (no annotation) the ready line.
    async fn reclaim(&self, warm_id: &str) -> String {
        let selector = crate::warm::selector(&self.config.worker_id, warm_id);
        let pods = match self.pods().list(&ListParams::default().labels(&selector)).await {
            Ok(pods) => pods.items,
            Err(e) => {
                tracing::warn!(
                    warm = warm_id,
                    "could not list a claimed warm Pod (its runner may wait until its deadline): {e}"
                );
                Vec::new()
            }
        };
        let receipt =
            pods.iter().find_map(|p| p.metadata.annotations.as_ref()?.get(crate::warm::RECEIPT_ANNOTATION).cloned());
        let names: Vec<String> = pods.into_iter().filter_map(|p| p.metadata.name).collect();
        let api = self.pods();
        futures::future::join_all(names.iter().map(|pod| crate::warm::close_stdin(&api, pod))).await;
        match receipt {
            Some(receipt) => format!("{} {receipt}", oz_core::warm::TAKEN_LINE),
            None => oz_core::warm::READY_LINE.to_owned(),
        }
    }

    /// Creates a task's Job, with its secret input before it and its egress policy after it (a
    /// warm sandbox's selects its Pod by warm id); returns the Job's name. Nothing is left when it fails.
    async fn create_job(&self, spec: &TaskSpec, job: &Job, warm: bool) -> Result<String, BackendError> {
        let name = manifest::job_name(spec);
        let fail = |message: String| BackendError::new(FailureReason::JobCreate, message);
        // The egress policy first: it selects the Pod by label, so it applies from the Pod's start.
        if let Some(policy) = &self.config.egress_policy {
            let np = manifest::network_policy(spec, &self.config, policy, warm).map_err(|e| fail(e.to_string()))?;
            self.policies()
                .create(&PostParams::default(), &np)
                .await
                .map_err(|e| fail(format!("could not create the egress NetworkPolicy: {e}")))?;
        }
        let made = async {
            let secret = manifest::secret_input(spec, &self.config).map_err(|e| fail(e.to_string()))?;
            if let Some(secret) = &secret {
                self.secrets().create(&PostParams::default(), secret).await.map_err(|e| {
                    fail(match &e {
                        kube::Error::Api(s) if s.code == 403 => format!(
                            "not allowed to create Secrets in namespace {} (the Role needs secrets create, for the task's workload token): {}",
                            self.config.namespace, s.message
                        ),
                        other => format!("could not create the task's secret input: {other}"),
                    })
                })?;
            }
            self.jobs().create(&PostParams::default(), job).await.map_err(|e| {
                fail(match &e {
                    kube::Error::Api(s) if s.code == 403 => format!(
                        "not allowed to create Jobs in namespace {} (the Role needs batch/jobs create): {}",
                        self.config.namespace, s.message
                    ),
                    kube::Error::Api(s) if s.code == 409 => format!("a Job named {name} already exists"),
                    other => format!("could not create the Job: {other}"),
                })
            })
        };
        if let Err(e) = made.await {
            // Nothing is left: the policy and the secret input go (each is named like the Job).
            self.delete_job(&name).await;
            return Err(e);
        }
        Ok(name)
    }

    /// Follows a task's Job and Pod to the end. A warm Pod's log starts with its preparation: the
    /// task's output is what follows the line `preparation_ends` (the runner's receipt).
    async fn follow(self, driver: TaskDriver, job: String, plan: FollowPlan) {
        let FollowPlan { cleanup, has_timeout, preparation_ends } = plan;
        let (exit, mut failure, started) = self.watch_to_end(&driver, &job, preparation_ends).await;
        // The secret input is of no use once the task has ended, whether or not its Job is kept.
        self.delete_secret_input(&job).await;
        // The deadline came from the task's own timeout: say so in Oz's terms.
        if has_timeout && let Some(f) = failure.as_mut().filter(|f| f.reason == FailureReason::ActiveDeadline) {
            f.reason = FailureReason::TaskTimeout;
            f.message = "the task ran past its timeout and its Job was stopped".into();
        }
        // A Job whose Pod can never finish (no image, no node, a failed init) is removed even with
        // cleanup off; one left at shutdown is not: the next process reattaches to it.
        let delete = match failure.as_ref().map(|f| f.reason) {
            Some(FailureReason::GracefulShutdown) => false,
            Some(
                FailureReason::ImagePull
                | FailureReason::InvalidImage
                | FailureReason::Unschedulable
                | FailureReason::ContainerCreate
                | FailureReason::InitContainer
                | FailureReason::SetupCommand,
            ) => true,
            _ => cleanup,
        };
        if delete {
            driver.emit(TaskEvent::Phase(TaskPhase::CleaningUp)).await;
            self.delete_job(&job).await;
        }
        driver.finish(exit, failure, started);
    }

    async fn watch_to_end(
        &self,
        driver: &TaskDriver,
        job: &str,
        preparation_ends: Option<String>,
    ) -> (Option<ExitStatus>, Option<Failure>, Option<SystemTime>) {
        enum Update {
            Pod(Box<Pod>),
            Job(Box<Job>),
            /// The Pod is gone; its last state tells how it ended, if it did.
            PodDeleted(Box<Pod>),
        }
        // By the Job's name, never by task id: a warm Pod claimed for this task and being removed
        // (its handoff failed, the task went cold) carries the task's id too.
        let selector = format!("{},job-name={job}", manifest::worker_selector(&self.config.worker_id));
        // Transient API errors and 410 Gone are the watcher's to retry (with backoff); they never fail a task.
        let pods = watcher(self.pods(), watcher::Config::default().labels(&selector)).default_backoff().filter_map(
            |e| async move {
                match e {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => Some(Update::Pod(Box::new(p))),
                    Ok(watcher::Event::Delete(p)) => Some(Update::PodDeleted(Box::new(p))),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!("pod watch: {e}; retrying");
                        None
                    }
                }
            },
        );
        let by_name = format!("metadata.name={job}");
        let jobs = watcher(self.jobs(), watcher::Config::default().fields(&by_name)).default_backoff().filter_map(
            |e| async move {
                match e {
                    // A Job's deletion says nothing the Pod's does not (its Pod goes first or with it).
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => Some(Update::Job(Box::new(j))),
                    _ => None,
                }
            },
        );
        let mut updates = futures::stream::select(pods.boxed(), jobs.boxed());
        let mut started: Option<SystemTime> = None;
        let mut logs: Option<tokio::task::JoinHandle<()>> = None;
        let mut unschedulable_since: Option<Instant> = None;
        let limit = self.config.unschedulable_timeout;
        // Events about the Pod (FailedMount), watched once its name is known.
        let (event_tx, mut event_rx) = tokio::sync::mpsc::channel::<Event>(16);
        let mut events_watch: Option<tokio::task::JoinHandle<()>> = None;
        let mut mount_failing: Option<(Instant, String)> = None;
        let fail = |reason: FailureReason, message: String| Some(Failure { reason, message });
        let result = loop {
            let tick = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                reason = driver.cancelled() => {
                    let reason = match reason { CancelReason::Shutdown => FailureReason::GracefulShutdown, _ => FailureReason::TaskCancelled };
                    if reason == FailureReason::GracefulShutdown {
                        // Jobs outlive the worker: leave it for the next process to reattach.
                        break (None, fail(reason, "the worker shut down; the Job keeps running".into()));
                    }
                    driver.emit(TaskEvent::Phase(TaskPhase::Stopping)).await;
                    self.delete_job(job).await;
                    break (None, fail(reason, "the task was cancelled; its Job was deleted".into()));
                }
                Some(event) = event_rx.recv() => {
                    if event.reason.as_deref() == Some("FailedMount") && started.is_none() {
                        let message = event.message.unwrap_or_default();
                        let since = mount_failing.as_ref().map_or_else(Instant::now, |(t, _)| *t);
                        mount_failing = Some((since, message));
                    }
                }
                () = tick => {
                    if let Some((since, message)) = &mount_failing
                        && started.is_none()
                        && since.elapsed() >= self.config.mount_timeout
                    {
                        break (None, fail(FailureReason::VolumeMount, format!("the pod's volumes could not be mounted: {message}")));
                    }
                    if let Some(since) = unschedulable_since
                        && !limit.is_zero()
                        && since.elapsed() >= limit
                    {
                        let message = format!("the pod could not be scheduled for {}s", limit.as_secs());
                        break (None, fail(FailureReason::Unschedulable, message));
                    }
                }
                update = updates.next() => {
                    let observed = match update {
                        Some(Update::Pod(pod)) => {
                            let seen = observe_pod(&pod);
                            if events_watch.is_none() && let Some(name) = pod.metadata.name.clone() {
                                events_watch = Some(tokio::spawn(watch_events(self.events(), name, event_tx.clone())));
                            }
                            // Running, or already ended before we saw it run (a quick task): its log is
                            // there either way, and a follow streams all of it.
                            let ran = matches!(seen, Observed::Running | Observed::Exited(_))
                                || matches!(seen, Observed::Failed(_, _, Some(_)));
                            if ran && logs.is_none() {
                                started = Some(SystemTime::now());
                                driver.emit(TaskEvent::Phase(TaskPhase::Running)).await;
                                let name = pod.metadata.name.clone().unwrap_or_default();
                                let skip = preparation_ends.clone();
                                logs = Some(tokio::spawn(stream_logs(self.pods(), name, driver.event_sender(), skip)));
                            }
                            seen
                        }
                        Some(Update::Job(j)) => match observe_job(&j) {
                            // Only a Job's failure is news; its other changes say nothing about the Pod.
                            failed @ Observed::Failed(..) => failed,
                            _ => continue,
                        },
                        Some(Update::PodDeleted(pod)) => {
                            if driver.cancel_requested().is_some() { continue; }
                            match observe_pod(&pod) {
                                // It had ended (another process of this worker cleaned up): that is the outcome.
                                ended @ (Observed::Exited(_) | Observed::Failed(..)) => ended,
                                _ => Observed::Failed(FailureReason::JobWatch, "the task's Pod was deleted by someone else".into(), None),
                            }
                        }
                        None => Observed::Failed(FailureReason::JobWatch, "the watches ended".into(), None),
                    };
                    match observed {
                        Observed::Waiting | Observed::Running => { unschedulable_since = None; }
                        Observed::Unschedulable(message) => {
                            let since = *unschedulable_since.get_or_insert_with(Instant::now);
                            if !limit.is_zero() && since.elapsed() >= limit {
                                break (None, fail(FailureReason::Unschedulable, format!("the pod could not be scheduled: {message}")));
                            }
                        }
                        Observed::Exited(code) => {
                            let exit = ExitStatus::code(code);
                            break if code == 0 { (Some(exit), None) } else {
                                (Some(exit), fail(FailureReason::JobFailed, format!("the task exited with code {code}")))
                            };
                        }
                        Observed::Failed(reason, message, code) => break (code.map(ExitStatus::code), fail(reason, message)),
                    }
                }
            }
        };
        if let Some(task) = events_watch {
            task.abort();
        }
        // Deliver the rest of the output before the outcome.
        if let Some(mut task) = logs {
            // A container that exited has its whole log to deliver; otherwise (a deadline, an eviction)
            // the stream may never end by itself.
            let wait = if result.0.is_some() { Duration::from_secs(10) } else { Duration::from_secs(2) };
            if tokio::time::timeout(wait, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some(exit) = result.0 {
            driver.emit(TaskEvent::Exited(exit)).await;
        }
        (result.0, result.1, started)
    }
}

/// Forwards the Events about one Pod.
async fn watch_events(events: Api<Event>, pod: String, tx: tokio::sync::mpsc::Sender<Event>) {
    let config = watcher::Config::default().fields(&format!("involvedObject.name={pod}"));
    let mut stream = Box::pin(watcher(events, config).default_backoff());
    while let Some(item) = stream.next().await {
        if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = item
            && tx.send(e).await.is_err()
        {
            return;
        }
    }
}

/// How a task's Job is followed.
struct FollowPlan {
    /// Remove the Job once the task ends.
    cleanup: bool,
    /// The deadline is the task's own timeout (its failure is `task_timeout`).
    has_timeout: bool,
    /// A warm Pod's: the log line after which the task's output starts.
    preparation_ends: Option<String>,
}

/// Removes a warm Job whose preparation was dropped half-way, unless disarmed.
struct Unfinished {
    backend: KubernetesBackend,
    job: String,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (backend, job) = (self.backend.clone(), std::mem::take(&mut self.job));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { backend.delete_job(&job).await });
        }
    }
}

fn uuid_suffix() -> String {
    let nanos = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:08x}{:04x}", nanos, std::process::id() & 0xffff)
}

/// Streams the task container's log (stdout and stderr, as Kubernetes merges them) as events; a
/// warm Pod's from the line after `preparation_ends`.
async fn stream_logs(
    pods: Api<Pod>,
    pod: String,
    events: oz_core::backend::EventSender,
    preparation_ends: Option<String>,
) {
    let params = LogParams { follow: true, container: Some(TASK_CONTAINER.into()), ..Default::default() };
    let Ok(reader) = pods.log_stream(&pod, &params).await else { return };
    let mut reader = futures::io::BufReader::new(reader);
    if let Some(end) = preparation_ends
        && !crate::warm::read_lines_until(&mut reader, |line| line.starts_with(end.as_str())).await
    {
        return;
    }
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !events.emit(TaskEvent::Stdout(bytes::Bytes::copy_from_slice(&buffer[..n]))).await {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn launch(&self, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        spec.validate().map_err(|e| BackendError::new(FailureReason::JobCreate, e.to_string()))?;
        if spec.stdin.is_some() {
            return Err(BackendError::new(FailureReason::JobCreate, "a Kubernetes Job cannot be given stdin"));
        }
        let job = manifest::job(&spec, &self.config)
            .map_err(|e| BackendError::new(FailureReason::JobCreate, e.to_string()))?;
        let name = self.create_job(&spec, &job, false).await?;
        let (handle, driver) = TaskHandle::channel(spec.task_id.clone());
        let span = tracing::info_span!("k8s_task", task_id = %spec.task_id, job = %name);
        let plan = FollowPlan {
            cleanup: spec.cleanup && self.config.cleanup,
            has_timeout: spec.timeout.is_some(),
            preparation_ends: None,
        };
        let follow = self.clone().follow(driver, name, plan);
        tokio::spawn(tracing::Instrument::instrument(follow, span));
        Ok(handle)
    }

    fn warm_sandboxes(&self) -> bool {
        true
    }

    /// Creates a warm Job ([`manifest::warm_job`]) and returns once its runner waits for its task.
    async fn prepare(&self, warm: WarmSpec) -> Result<PreparedSandbox, BackendError> {
        let warm_id = format!("warm-{}", uuid::Uuid::new_v4().simple());
        let spec = crate::warm::warm_task(&warm_id, &warm);
        let refuse = |message: String| BackendError::new(FailureReason::JobCreate, message);
        spec.validate().map_err(|e| refuse(e.to_string()))?;
        let environment = serde_json::to_string(&warm.environment).map_err(|e| refuse(e.to_string()))?;
        let job = manifest::warm_job(&spec, &self.config, &environment).map_err(|e| refuse(e.to_string()))?;
        let span = tracing::info_span!("k8s_warm", warm = %warm_id, worker_id = %self.config.worker_id);
        let name = manifest::job_name(&spec);
        // Dropped half-way (a worker that stops waits only so long), what was made is removed.
        let mut unfinished = Unfinished { backend: self.clone(), job: name.clone(), armed: true };
        let made = tracing::Instrument::instrument(
            async {
                let created = std::time::Instant::now();
                self.create_job(&spec, &job, true).await?;
                let pod =
                    crate::warm::wait_ready(&self.pods(), &crate::warm::selector(&self.config.worker_id, &warm_id))
                        .await?;
                Ok::<_, BackendError>((pod, created))
            },
            span,
        );
        let made = tokio::time::timeout(warm.ready_within, made).await.unwrap_or_else(|_| {
            let message = format!("the warm sandbox was not ready within {}s", warm.ready_within.as_secs());
            Err(BackendError::new(FailureReason::WorkspaceSetup, message))
        });
        unfinished.armed = false;
        match made {
            Ok((pod, created)) => {
                let state = crate::warm::WarmPod { warm_id: warm_id.clone(), job: name, pod, created };
                Ok(PreparedSandbox { id: warm_id, spec: warm.sandbox, state: Box::new(state) })
            }
            Err(e) => {
                self.delete_job(&name).await;
                Err(e)
            }
        }
    }

    /// Claims the warm Job and Pod for the task (labels, and the task's deadline), then writes the
    /// task (with its token) to the runner's stdin through `pods/attach`; from then on they are
    /// followed as a task's.
    async fn launch_prepared(&self, prepared: PreparedSandbox, spec: TaskSpec) -> Result<TaskHandle, BackendError> {
        let refuse = |message: String| BackendError::new(FailureReason::JobCreate, message);
        let Ok(warm) = prepared.state.downcast::<crate::warm::WarmPod>() else {
            return Err(refuse("not a sandbox this backend prepared".into()));
        };
        let job = warm.job.clone();
        let gone = |message: String| {
            let job = job.clone();
            async move {
                self.delete_job(&job).await;
                Err(refuse(message))
            }
        };
        if spec.sandbox != prepared.spec {
            return gone("the task asks for another sandbox than the one prepared".into()).await;
        }
        if let Err(e) = spec.validate() {
            return gone(e.to_string()).await;
        }
        if spec.stdin.is_some() {
            return gone("a Kubernetes Job cannot be given stdin".into()).await;
        }
        let env = match manifest::task_env(&spec, &self.config) {
            Ok(env) => env,
            Err(e) => return gone(e.to_string()).await,
        };
        let receipt = uuid::Uuid::new_v4().simple().to_string();
        let handoff = Handoff {
            argv: spec.argv.clone(),
            env,
            secret_input: spec.secret_input.clone(),
            receipt: Some(receipt.clone()),
        };
        let line = match handoff.to_line() {
            Ok(line) => line,
            // Too large: the runner would refuse it and end; the task goes cold instead.
            Err(message) => return gone(message).await,
        };
        // Claimed before anything secret is sent: a worker restarted from here on reattaches it.
        // The Job's deadline counts from its start: the task gets all of its own time (or the
        // default) from now, however long the Pod waited.
        let budget = spec.timeout.map_or(self.config.active_deadline_seconds, |t| t.as_secs().max(1) as i64);
        let deadline = warm.created.elapsed().as_secs() as i64 + budget;
        let cleanup = spec.cleanup && self.config.cleanup;
        let job_patch = manifest::claim_job_patch(&spec, deadline, !cleanup);
        let pod_patch = manifest::claim_pod_patch(&spec, crate::warm::RECEIPT_ANNOTATION, &receipt);
        let (jobs, pods, patch_params) = (self.jobs(), self.pods(), PatchParams::default());
        let (job_patch, pod_patch) = (Patch::Merge(&job_patch), Patch::Merge(&pod_patch));
        let (claimed_job, claimed_pod) = tokio::join!(
            jobs.patch(&warm.job, &patch_params, &job_patch),
            pods.patch(&warm.pod, &patch_params, &pod_patch),
        );
        let delivered = match claimed_job.and(claimed_pod) {
            Err(e) => Err(format!("could not claim the warm Pod: {e}")),
            Ok(_) => match crate::warm::hand_over(&pods, &warm.pod, &line).await {
                Ok(()) => crate::warm::wait_taken(&pods, &warm.pod, &receipt).await,
                Err(message) => Err(message),
            },
        };
        if let Err(message) = delivered {
            // It may have read the token: it goes, never to serve another task, and the task starts
            // cold only once its Pod is gone.
            self.delete_job(&warm.job).await;
            crate::warm::wait_deleted(&pods, &warm.pod).await;
            return Err(refuse(format!("the warm Pod did not take the task: {message}")));
        }
        let (handle, driver) = TaskHandle::channel(spec.task_id.clone());
        let span = tracing::info_span!("k8s_task", task_id = %spec.task_id, job = %warm.job, warm = %warm.warm_id);
        let plan = FollowPlan {
            cleanup,
            has_timeout: spec.timeout.is_some(),
            preparation_ends: Some(format!("{} {receipt}", oz_core::warm::TAKEN_LINE)),
        };
        let follow = self.clone().follow(driver, warm.job.clone(), plan);
        tokio::spawn(tracing::Instrument::instrument(follow, span));
        Ok(handle)
    }

    async fn discard(&self, prepared: PreparedSandbox) -> Result<(), BackendError> {
        if let Ok(warm) = prepared.state.downcast::<crate::warm::WarmPod>() {
            self.delete_job(&warm.job).await;
        }
        Ok(())
    }

    async fn recover(&self) -> Result<Vec<RecoveredTask>, BackendError> {
        let params = ListParams::default().labels(&manifest::worker_selector(&self.config.worker_id));
        let jobs = self
            .jobs()
            .list(&params)
            .await
            .map_err(|e| BackendError::new(FailureReason::JobWatch, format!("could not list Jobs: {e}")))?;
        // A secret input whose Job was never made (a crash between the two) is removed.
        let job_names: std::collections::HashSet<String> =
            jobs.items.iter().filter_map(|j| j.metadata.name.clone()).collect();
        match self.secrets().list(&params).await {
            Ok(secrets) => {
                for name in secrets.items.into_iter().filter_map(|s| s.metadata.name) {
                    if !job_names.contains(&name) {
                        tracing::info!(secret = name, "removing a secret input left without its Job");
                        self.delete_secret_input(&name).await;
                    }
                }
            }
            Err(e) => tracing::warn!("could not list the worker's secret inputs: {e}"),
        }
        let mut recovered = Vec::new();
        for job in jobs.items {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            let (Some(task_id), Some(name)) = (labels.get(labels::TASK_ID).cloned(), job.metadata.name.clone()) else {
                continue;
            };
            let warm_id = labels.get(labels::WARM_ID).cloned();
            let mut preparation_ends = None;
            if let Some(warm_id) = &warm_id {
                if *warm_id == task_id {
                    // A warm sandbox that never got a task: it goes.
                    tracing::info!(warm = %warm_id, job = name, "removing a warm Job left by an earlier run");
                    self.delete_job(&name).await;
                    continue;
                }
                preparation_ends = Some(self.reclaim(warm_id).await);
            }
            let (handle, driver) = TaskHandle::channel(task_id.clone());
            tracing::info!(task_id, job = name, "reattaching to a Job left by an earlier run");
            let plan = FollowPlan { cleanup: self.config.cleanup, has_timeout: false, preparation_ends };
            tokio::spawn(self.clone().follow(driver, name, plan));
            recovered.push(RecoveredTask {
                task_id,
                execution_id: labels.get(labels::EXECUTION_ID).cloned(),
                action: RecoveryAction::Reattached(handle),
            });
        }
        Ok(recovered)
    }

    fn preserves_tasks_on_shutdown(&self) -> bool {
        true
    }
}
