//! The sidecar: our tooling (the static `oz`, an entrypoint, a CA bundle) materialized once per
//! content digest into a named volume, populated by uploading a tar into a created (never started)
//! container of the task's own image, so no extra image is needed. Mounted read-only at `/agent`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use oz_core::backend::{BackendError, EventSender, TaskEvent};
use oz_core::failure::FailureReason;
use oz_core::image::ImageRef;
use oz_core::sidecar::{SidecarDigest, SidecarFile, SidecarLayout, SidecarManifest};
use oz_core::task::labels;

use crate::engine::describe;
use crate::error::DockerError;

/// The label naming a sidecar volume's content digest.
pub const DIGEST_LABEL: &str = "oz.dev/sidecar-digest";
/// Where the CA bundle sits in the content.
const CA_BUNDLE: &str = "certs/ca-certificates.crt";
/// The file written last: its presence means the volume is complete.
const COMPLETE_MARKER: &str = ".complete";

/// The sidecar's files, in memory, with their digest.
#[derive(Clone)]
pub struct SidecarContent {
    files: Vec<(String, u32, Bytes)>,
    digest: SidecarDigest,
}

impl std::fmt::Debug for SidecarContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarContent").field("digest", &self.digest.as_hex()).finish_non_exhaustive()
    }
}

impl SidecarContent {
    /// The layout's files from the static `oz` binary and an optional CA bundle.
    pub fn from_binary(oz: &Path, ca_bundle: Option<&Path>) -> Result<Self, DockerError> {
        let layout = SidecarLayout::default();
        let read = |p: &Path| std::fs::read(p).map_err(|source| DockerError::Read { path: p.to_owned(), source });
        let mut files = vec![
            ("bin/oz".to_owned(), 0o755, Bytes::from(read(oz)?)),
            ("entrypoint.sh".to_owned(), 0o755, Bytes::from(layout.entrypoint_script())),
        ];
        if let Some(ca) = ca_bundle {
            files.push((CA_BUNDLE.to_owned(), 0o644, Bytes::from(read(ca)?)));
        }
        Self::new(files)
    }

    /// Content from `(relative path, mode, bytes)` entries.
    pub fn new(mut files: Vec<(String, u32, Bytes)>) -> Result<Self, DockerError> {
        let mut manifest = SidecarManifest::default();
        for (path, mode, content) in &files {
            manifest.insert(SidecarFile::new(path, *mode, content).map_err(DockerError::invalid)?);
        }
        let digest = manifest.digest();
        files.push(("VERSION".to_owned(), 0o644, Bytes::from(format!("{}\n", digest.as_hex()))));
        Ok(Self { files, digest })
    }

    /// Whether the content carries a CA bundle (tasks then get `SSL_CERT_FILE` pointing at it).
    pub fn has_ca_bundle(&self) -> bool {
        self.files.iter().any(|(path, _, _)| path == CA_BUNDLE)
    }

    /// The content digest.
    pub fn digest(&self) -> &SidecarDigest {
        &self.digest
    }

    /// The volume that holds this content.
    pub fn volume_name(&self) -> String {
        format!("oz-sidecar-{}", self.digest.short())
    }

    fn tar(&self) -> Result<Bytes, std::io::Error> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs = HashSet::new();
        for (path, mode, content) in &self.files {
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if dirs.insert(p.to_owned()) {
                    missing.push(p.to_owned());
                }
                parent = p.parent();
            }
            for dir in missing.into_iter().rev() {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &dir, std::io::empty())?;
            }
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(content.len() as u64);
            builder.append_data(&mut header, path, &content[..])?;
        }
        Ok(Bytes::from(builder.into_inner()?))
    }
}

fn marker_tar() -> Result<Bytes, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(0);
    builder.append_data(&mut header, COMPLETE_MARKER, std::io::empty())?;
    Ok(Bytes::from(builder.into_inner()?))
}

fn prep_error(message: impl Into<String>) -> BackendError {
    BackendError::new(FailureReason::SidecarPrep, message)
}

/// Materializes sidecar content into volumes, once per digest per engine.
#[derive(Debug, Default)]
pub struct SidecarVolumes {
    worker_id: String,
    ready: tokio::sync::Mutex<HashMap<String, ()>>,
}

impl SidecarVolumes {
    /// Volumes this worker makes are labelled with its id (other workers' are never collected by it).
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self { worker_id: worker_id.into(), ready: Default::default() }
    }

    /// Makes sure the volume for `content` exists and is complete; returns its name. The first task to
    /// need a digest pays for it (one upload); every later task reuses the volume.
    pub async fn ensure(
        &self,
        docker: &Docker,
        content: &SidecarContent,
        image: &ImageRef,
        events: &EventSender,
    ) -> Result<String, BackendError> {
        let name = content.volume_name();
        // Held across the preparation: two tasks needing the same new digest prepare it once.
        let mut ready = self.ready.lock().await;
        // Cheap insurance against the volume having been removed behind our back.
        if ready.contains_key(&name) && docker.inspect_volume(&name).await.is_ok() {
            return Ok(name);
        }
        let probe = ProbeContainer::create(docker, &name, image, &self.worker_id).await?;
        let result = async {
            let complete = docker
                .get_container_archive_info(&probe.id, Some(archive_path(&format!("/agent/{COMPLETE_MARKER}"))))
                .await
                .is_ok();
            if !complete {
                events.emit(TaskEvent::Progress(format!("preparing sidecar {}", content.digest().short()))).await;
                let tar = content.tar().map_err(|e| prep_error(format!("could not pack the sidecar: {e}")))?;
                upload(docker, &probe.id, tar).await?;
                let marker = marker_tar().map_err(|e| prep_error(format!("could not pack the sidecar: {e}")))?;
                upload(docker, &probe.id, marker).await?;
            }
            Ok::<(), BackendError>(())
        }
        .await;
        probe.remove(docker).await;
        result?;
        ready.insert(name.clone(), ());
        Ok(name)
    }
}

fn archive_path(path: &str) -> bollard::query_parameters::ContainerArchiveInfoOptions {
    bollard::query_parameters::ContainerArchiveInfoOptionsBuilder::default().path(path).build()
}

async fn upload(docker: &Docker, container: &str, tar: Bytes) -> Result<(), BackendError> {
    let options = UploadToContainerOptionsBuilder::default().path("/agent").build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(tar))
        .await
        .map_err(|e| prep_error(format!("could not upload the sidecar: {}", describe(&e))))
}

/// A created, never started container of the task's image with the sidecar volume at `/agent`.
struct ProbeContainer {
    id: String,
}

impl ProbeContainer {
    async fn create(docker: &Docker, volume: &str, image: &ImageRef, worker_id: &str) -> Result<Self, BackendError> {
        let mut labels = HashMap::new();
        labels.insert(labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned());
        labels.insert(labels::WORKER_ID.to_owned(), worker_id.to_owned());
        labels.insert(DIGEST_LABEL.to_owned(), volume.to_owned());
        let volume_request =
            VolumeCreateRequest { name: Some(volume.to_owned()), labels: Some(labels.clone()), ..Default::default() };
        // Creating an existing volume is a no-op that returns it.
        docker
            .create_volume(volume_request)
            .await
            .map_err(|e| prep_error(format!("could not create volume {volume}: {}", describe(&e))))?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/agent/bin/oz".into()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{volume}:/agent")]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(None::<bollard::query_parameters::CreateContainerOptions>, body)
            .await
            .map_err(|e| prep_error(format!("could not create the sidecar container: {}", describe(&e))))?;
        Ok(Self { id: created.id })
    }

    async fn remove(self, docker: &Docker) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = docker.remove_container(&self.id, Some(options)).await {
            tracing::warn!(container = %self.id, "could not remove the sidecar container: {}", describe(&e));
        }
    }
}

/// Removes the sidecar volumes this worker made for other content that no container uses; returns
/// their names. (A volume is shared by every worker of the engine with the same content; only the
/// worker that made it collects it.)
pub async fn collect_garbage(docker: &Docker, worker_id: &str, keep: Option<&str>) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert("label".to_owned(), vec![DIGEST_LABEL.to_owned(), format!("{}={worker_id}", labels::WORKER_ID)]);
    let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
    let Ok(list) = docker.list_volumes(Some(options)).await else { return Vec::new() };
    let mut removed = Vec::new();
    for volume in list.volumes.unwrap_or_default() {
        if Some(volume.name.as_str()) == keep {
            continue;
        }
        // An engine refuses to remove a volume in use: that one stays.
        if docker.remove_volume(&volume.name, None::<RemoveVolumeOptions>).await.is_ok() {
            removed.push(volume.name);
        }
    }
    removed
}
