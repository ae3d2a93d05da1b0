//! A typed async client of the oz REST API (wire-compatible with the Oz Agent API), shaped like
//! octocrab: [`Client::builder`], one handle per API area, builders ending in `.send().await`, list
//! calls as [`Stream`](futures::Stream)s that follow cursors, and a run's events as a stream that
//! resumes after a dropped connection.
//!
//! ```no_run
//! use futures::StreamExt;
//!
//! # async fn demo() -> oz_sdk::Result<()> {
//! // Defaults: WARP_API_KEY and OZ_API_BASE_URL, as the official Oz SDKs.
//! let client = oz_sdk::Client::builder().base_url("http://127.0.0.1:8080").api_key("oz_...").build()?;
//! let run = client.runs().create("fix the flaky test").worker_host("my-worker").send().await?;
//! let mut events = Box::pin(client.runs().events(&run.run_id));
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?.kind());
//! }
//! # Ok(()) }
//! ```
//!
//! Errors are one type, [`Error`], carrying the server's problem document, or the cause it kept
//! (`source()`). Idempotent calls (GET, PUT, DELETE) are retried with backoff
//! ([`oz_core::retry::RetryPolicy`]) on 429, 5xx and connection errors; creating is not.
//!
//! [`AgentClient`] is the API as one run sees it, with the run's workload token: its reports, its
//! environment and its prompt. The in-sandbox runner (`oz-runner`) talks to the control plane with it.

mod agent;
mod client;
mod environments;
mod error;
mod http;
mod integrations;
mod runs;
mod schedules;
mod secrets;
mod session;
mod workers;

pub use agent::{AgentClient, AgentClientBuilder};
pub use client::{Client, ClientBuilder, DEFAULT_BASE_URL};
pub use environments::EnvironmentsHandler;
pub use error::{Error, Result};
pub use integrations::{CreateIntegration, IntegrationsHandler};
pub use oz_core::wire;
pub use runs::{CreateRun, ListRuns, RunsHandler};
pub use schedules::{CreateSchedule, SchedulesHandler};
pub use secrets::{GitProvidersHandler, SecretsHandler};
pub use session::{Session, SessionFrame};
pub use workers::{Worker, WorkersHandler};
