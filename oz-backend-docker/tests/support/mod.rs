//! Shared by the Docker tests: reaching the engine (skipping loudly when there is none, unless
//! `OZ_REQUIRE_DOCKER=1`), the local test images, and finding what a task left behind.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder};
use oz_backend_docker::{DockerBackend, DockerConfig};

/// A bare busybox: no git, no CA certificates, no package manager.
pub const BUSYBOX: &str = "oz-test/busybox:latest";
/// Debian with git.
pub const DEBIAN_GIT: &str = "oz-test/debian-git:latest";

/// Connects, or returns `None` after saying loudly why the test is skipped. With
/// `OZ_REQUIRE_DOCKER=1` a missing engine or image fails instead.
pub async fn backend(config: DockerConfig, image: &str) -> Option<DockerBackend> {
    let required = std::env::var("OZ_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let backend = match DockerBackend::connect(config).await {
        Ok(b) => b,
        Err(e) => {
            if required {
                panic!("OZ_REQUIRE_DOCKER=1 but the Docker engine is not usable: {e}");
            }
            eprintln!(
                "\n*** SKIPPED: no usable Docker engine ({e}). Set OZ_REQUIRE_DOCKER=1 to make this a failure. ***\n"
            );
            return None;
        }
    };
    if backend.docker().inspect_image(image).await.is_err() {
        let message = format!("the test image {image} is missing: run .ci/prepare-docker.sh");
        if required {
            panic!("OZ_REQUIRE_DOCKER=1 but {message}");
        }
        eprintln!("\n*** SKIPPED: {message} ***\n");
        return None;
    }
    Some(backend)
}

/// The static sidecar (`target/sidecar/oz`), or `None` after saying loudly why the test is skipped
/// (a failure instead with `OZ_REQUIRE_DOCKER=1`).
pub fn sidecar() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sidecar/oz");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("OZ_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!(
            "OZ_REQUIRE_DOCKER=1 but there is no static sidecar at {} (scripts/build-sidecar-oz.sh)",
            path.display()
        );
    }
    eprintln!("\n*** SKIPPED: no static sidecar at {} (run scripts/build-sidecar-oz.sh) ***\n", path.display());
    None
}

/// Containers, volumes and networks labelled with `key=value`.
pub async fn labelled(docker: &Docker, key: &str, value: &str) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert("label".to_owned(), vec![format!("{key}={value}")]);
    let mut found = Vec::new();
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    for c in docker.list_containers(Some(options)).await.unwrap() {
        found.push(format!("container {}", c.names.unwrap_or_default().join(",")));
    }
    let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
    for v in docker.list_volumes(Some(options)).await.unwrap().volumes.unwrap_or_default() {
        found.push(format!("volume {}", v.name));
    }
    let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
    for n in docker.list_networks(Some(options)).await.unwrap() {
        found.push(format!("network {}", n.name.unwrap_or_default()));
    }
    found
}
