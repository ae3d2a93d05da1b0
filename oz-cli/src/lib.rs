//! The `oz` command, as a library: the agent runner (`oz agent run`) and its parts, the API client
//! commands (`oz agent run-cloud`, `oz run`, `oz schedule`, ...; feature `api-client`) and the local
//! stack (feature `local-stack`).
//!
//! ```
//! use oz_cli::agent::harness::Harness;
//! // The argv of a preset harness for a prompt.
//! let argv = Harness::Codex.argv("fix the flaky test", None);
//! assert_eq!(argv[0], "codex");
//! ```

pub mod agent;
pub mod cli;
pub mod egress;
#[cfg(feature = "local-stack")]
pub mod local;
#[cfg(feature = "api-client")]
pub mod remote;
