//! `oz-agent-worker`: the worker daemon, with Oz's flags and YAML configuration.
//!
//! ```text
//! oz-agent-worker --worker-id my-worker --server-root-url http://127.0.0.1:8080 --backend direct
//! oz-agent-worker --config-file worker.yaml
//! ```
//!
//! Flags override the file, which overrides the defaults. SIGTERM or Ctrl-C: stop taking tasks, cancel
//! the running ones (reported as `graceful_shutdown`), deliver their outcomes, exit; a second signal
//! exits at once.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use oz_core::backend::Backend;
use oz_core::credentials::ApiKey;
use oz_worker::config::{BackendKind, FileConfig, backend_kind, parse_file, resolve_env};
use oz_worker::{CommandOptions, Worker, WorkerConfig};

/// The oz worker daemon.
#[derive(Debug, Parser)]
#[command(name = "oz-agent-worker", version)]
struct Flags {
    /// A YAML configuration file (strict: unknown keys are errors).
    #[arg(long)]
    config_file: Option<std::path::PathBuf>,
    /// docker, direct or kubernetes (default: the file's backend, else docker).
    #[arg(long)]
    backend: Option<String>,
    /// The API key.
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// This worker's id (runs with this `worker_host` come here).
    #[arg(long)]
    worker_id: Option<String>,
    /// The worker WebSocket URL (default: derived from --server-root-url).
    #[arg(long)]
    web_socket_url: Option<String>,
    /// The control plane's root URL, also given to tasks.
    #[arg(long, env = "OZ_SERVER_ROOT_URL")]
    server_root_url: Option<String>,
    /// error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Keep what tasks leave behind.
    #[arg(long)]
    no_cleanup: bool,
    /// `HOST:CONTAINER[:ro|rw]` (Docker; repeatable).
    #[arg(short = 'v', long = "volumes")]
    volumes: Vec<String>,
    /// `KEY=VALUE`, or a bare `KEY` to pass on the worker's own value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// At most this many tasks at once; 0 = unlimited.
    #[arg(long)]
    max_concurrent_tasks: Option<usize>,
    /// Passed to the agent as `--idle-on-complete <duration>`.
    #[arg(long)]
    idle_on_complete: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz-agent-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oz-agent-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<(), Box<dyn std::error::Error>> {
    let file = match &flags.config_file {
        Some(path) => {
            parse_file(&std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))?)?
        }
        None => FileConfig::default(),
    };
    let kind = backend_kind(flags.backend.as_deref().map(str::parse).transpose()?, &file);
    let worker_id = flags
        .worker_id
        .or(file.worker_id.clone())
        .ok_or("a worker id is required: --worker-id or worker_id in the file")?;
    let api_key = flags.api_key.ok_or("an API key is required: --api-key or WARP_API_KEY")?;
    let server_root_url = flags.server_root_url.ok_or("the control plane's URL is required: --server-root-url")?;
    let web_socket_url = flags.web_socket_url.unwrap_or_else(|| {
        let ws = server_root_url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        format!("{}/api/v1/selfhosted/worker/ws", ws.trim_end_matches('/'))
    });
    if !(web_socket_url.starts_with("ws://") || web_socket_url.starts_with("wss://")) {
        return Err(format!("the WebSocket URL {web_socket_url:?} must start with ws:// or wss://").into());
    }
    let cleanup = !flags.no_cleanup && file.cleanup.unwrap_or(true);
    let lookup = |k: &str| std::env::var(k).ok();
    let mut extra_env = Vec::new();
    let section_env = file
        .backend
        .as_ref()
        .and_then(|b| {
            b.direct
                .as_ref()
                .map(|d| d.environment.clone())
                .or_else(|| b.docker.as_ref().map(|d| d.environment.clone()))
        })
        .unwrap_or_default();
    for entry in section_env {
        let spec = match entry.value {
            Some(v) => format!("{}={v}", entry.name),
            None => entry.name,
        };
        extra_env.push(resolve_env(&spec, lookup)?);
    }
    for spec in &flags.env {
        extra_env.push(resolve_env(spec, lookup)?);
    }
    if !flags.volumes.is_empty() && kind != BackendKind::Docker {
        return Err("-v/--volumes applies to the docker backend only".into());
    }

    let (backend, entrypoint): (Arc<dyn Backend>, String) = match kind {
        BackendKind::Direct => {
            let section = file.backend.as_ref().and_then(|b| b.direct.clone()).unwrap_or_default();
            let root = section.workspace_root.unwrap_or_else(|| std::env::temp_dir().join("oz-workspaces"));
            let mut direct = oz_backend_direct::DirectConfig::new(&worker_id, root);
            direct.setup_command = section.setup_command;
            direct.teardown_command = section.teardown_command;
            direct.cleanup = cleanup;
            (Arc::new(oz_backend_direct::DirectBackend::new(direct)?), section.oz_path.unwrap_or_else(|| "oz".into()))
        }
        #[cfg(feature = "docker")]
        BackendKind::Docker => {
            let section = file.backend.as_ref().and_then(|b| b.docker.clone()).unwrap_or_default();
            let mut docker = oz_backend_docker::DockerConfig::new(&worker_id);
            docker.volumes = section.volumes.clone();
            docker.volumes.extend(flags.volumes.iter().cloned());
            docker.cleanup = cleanup;
            docker.user = section.user.clone();
            docker.docker_host = section.docker_host.clone();
            docker.sidecar_binary = section.sidecar_binary.clone();
            docker.isolated_allowed_ranges = section.allowed_ranges.clone();
            if let Some(network) = &section.egress_network {
                docker.isolated_egress_network = network.clone();
            }
            if let Some(policy) = &section.pull_policy {
                docker.pull_policy = policy.parse().map_err(|e: String| format!("backend.docker.pull_policy: {e}"))?;
            }
            if let Some(image) = &section.default_image {
                docker.default_image = Some(
                    oz_core::image::ImageRef::parse(image).map_err(|e| format!("backend.docker.default_image: {e}"))?,
                );
            }
            docker.network = match section.network.as_deref() {
                None | Some("none") => oz_backend_docker::DefaultNetwork::None,
                Some("bridge") => oz_backend_docker::DefaultNetwork::Bridge,
                Some("isolated") => {
                    if section.allowed_domains.is_empty() {
                        return Err("backend.docker.network: isolated needs allowed_domains (at least the control plane's host)".into());
                    }
                    oz_backend_docker::DefaultNetwork::Isolated { allowed_domains: section.allowed_domains.clone() }
                }
                Some(name) => oz_backend_docker::DefaultNetwork::Named(name.to_owned()),
            };
            let entrypoint = if docker.sidecar_binary.is_some() {
                oz_core::sidecar::SidecarLayout::default().entrypoint()
            } else {
                "oz".to_owned()
            };
            (Arc::new(oz_backend_docker::DockerBackend::connect(docker).await?), entrypoint)
        }
        #[cfg(not(feature = "docker"))]
        BackendKind::Docker => {
            return Err("this worker was built without the docker feature; use --backend direct".into());
        }
        #[cfg(feature = "kubernetes")]
        BackendKind::Kubernetes => {
            let section = file.backend.as_ref().and_then(|b| b.kubernetes.clone()).unwrap_or_default();
            let sidecar_image = section
                .sidecar_image
                .clone()
                .ok_or("backend.kubernetes.sidecar_image is required: an image with the sidecar under /agent")?;
            let mut k8s = oz_backend_k8s::KubernetesConfig::new(&worker_id, sidecar_image);
            if let Some(ns) = &section.namespace {
                k8s.namespace = ns.clone();
            }
            k8s.default_image = section.default_image.clone();
            if let Some(policy) = &section.image_pull_policy {
                k8s.image_pull_policy = policy.clone();
            }
            k8s.use_image_volumes = section.use_image_volumes.unwrap_or(false);
            k8s.setup_command = section.setup_command.clone();
            k8s.teardown_command = section.teardown_command.clone();
            k8s.extra_labels = section.extra_labels.clone().unwrap_or_default();
            k8s.extra_annotations = section.extra_annotations.clone().unwrap_or_default();
            if let Some(v) = section.active_deadline_seconds {
                k8s.active_deadline_seconds = i64::try_from(v).unwrap_or(i64::MAX);
            }
            if let Some(v) = section.ttl_seconds_after_finished {
                k8s.ttl_seconds_after_finished = i32::try_from(v).unwrap_or(i32::MAX);
            }
            k8s.workspace_size_limit = section.workspace_size_limit.clone();
            if let Some(t) = &section.unschedulable_timeout {
                k8s.unschedulable_timeout = parse_duration(t).ok_or_else(|| {
                    format!("backend.kubernetes.unschedulable_timeout: {t:?} is not a duration like 30s")
                })?;
            }
            k8s.pod_template = section.pod_template.clone();
            if let Some(policy) = &section.egress_policy {
                k8s.egress_policy = Some(oz_backend_k8s::EgressPolicy {
                    allowed_cidrs: policy.allowed_cidrs.clone(),
                    ports: policy.ports.clone(),
                });
            }
            if let Some(image) = &section.preflight_image {
                k8s.preflight_image = image.clone();
            }
            if let Some(r) = &section.preflight_resources {
                if let Some(cpu) = &r.cpu {
                    k8s.preflight_resources.vcpus = Some(oz_backend_k8s::config::parse_cpu(cpu).ok_or_else(|| {
                        format!("backend.kubernetes.preflight_resources.cpu: {cpu:?} is not a quantity")
                    })?);
                }
                if let Some(memory) = &r.memory {
                    k8s.preflight_resources.memory_bytes =
                        Some(oz_backend_k8s::config::parse_memory(memory).ok_or_else(|| {
                            format!("backend.kubernetes.preflight_resources.memory: {memory:?} is not a quantity")
                        })?);
                }
            }
            k8s.cleanup = cleanup;
            let backend = match &section.kubeconfig {
                Some(path) => {
                    let kubeconfig = kube::config::Kubeconfig::read_from(path)
                        .map_err(|e| format!("backend.kubernetes.kubeconfig {path}: {e}"))?;
                    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                        .await
                        .map_err(|e| format!("backend.kubernetes.kubeconfig {path}: {e}"))?;
                    let client = kube::Client::try_from(config).map_err(|e| format!("kubernetes client: {e}"))?;
                    oz_backend_k8s::KubernetesBackend::new(client, k8s)
                }
                None => oz_backend_k8s::KubernetesBackend::infer(k8s).await?,
            };
            eprintln!("oz-agent-worker: running the Kubernetes preflight Job");
            backend.preflight().await?;
            (Arc::new(backend), oz_core::sidecar::SidecarLayout::default().entrypoint())
        }
        #[cfg(not(feature = "kubernetes"))]
        BackendKind::Kubernetes => {
            return Err("this worker was built without the kubernetes feature; use --backend direct or docker".into());
        }
    };
    let command = CommandOptions { entrypoint, server_root_url, idle_on_complete: flags.idle_on_complete, extra_env };
    let mut config = WorkerConfig::new(worker_id.clone(), web_socket_url, ApiKey::new(api_key), command);
    config.cleanup = cleanup;
    config.max_concurrent_tasks = flags.max_concurrent_tasks.or(file.max_concurrent_tasks).unwrap_or(0);
    let worker = Arc::new(Worker::new(config, backend.clone())?);
    if let Some(listen) = flags.metrics_listen.or(file.metrics_listen.clone()) {
        let (addr, _task) = oz_worker::metrics::serve(worker.metrics(), &listen)
            .await
            .map_err(|e| format!("could not serve metrics on {listen}: {e}"))?;
        eprintln!("oz-agent-worker: metrics at http://{addr}/metrics");
    }
    // What an earlier run of this worker left: reattach or clean up, and tell the control plane.
    let recovered = backend.recover().await?;
    if !recovered.is_empty() {
        eprintln!("oz-agent-worker: found {} task(s) left by an earlier run; reporting them", recovered.len());
    }
    worker.adopt_recovered(recovered);
    let handle = worker.handle();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("oz-agent-worker: shutting down (a second signal exits at once)");
        handle.shutdown();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        handle.abort();
    });
    eprintln!("oz-agent-worker {worker_id} starting ({kind:?} backend)");
    worker.run_shared().await?;
    Ok(())
}

/// `30s`, `2m`, `1h`, `0s`.
#[cfg(feature = "kubernetes")]
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}
