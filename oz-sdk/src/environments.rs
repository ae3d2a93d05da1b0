//! Environments: list (as Oz), and our extension: create, get, update, delete.

use oz_core::environment::EnvironmentConfig;
use oz_core::wire::api::{CloudEnvironment, EnvironmentList};
use reqwest::Method;

use crate::client::Client;
use crate::error::Result;
use crate::http::seg;

/// `client.environments()`.
#[derive(Debug, Clone)]
pub struct EnvironmentsHandler {
    client: Client,
}

impl Client {
    /// Environments.
    pub fn environments(&self) -> EnvironmentsHandler {
        EnvironmentsHandler { client: self.clone() }
    }
}

impl EnvironmentsHandler {
    /// All environments.
    pub async fn list(&self) -> Result<Vec<CloudEnvironment>> {
        Ok(self.client.call::<EnvironmentList>(Method::GET, "/agent/environments").await?.environments)
    }
    /// Creates one (validated locally first, so a bad config fails without a round trip).
    pub async fn create(&self, config: &EnvironmentConfig) -> Result<CloudEnvironment> {
        config.validate().map_err(|e| crate::Error::Config(e.to_string()))?;
        self.client.call_json(Method::POST, "/agent/environments", config).await
    }
    /// One environment.
    pub async fn get(&self, id: &str) -> Result<CloudEnvironment> {
        self.client.call(Method::GET, &format!("/agent/environments/{}", seg(id))).await
    }
    /// One environment, with a worker credential (a worker preparing warm sandboxes).
    pub async fn get_for_worker(&self, id: &str) -> Result<CloudEnvironment> {
        self.client.call(Method::GET, &format!("/selfhosted/worker/environments/{}", seg(id))).await
    }
    /// Read-only git credentials for one's repositories, with a worker credential: for the worker's
    /// own git (its mirrors, its warm pools' HEAD checks), never a sandbox's.
    pub async fn preparation_credentials(&self, id: &str) -> Result<oz_core::wire::callbacks::PreparationCredentials> {
        self.client
            .call_json(
                Method::POST,
                &oz_core::wire::callbacks::preparation_credentials_path(&seg(id)),
                &serde_json::json!({}),
            )
            .await
    }
    /// Replaces one's config.
    pub async fn update(&self, id: &str, config: &EnvironmentConfig) -> Result<CloudEnvironment> {
        self.client.call_json(Method::PUT, &format!("/agent/environments/{}", seg(id)), config).await
    }
    /// Deletes one.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.client
            .call::<serde_json::Value>(Method::DELETE, &format!("/agent/environments/{}", seg(id)))
            .await
            .map(drop)
    }
}
