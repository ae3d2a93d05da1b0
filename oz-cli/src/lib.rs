//! The `oz` command, as a library: one binary for the sidecar and for people. The runner's commands
//! (`oz agent run`, `oz agent egress-proxy`, `oz agent git-credential`) come from `oz-runner`; this
//! crate adds the API client commands (`oz agent run-cloud`, `oz run`, `oz schedule`, ...; feature
//! `api-client`) and the local stack (`oz local`; feature `local-stack`). Both features are off in
//! the static sidecar build.

pub mod cli;
#[cfg(feature = "local-stack")]
pub mod local;
#[cfg(feature = "api-client")]
pub mod remote;
