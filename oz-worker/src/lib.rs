//! The worker daemon (`oz-agent-worker`): connects to the control plane, claims tasks, runs them on a
//! backend, reports their outcome.
//!
//! **Status: not yet implemented.** It arrives with the worker issue.
//!
//! ```
//! // Nothing to call yet.
//! ```
