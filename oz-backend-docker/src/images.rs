//! Images: presence, the pull policy, registry credentials from the Docker config file, and pull
//! progress reported as task events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::ImageInspect;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use oz_core::backend::{BackendError, EventSender, TaskEvent};
use oz_core::failure::FailureReason;
use oz_core::image::ImageRef;

use crate::config::PullPolicy;
use crate::engine::{describe, is_not_found};
use crate::error::DockerError;

/// Registry credentials read from a Docker config file (`auths` entries; credential helpers are not
/// consulted).
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_registry: HashMap<String, DockerCredentials>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Registries only: never the credentials.
        f.debug_struct("RegistryAuth").field("registries", &self.by_registry.keys().collect::<Vec<_>>()).finish()
    }
}

impl RegistryAuth {
    /// Reads `path`, or the default config file when `None`; a missing file means no credentials.
    pub fn load(path: Option<&Path>) -> Result<Self, DockerError> {
        let path: PathBuf = match path {
            Some(p) => p.to_owned(),
            None => match std::env::var_os("DOCKER_CONFIG") {
                Some(dir) => PathBuf::from(dir).join("config.json"),
                None => match std::env::var_os("HOME") {
                    Some(home) => PathBuf::from(home).join(".docker/config.json"),
                    None => return Ok(Self::default()),
                },
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(DockerError::Read { path, source }),
        };
        Self::parse(&text).map_err(|e| DockerError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let mut by_registry = HashMap::new();
        if let Some(auths) = value.get("auths").and_then(|a| a.as_object()) {
            for (registry, entry) in auths {
                let key = normalize_registry(registry);
                let mut creds = DockerCredentials { serveraddress: Some(registry.clone()), ..Default::default() };
                if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| format!("auths[{registry:?}].auth is not base64"))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| format!("auths[{registry:?}].auth is not user:password"))?;
                    let (user, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| format!("auths[{registry:?}].auth is not user:password"))?;
                    creds.username = Some(user.to_owned());
                    creds.password = Some(password.to_owned());
                }
                if let Some(token) = entry.get("identitytoken").and_then(|t| t.as_str()) {
                    creds.identitytoken = Some(token.to_owned());
                }
                by_registry.insert(key, creds);
            }
        }
        Ok(Self { by_registry })
    }

    /// The credentials for an image's registry (Docker Hub when it names none).
    pub fn for_image(&self, image: &ImageRef) -> Option<DockerCredentials> {
        let registry = image.registry().unwrap_or("docker.io");
        self.by_registry.get(&normalize_registry(registry)).cloned()
    }
}

fn normalize_registry(registry: &str) -> String {
    let host = registry.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// The engine's record of `image`, or `None` when it does not have it.
pub async fn inspect(docker: &Docker, image: &ImageRef) -> Result<Option<ImageInspect>, BackendError> {
    match docker.inspect_image(&image.to_string()).await {
        Ok(found) => Ok(Some(found)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => {
            Err(BackendError::new(FailureReason::ImagePull, format!("could not inspect {image}: {}", describe(&e))))
        }
    }
}

/// Makes sure `image` is present under `policy`, pulling it (with progress events) when needed;
/// returns the engine's record of it.
pub async fn ensure(
    docker: &Docker,
    image: &ImageRef,
    policy: PullPolicy,
    auth: &RegistryAuth,
    events: &EventSender,
) -> Result<ImageInspect, BackendError> {
    match (policy, inspect(docker, image).await?) {
        (PullPolicy::IfNotPresent | PullPolicy::Never, Some(found)) => return Ok(found),
        (PullPolicy::Never, None) => {
            return Err(BackendError::new(
                FailureReason::InvalidImage,
                format!("image {image} is not present on this engine and the pull policy is never"),
            ));
        }
        _ => {}
    }
    pull(docker, image, auth, events).await?;
    inspect(docker, image).await?.ok_or_else(|| {
        BackendError::new(FailureReason::ImagePull, format!("{image} was pulled but the engine does not have it"))
    })
}

/// The `PATH` an image sets, if it sets one.
pub fn image_path(image: &ImageInspect) -> Option<String> {
    image.config.as_ref()?.env.as_ref()?.iter().find_map(|e| e.strip_prefix("PATH=").map(str::to_owned))
}

async fn pull(
    docker: &Docker,
    image: &ImageRef,
    auth: &RegistryAuth,
    events: &EventSender,
) -> Result<(), BackendError> {
    let mut options = CreateImageOptionsBuilder::default().from_image(&image.repository());
    match (image.tag_or_latest(), image.digest()) {
        (_, Some(digest)) => options = options.tag(digest),
        (Some(tag), None) => options = options.tag(tag),
        (None, None) => {}
    }
    events.emit(TaskEvent::Progress(format!("pulling {image}"))).await;
    let mut stream = docker.create_image(Some(options.build()), None, auth.for_image(image));
    // One line per layer and status change, not one per progress tick.
    let mut last: HashMap<String, String> = HashMap::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(pull_failure(image, &error));
                }
                let status = info.status.unwrap_or_default();
                let layer = info.id.unwrap_or_default();
                if last.get(&layer) != Some(&status) {
                    last.insert(layer.clone(), status.clone());
                    let line = if layer.is_empty() { status } else { format!("{layer}: {status}") };
                    events.emit(TaskEvent::Progress(line)).await;
                }
            }
            Err(e) => return Err(pull_failure(image, &describe(&e))),
        }
    }
    events.emit(TaskEvent::Progress(format!("pulled {image}"))).await;
    Ok(())
}

/// A pull that failed because the image does not exist is the user's `invalid_image`; anything
/// else (network, registry down, auth) is `image_pull`.
fn pull_failure(image: &ImageRef, message: &str) -> BackendError {
    let lower = message.to_ascii_lowercase();
    let missing = ["manifest unknown", "not found", "does not exist", "repository does not exist"]
        .iter()
        .any(|needle| lower.contains(needle));
    let reason = if missing { FailureReason::InvalidImage } else { FailureReason::ImagePull };
    BackendError::new(reason, format!("could not pull {image}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_auths_and_never_print() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret-pass");
        let text = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "ghcr.io": {{"auth": "{auth}"}}}}}}"#
        );
        let parsed = RegistryAuth::parse(&text).unwrap();
        let hub = parsed.for_image(&ImageRef::parse("ubuntu:22.04").unwrap()).unwrap();
        assert_eq!(hub.username.as_deref(), Some("robot"));
        assert_eq!(hub.password.as_deref(), Some("s3cret-pass"));
        assert!(parsed.for_image(&ImageRef::parse("ghcr.io/acme/env:1").unwrap()).is_some());
        assert!(parsed.for_image(&ImageRef::parse("quay.io/acme/env:1").unwrap()).is_none());
        assert!(!format!("{parsed:?}").contains("s3cret"));
        assert!(RegistryAuth::parse(r#"{"auths": {"x.io": {"auth": "!!"}}}"#).unwrap_err().contains("x.io"));
    }

    #[test]
    fn a_missing_image_is_the_users_error_and_a_network_failure_is_not() {
        let image = ImageRef::parse("acme/nope:1").unwrap();
        assert_eq!(pull_failure(&image, "manifest unknown").reason, FailureReason::InvalidImage);
        assert_eq!(pull_failure(&image, "dial tcp: lookup registry: no such host").reason, FailureReason::ImagePull);
    }
}
