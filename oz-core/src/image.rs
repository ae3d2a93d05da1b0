//! Container image references (`[registry[:port]/]path[:tag][@digest]`) and the image-resolution rule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The image a task runs in when neither the assignment nor the backend names one (Oz's default).
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";

/// The longest full reference accepted.
pub const MAX_IMAGE_REF_LEN: usize = 512;

/// A parsed, validated image reference, following the grammar of the distribution reference
/// (`docker/distribution/reference`): lowercase path components separated by `/`, an optional registry
/// host (with a `.` or a port, or `localhost`), an optional tag and an optional digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference such as `ubuntu:22.04`, `ghcr.io/acme/env:1@sha256:<64 hex>` or
    /// `localhost:5000/tools`.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let field = "docker_image";
        if input.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if input.len() > MAX_IMAGE_REF_LEN {
            return Err(Error::invalid(
                field,
                format!("is {} bytes long; the limit is {MAX_IMAGE_REF_LEN}", input.len()),
            ));
        }
        if let Some(c) = input.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid(field, format!("{input:?} contains {c:?}")));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&rest[..split], Some(parse_tag(&rest[split + 1..])?))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(Error::invalid(field, format!("{input:?} has no repository name")));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (Some(parse_registry(first)?), remainder)
            }
            _ => (None, name),
        };
        if path.len() > 255 {
            return Err(Error::invalid(field, "the repository path is longer than 255 bytes"));
        }
        for component in path.split('/') {
            check_path_component(component, input)?;
        }
        Ok(ImageRef { registry, path: path.to_owned(), tag, digest })
    }

    /// An image named by optional text (an assignment's or an environment's `docker_image`): `None`
    /// when absent or blank.
    pub fn parse_optional(input: Option<&str>) -> Result<Option<Self>, Error> {
        input.map(str::trim).filter(|i| !i.is_empty()).map(Self::parse).transpose()
    }

    /// The registry host (with port), if one was given.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }
    /// The repository path (`library/ubuntu`, `acme/env`).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// The digest (`sha256:...`), if one was given.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    /// The repository with its registry, without tag or digest (`ghcr.io/acme/env`).
    pub fn repository(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.path),
            None => self.path.clone(),
        }
    }
    /// The tag to pull: the given tag, or `latest` when neither tag nor digest was given.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }
}

fn parse_digest(digest: &str) -> Result<String, Error> {
    let field = "docker_image";
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(Error::invalid(field, format!("digest {digest:?} must look like sha256:<hex>")));
    };
    let algorithm_ok = algorithm.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && algorithm.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-'));
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !algorithm_ok || !hex_ok {
        return Err(Error::invalid(field, format!("digest {digest:?} must look like sha256:<lowercase hex>")));
    }
    if algorithm == "sha256" && hex.len() != 64 {
        return Err(Error::invalid(field, "a sha256 digest has exactly 64 hex digits"));
    }
    Ok(digest.to_owned())
}

fn parse_tag(tag: &str) -> Result<String, Error> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(Error::invalid(
            "docker_image",
            format!("tag {tag:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"),
        ));
    }
    Ok(tag.to_owned())
}

fn parse_registry(host: &str) -> Result<String, Error> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let labels_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.chars().all(|c| c.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    if !labels_ok || !port_ok {
        return Err(Error::invalid(
            "docker_image",
            format!("registry {host:?} must be a host name with an optional port (1-65535)"),
        ));
    }
    Ok(host.to_owned())
}

fn check_path_component(component: &str, input: &str) -> Result<(), Error> {
    // alpha-numeric ( separator alpha-numeric )*, separator = [_.] | __ | [-]+
    let bytes = component.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
        && !component.contains("..")
        && !component.contains("___")
        && !component.contains("._")
        && !component.contains("_.")
        && !component.contains(".-")
        && !component.contains("-.");
    if !valid {
        return Err(Error::invalid(
            "docker_image",
            format!(
                "{input:?}: path component {component:?} must be lowercase letters and digits joined by '.', '_', '__' or '-'"
            ),
        ));
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// When a backend pulls a task's image. Reads Docker's spellings (`always`, `if-not-present`, `never`)
/// and Kubernetes' (`Always`, `IfNotPresent`, `Never`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Pull before every task (the registry is asked each time; layers already present are reused).
    Always,
    /// Pull only when the image is not present (the default).
    #[default]
    IfNotPresent,
    /// Never pull: a missing image fails the task as `invalid_image`.
    Never,
}

impl PullPolicy {
    /// Kubernetes' spelling, for `imagePullPolicy`.
    pub fn as_kubernetes(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        })
    }
}

impl FromStr for PullPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" | "Always" => Ok(Self::Always),
            "if-not-present" | "IfNotPresent" | "if_not_present" => Ok(Self::IfNotPresent),
            "never" | "Never" => Ok(Self::Never),
            other => Err(Error::invalid(
                "pull_policy",
                format!("{other:?} is not a pull policy: expected always, if-not-present or never"),
            )),
        }
    }
}

impl Serialize for PullPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PullPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Picks the image a task runs in, with Oz's precedence: the assignment's image, else the backend's
/// default image, else [`DEFAULT_IMAGE`]. An empty or whitespace-only assignment image counts as absent
/// (the Oz server sends `""` for "no image"); anything else must parse.
pub fn resolve_image(assignment: Option<&str>, backend_default: Option<&ImageRef>) -> Result<ImageRef, Error> {
    match assignment.map(str::trim).filter(|s| !s.is_empty()) {
        Some(image) => ImageRef::parse(image),
        None => match backend_default {
            Some(image) => Ok(image.clone()),
            None => ImageRef::parse(DEFAULT_IMAGE),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_usual_shapes() {
        let r = ImageRef::parse("ubuntu:22.04").unwrap();
        assert_eq!((r.registry(), r.path(), r.tag(), r.digest()), (None, "ubuntu", Some("22.04"), None));
        let r = ImageRef::parse("localhost:5000/acme/tools").unwrap();
        assert_eq!((r.registry(), r.path(), r.tag()), (Some("localhost:5000"), "acme/tools", None));
        assert_eq!(r.tag_or_latest(), Some("latest"));
        let full = format!("ghcr.io/acme/env-base:v1.2@{DIGEST}");
        let r = ImageRef::parse(&full).unwrap();
        assert_eq!(r.registry(), Some("ghcr.io"));
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(r.to_string(), full);
        let r = ImageRef::parse(&format!("busybox@{DIGEST}")).unwrap();
        assert_eq!(r.tag_or_latest(), None);
        ImageRef::parse("registry.example.com:443/a__b/c-d/e.f:latest").unwrap();
        ImageRef::parse("oz-test/busybox:1").unwrap();
    }

    #[test]
    fn refuses_hostile_or_malformed_references() {
        for bad in [
            "",
            "Ubuntu",
            "ubuntu:",
            ":tag",
            "ubuntu:-x",
            "../etc/passwd",
            "a/../b",
            "/abs",
            "a//b",
            "ubuntu 22.04",
            "ubuntu\n",
            "ubuntu@sha256:abc",
            "ubuntu@md5",
            "host:99999/a",
            "host:/a",
            "-host.com/a",
            "a_",
            "a.-b",
            &format!("a:{}", "t".repeat(129)),
            &"a".repeat(600),
            "a;rm -rf /",
            "$(id)",
        ] {
            let err = ImageRef::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid docker_image"), "{err}");
        }
    }

    #[test]
    fn resolution_follows_oz_precedence() {
        let backend = ImageRef::parse("acme/default:1").unwrap();
        assert_eq!(resolve_image(Some("alpine:3"), Some(&backend)).unwrap().to_string(), "alpine:3");
        assert_eq!(resolve_image(None, Some(&backend)).unwrap(), backend);
        assert_eq!(resolve_image(Some("  "), Some(&backend)).unwrap(), backend);
        assert_eq!(resolve_image(None, None).unwrap().to_string(), "ubuntu:22.04");
        assert!(resolve_image(Some("Bad Image"), Some(&backend)).is_err());
    }

    #[test]
    fn pull_policies_read_both_spellings() {
        for (text, policy) in [
            ("always", PullPolicy::Always),
            ("Always", PullPolicy::Always),
            ("if-not-present", PullPolicy::IfNotPresent),
            ("IfNotPresent", PullPolicy::IfNotPresent),
            ("never", PullPolicy::Never),
            ("Never", PullPolicy::Never),
        ] {
            assert_eq!(serde_json::from_str::<PullPolicy>(&format!("{text:?}")).unwrap(), policy);
        }
        let e = serde_json::from_str::<PullPolicy>("\"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("if-not-present"), "{e}");
        assert_eq!(PullPolicy::IfNotPresent.as_kubernetes(), "IfNotPresent");
    }

    #[test]
    fn round_trips_through_serde() {
        let r: ImageRef = serde_json::from_str("\"ghcr.io/a/b:1\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"ghcr.io/a/b:1\"");
        assert!(serde_json::from_str::<ImageRef>("\"../x\"").is_err());
    }
}
