//! Test support: faithful fakes of the providers' HTTP APIs the server talks to, each an axum
//! server on a loopback port of the current tokio runtime that checks every request as the
//! provider documents it and answers as the provider does.
//!
//! - [`slack::FakeSlack`]: the Slack Web API (`chat.postMessage`, `chat.update`,
//!   `chat.postEphemeral`, `conversations.replies`);
//! - [`linear::FakeLinear`]: Linear's GraphQL API (`issue`, `commentCreate`, `commentUpdate`,
//!   `issueUpdate`), with queries parsed and validated;
//! - [`github::FakeGitHub`]: GitHub's REST API for an App (App JWTs, installation tokens, issue
//!   comments).
//!
//! Each fake records every request ([`Recorded`]), lists the documented rules requests broke
//! (`violations()`, so tests can assert it is empty), answers injected failures
//! (`fail_next(n, Failure)`) the way its provider does, and waits for a condition (`wait_for`).
//! Each module also has the provider's webhook or request signing (`sign`).
//!
//! ```no_run
//! # async fn demo() {
//! let slack = oz_provider_fakes::slack::FakeSlack::start("xoxb-test").await;
//! // point the code under test at slack.base_url() (`http://127.0.0.1:PORT/api`)
//! assert!(slack.violations().is_empty());
//! # }
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod common;
pub mod github;
pub mod linear;
pub mod slack;

pub use common::{Failure, Recorded};
