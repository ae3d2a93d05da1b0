//! `oz agent run`: the program that runs inside every sandbox, and unmanaged anywhere.
//!
//! It clones the environment's repos (in parallel, partial clones, credentials through a helper),
//! runs the setup commands, starts the harness (`command`, `claude`, `codex`, `gemini`), prints a
//! structured event log, and, given a server URL and a workload token, reports progress, artifacts
//! and the end of the run to the control plane through [`control::ControlPlane`].

pub mod args;
pub mod clone;
pub mod control;
pub mod credentials;
pub mod exec;
pub mod harness;
pub mod log;
pub mod runner;
