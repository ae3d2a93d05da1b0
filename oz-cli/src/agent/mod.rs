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

/// Installs the process's rustls crypto provider (ring), once, before any HTTP client is built (ours
/// and the built-in git's). Installing it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
