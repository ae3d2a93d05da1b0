//! Triggers where people work, against faithful fakes of each provider's API: one test binary for
//! the three providers (each a module), so CI links it once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod github;
mod linear;
mod slack;
