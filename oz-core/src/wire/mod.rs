//! Wire types: one definition of every JSON shape, shared by the server, the worker and the SDK.
//!
//! - [`worker`]: the worker WebSocket protocol (`task_assignment`, `task_claimed`, ...).
//! - [`api`]: the REST API bodies (runs, schedules, environments).
//! - [`problem`]: RFC 7807 problem documents.
//! - [`callbacks`]: what the in-sandbox runner reports to the control plane (our extension).
//! - [`admin`]: teams, users, roles and credentials (our extension).
//! - [`secrets`]: team secrets, write-only (our extension).
//! - [`session`]: a live session's viewer protocol (our extension).

pub mod admin;
pub mod api;
pub mod callbacks;
pub mod problem;
pub mod secrets;
pub mod session;
pub mod worker;
