//! The Kubernetes backend: one Job per task, failure detection from watches, reattach after restarts.
//!
//! **Status: not yet implemented.** A placeholder in the workspace; the backend arrives with the
//! Kubernetes issue. It exports nothing yet.
//!
//! ```
//! // Nothing to call yet.
//! ```
