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

#[derive(serde::Deserialize)]
struct Told {
    workers_told: usize,
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

    /// Tells the team's workers that `repos` were pushed to (`POST /repos/pushed`), so their warm
    /// sandboxes of those repos are replaced now; how many worker connections were told.
    pub async fn repos_pushed(&self, repos: &[oz_core::environment::RepoRef]) -> Result<usize> {
        let body = oz_core::wire::worker::ReposMoved { repos: repos.to_vec() };
        Ok(self.client.call_json::<_, Told>(Method::POST, "/repos/pushed", &body).await?.workers_told)
    }
}
