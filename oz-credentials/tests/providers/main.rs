//! The providers over real HTTP on loopback, against fakes of GitHub's and GitLab's APIs that check
//! each request as the providers document them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unreachable_pub)]

mod fake_gitlab;
mod github;
mod gitlab;
mod static_provider;
mod support;
