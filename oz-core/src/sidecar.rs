//! The sidecar: our tooling mounted into every sandbox at `/agent`, so any base image can run a task.
//!
//! Layout of the mount:
//!
//! | path | what |
//! |---|---|
//! | `/agent/entrypoint.sh` | the task's entry point: `exec /agent/bin/oz "$@"` |
//! | `/agent/bin/oz` | the statically linked runner (`oz agent run`) |
//! | `/agent/certs/ca-certificates.crt` | a CA bundle, for images that have none |
//! | `/agent/VERSION` | the digest of the content, for humans |
//!
//! A materialized sidecar (a Docker volume, a folder) is named by the digest of its content, so it is
//! prepared once per content and shared by every task that uses the same content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::image::ImageRef;
use crate::validate;

/// Where the sidecar is mounted in every sandbox.
pub const SIDECAR_MOUNT: &str = "/agent";

/// The layout of the sidecar under a mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarLayout {
    mount: String,
}

impl Default for SidecarLayout {
    fn default() -> Self {
        Self { mount: SIDECAR_MOUNT.to_owned() }
    }
}

impl SidecarLayout {
    /// A layout under another mount point (tests, the Direct backend's local folder).
    pub fn at(mount: impl Into<String>) -> Result<Self, Error> {
        let mount = mount.into();
        validate::absolute_path("sidecar mount", &mount)?;
        Ok(Self { mount: mount.trim_end_matches('/').to_owned() })
    }
    /// The mount point.
    pub fn mount(&self) -> &str {
        &self.mount
    }
    /// The entry point every task runs.
    pub fn entrypoint(&self) -> String {
        format!("{}/entrypoint.sh", self.mount)
    }
    /// The folder of binaries, put first on `PATH`.
    pub fn bin_dir(&self) -> String {
        format!("{}/bin", self.mount)
    }
    /// The runner binary.
    pub fn oz_binary(&self) -> String {
        format!("{}/bin/oz", self.mount)
    }
    /// The CA bundle.
    pub fn ca_bundle(&self) -> String {
        format!("{}/certs/ca-certificates.crt", self.mount)
    }
    /// The variables the sidecar adds to a task: `PATH` with the sidecar's bin folder first, and
    /// `SSL_CERT_FILE` pointing at the bundled CAs (only when the image has no bundle of its own;
    /// the backend decides, passing `image_has_ca_bundle`).
    pub fn env(&self, image_path: &str, image_has_ca_bundle: bool) -> Vec<(String, String)> {
        let mut env = vec![("PATH".to_owned(), format!("{}:{image_path}", self.bin_dir()))];
        if !image_has_ca_bundle {
            env.push(("SSL_CERT_FILE".to_owned(), self.ca_bundle()));
        }
        env
    }
    /// The content of `entrypoint.sh`.
    pub fn entrypoint_script(&self) -> String {
        format!("#!/bin/sh\nexec {} \"$@\"\n", self.oz_binary())
    }
}

/// The `PATH` used when an image does not say otherwise.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One more sidecar, from the assignment's `additional_sidecars`: an image whose content is mounted at
/// `mount_path`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdditionalSidecar {
    /// The image providing the content.
    pub image: String,
    /// Where it is mounted in the sandbox.
    pub mount_path: String,
    /// Whether the task may write to it.
    #[serde(default)]
    pub read_write: bool,
}

impl AdditionalSidecar {
    /// Validates the image reference and the mount path (absolute, no `..`, not `/`, not `/agent`
    /// nor anything under it, not `/workspace`).
    pub fn validate(&self) -> Result<ImageRef, Error> {
        let image = ImageRef::parse(&self.image).map_err(|e| e.within("additional_sidecars"))?;
        validate::absolute_path("additional_sidecars.mount_path", &self.mount_path)?;
        let normalized = self.mount_path.trim_end_matches('/');
        if normalized == SIDECAR_MOUNT || normalized.starts_with("/agent/") || normalized == "/workspace" {
            return Err(Error::invalid("additional_sidecars.mount_path", format!("{normalized} is reserved")));
        }
        Ok(image)
    }
}

/// One file of a sidecar's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarFile {
    /// Path relative to the mount point.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// The SHA-256 of the content.
    pub sha256: [u8; 32],
    /// The size in bytes.
    pub len: u64,
}

impl SidecarFile {
    /// Describes `content` at `path` (relative, validated).
    pub fn new(path: &str, mode: u32, content: &[u8]) -> Result<Self, Error> {
        validate::relative_path("sidecar file", path)?;
        Ok(Self { path: path.to_owned(), mode, sha256: Sha256::digest(content).into(), len: content.len() as u64 })
    }
}

/// The content of a sidecar, as a set of files, and the digest that names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarManifest {
    files: BTreeMap<String, SidecarFile>,
}

impl SidecarManifest {
    /// Adds or replaces a file.
    pub fn insert(&mut self, file: SidecarFile) {
        self.files.insert(file.path.clone(), file);
    }
    /// The files, ordered by path.
    pub fn files(&self) -> impl Iterator<Item = &SidecarFile> {
        self.files.values()
    }
    /// A digest over paths, modes and contents, independent of insertion order: `sha256:<hex>`.
    pub fn digest(&self) -> SidecarDigest {
        let mut hasher = Sha256::new();
        for file in self.files.values() {
            hasher.update((file.path.len() as u64).to_be_bytes());
            hasher.update(file.path.as_bytes());
            hasher.update(file.mode.to_be_bytes());
            hasher.update(file.len.to_be_bytes());
            hasher.update(file.sha256);
        }
        SidecarDigest(hex(&hasher.finalize()))
    }
}

/// The name of a materialized sidecar: the hex SHA-256 of its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SidecarDigest(String);

impl SidecarDigest {
    /// The full hex digest.
    pub fn as_hex(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for names such as `oz-sidecar-<short>`.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for SidecarDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths_and_env() {
        let layout = SidecarLayout::default();
        assert_eq!(layout.entrypoint(), "/agent/entrypoint.sh");
        assert_eq!(layout.oz_binary(), "/agent/bin/oz");
        assert_eq!(
            layout.env("/usr/bin:/bin", false),
            vec![
                ("PATH".to_owned(), "/agent/bin:/usr/bin:/bin".to_owned()),
                ("SSL_CERT_FILE".to_owned(), "/agent/certs/ca-certificates.crt".to_owned())
            ]
        );
        assert_eq!(layout.env("/bin", true).len(), 1);
        assert_eq!(layout.entrypoint_script(), "#!/bin/sh\nexec /agent/bin/oz \"$@\"\n");
        assert!(SidecarLayout::at("relative").is_err());
    }

    #[test]
    fn digest_depends_on_content_mode_and_path_not_order() {
        let a = SidecarFile::new("bin/oz", 0o755, b"binary").unwrap();
        let b = SidecarFile::new("entrypoint.sh", 0o755, b"#!/bin/sh").unwrap();
        let mut m1 = SidecarManifest::default();
        m1.insert(a.clone());
        m1.insert(b.clone());
        let mut m2 = SidecarManifest::default();
        m2.insert(b.clone());
        m2.insert(a.clone());
        assert_eq!(m1.digest(), m2.digest());
        assert_eq!(m1.digest().as_hex().len(), 64);
        let mut m3 = m1.clone();
        m3.insert(SidecarFile::new("bin/oz", 0o755, b"binary2").unwrap());
        assert_ne!(m1.digest(), m3.digest());
        let mut m4 = m1.clone();
        m4.insert(SidecarFile::new("bin/oz", 0o700, b"binary").unwrap());
        assert_ne!(m1.digest(), m4.digest());
        assert!(SidecarFile::new("../x", 0o644, b"").is_err());
    }

    #[test]
    fn additional_sidecars_are_validated() {
        let ok = AdditionalSidecar { image: "acme/tools:1".into(), mount_path: "/opt/tools".into(), read_write: false };
        ok.validate().unwrap();
        for mount in ["/agent", "/agent/x", "/workspace", "relative", "/", "/a/../agent"] {
            let s = AdditionalSidecar { mount_path: mount.into(), ..ok.clone() };
            assert!(s.validate().is_err(), "{mount}");
        }
        let json = serde_json::json!({"image": "a/b", "mount_path": "/m"});
        let parsed: AdditionalSidecar = serde_json::from_value(json).unwrap();
        assert!(!parsed.read_write);
    }
}
