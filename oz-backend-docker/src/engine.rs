//! Connecting to the engine: the address, API version negotiation, and the platform check.

use bollard::Docker;

use crate::config::DockerConfig;
use crate::error::DockerError;

/// Connects to the engine `config` names, negotiates the API version (old engines speak 1.41) and
/// refuses engines that are not linux/amd64 or linux/arm64.
pub async fn connect(config: &DockerConfig) -> Result<Docker, DockerError> {
    let host = config
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let unreachable = |source: bollard::errors::Error| DockerError::Unreachable { addr: host.clone(), source };
    let docker = if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(DockerError::Config(format!("DOCKER_HOST {host:?}: expected unix://PATH or tcp://HOST:PORT")));
    }
    .map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    let info = docker.info().await.map_err(unreachable)?;
    let os = info.os_type.unwrap_or_default();
    let arch = info.architecture.unwrap_or_default();
    if os != "linux" || !matches!(arch.as_str(), "x86_64" | "amd64" | "aarch64" | "arm64") {
        return Err(DockerError::UnsupportedPlatform { os, arch });
    }
    Ok(docker)
}

/// A one-line description of an engine error, without the noise of the debug form.
pub fn describe(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        E::DockerContainerWaitError { error, code } if error.is_empty() => format!("exited with {code}"),
        E::DockerContainerWaitError { error, code } => format!("{error} (exit {code})"),
        other => other.to_string(),
    }
}

/// Whether an engine error is a 404.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}
