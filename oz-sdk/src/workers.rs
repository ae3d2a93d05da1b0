//! Workers (our extension): the team's connected workers and their load.

use reqwest::Method;

use crate::client::Client;
use crate::error::Result;

/// A connected worker, with its warm pools.
pub use oz_core::wire::worker::ConnectedWorker as Worker;

#[derive(serde::Deserialize)]
struct WorkerList {
    workers: Vec<Worker>,
}

/// `client.workers()`.
#[derive(Debug, Clone)]
pub struct WorkersHandler {
    client: Client,
}

impl Client {
    /// Workers.
    pub fn workers(&self) -> WorkersHandler {
        WorkersHandler { client: self.clone() }
    }
}

impl WorkersHandler {
    /// The connected workers.
    pub async fn list(&self) -> Result<Vec<Worker>> {
        Ok(self.client.call::<WorkerList>(Method::GET, "/workers").await?.workers)
    }
}
