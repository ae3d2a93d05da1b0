//! A typed async client of the oz (and Oz) REST API.
//!
//! **Status: not yet implemented.** The wire types it will use already live in `oz_core::wire`.
//!
//! ```
//! use oz_core::wire::api::RunAgentRequest;
//! let request = RunAgentRequest { prompt: Some("fix the flaky test".into()), ..Default::default() };
//! assert!(serde_json::to_string(&request).is_ok());
//! ```
