//! The `isolated` network mode: an internal network per task whose only way out is an egress proxy
//! (`oz agent egress-proxy`, run from the sidecar in a container of the task's own image) that allows
//! a list of domains and refuses loopback, private, link-local (cloud metadata) and other non-public
//! addresses. The proxy sits on the internal network (as `egress`) and on an egress network.

use std::collections::HashMap;
use std::net::SocketAddr;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListNetworksOptionsBuilder};
use oz_core::backend::BackendError;
use oz_core::egress::{EgressPolicy, ProxyStatus};
use oz_core::failure::FailureReason;
use oz_core::image::ImageRef;
use oz_core::sidecar::SidecarLayout;
use oz_core::task::{TaskSpec, labels};

use crate::config::DockerConfig;
use crate::engine::describe;

/// The proxy's name on the task's network.
pub const PROXY_ALIAS: &str = "egress";
pub use oz_core::egress::PROXY_PORT;
/// Label marking a task's egress proxy container.
pub const ROLE_LABEL: &str = "oz.dev/role";

/// The name of a task's internal network.
pub fn network_name(spec: &TaskSpec) -> String {
    crate::container::execution_name("oz-isolated", spec)
}

/// The variables that send a task's HTTP(S) traffic through the proxy.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://{PROXY_ALIAS}:{PROXY_PORT}");
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push((name.to_owned(), url.clone()));
    }
    env.push(("NO_PROXY".to_owned(), "localhost,127.0.0.1".to_owned()));
    env.push(("no_proxy".to_owned(), "localhost,127.0.0.1".to_owned()));
    env
}

fn err(message: String) -> BackendError {
    BackendError::new(FailureReason::ContainerCreate, message)
}

/// Makes the task's internal network and starts its egress proxy; returns the network's name.
pub async fn create(
    docker: &Docker,
    spec: &TaskSpec,
    config: &DockerConfig,
    image: &ImageRef,
    sidecar_volume: Option<&str>,
    policy: &EgressPolicy,
) -> Result<String, BackendError> {
    let Some(sidecar_volume) = sidecar_volume else {
        return Err(err(
            "the isolated network mode needs the sidecar (its egress proxy is the static oz): configure sidecar_binary"
                .into(),
        ));
    };
    let task_labels: HashMap<String, String> = spec.labels(&config.worker_id).into_iter().collect();
    let name = network_name(spec);
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        internal: Some(true),
        labels: Some(task_labels.clone()),
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .map_err(|e| err(format!("could not create network {name}: {}", describe(&e))))?;

    let cmd = policy.proxy_argv(SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
    let mut proxy_labels = task_labels;
    proxy_labels.insert(ROLE_LABEL.into(), "egress-proxy".into());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec![SidecarLayout::default().oz_binary()]),
        cmd: Some(cmd),
        env: Some(Vec::new()),
        labels: Some(proxy_labels),
        host_config: Some(HostConfig {
            init: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            memory: Some(128 << 20),
            memory_swap: Some(128 << 20),
            pids_limit: Some(256),
            network_mode: Some(config.egress_network.clone()),
            binds: Some(vec![format!("{sidecar_volume}:/agent:ro")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let proxy_name = crate::container::execution_name("oz-egress", spec);
    let options = CreateContainerOptionsBuilder::default().name(&proxy_name).build();
    let proxy = docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| err(format!("could not create the egress proxy: {}", describe(&e))))?;
    let connect = NetworkConnectRequest {
        container: proxy.id.clone(),
        endpoint_config: Some(EndpointSettings { aliases: Some(vec![PROXY_ALIAS.into()]), ..Default::default() }),
    };
    docker
        .connect_network(&name, connect)
        .await
        .map_err(|e| err(format!("could not attach the egress proxy to {name}: {}", describe(&e))))?;
    docker
        .start_container(&proxy.id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| err(format!("could not start the egress proxy: {}", describe(&e))))?;
    wait_until_ready(docker, &proxy.id).await?;
    Ok(name)
}

/// Waits for the proxy's [`ProxyStatus::Ready`] line on its standard output, so the task never
/// starts before its way out exists; a proxy that dies instead fails the task with what it said.
async fn wait_until_ready(docker: &Docker, id: &str) -> Result<(), BackendError> {
    use bollard::container::LogOutput;
    use futures::StreamExt;
    let options =
        bollard::query_parameters::LogsOptionsBuilder::default().stdout(true).stderr(true).follow(true).build();
    let mut logs = docker.logs(id, Some(options));
    let mut stdout = String::new();
    let mut said = String::new();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = logs.next().await {
            match chunk {
                LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message));
                    while let Some(end) = stdout.find('\n') {
                        let line: String = stdout.drain(..=end).collect();
                        if let Some(ProxyStatus::Ready { .. }) = ProxyStatus::from_line(&line) {
                            return true;
                        }
                        said.push_str(&line);
                    }
                }
                other => said.push_str(&other.to_string()),
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if ready { Ok(()) } else { Err(err(format!("the egress proxy did not start: {}", said.trim()))) }
}

/// Removes the networks labelled with `task_id` (after its containers are gone).
pub async fn remove_networks(docker: &Docker, task_id: &str) {
    let mut filters = HashMap::new();
    filters.insert("label".to_owned(), vec![format!("{}={task_id}", labels::TASK_ID)]);
    let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
    let Ok(networks) = docker.list_networks(Some(options)).await else { return };
    for network in networks {
        if let Some(id) = network.id
            && let Err(e) = docker.remove_network(&id).await
        {
            tracing::warn!(network = %id, "could not remove the task network: {}", describe(&e));
        }
    }
}
