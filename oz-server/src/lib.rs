//! The control plane: REST API, worker WebSocket endpoint, dispatcher, scheduler, persistence.
//!
//! **Status: not yet implemented.** It arrives with the control-plane issue.
//!
//! ```
//! // Nothing to call yet.
//! ```
