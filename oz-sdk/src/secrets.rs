//! Team secrets (write-only: names come back, values never) and the team's git providers (how runs
//! get short-lived git credentials). Our extension; setting either takes an admin's key.

use oz_core::wire::admin::{GitProvider, GitProviderItem, GitProviderList};
use oz_core::wire::secrets::{SecretItem, SecretList, SecretWrite};
use reqwest::Method;

use crate::client::Client;
use crate::error::Result;
use crate::http::seg;

/// `client.secrets()`.
#[derive(Debug, Clone)]
pub struct SecretsHandler {
    client: Client,
}

/// `client.git_providers()`.
#[derive(Debug, Clone)]
pub struct GitProvidersHandler {
    client: Client,
}

impl Client {
    /// Team secrets.
    pub fn secrets(&self) -> SecretsHandler {
        SecretsHandler { client: self.clone() }
    }
    /// The team's git providers, by git host.
    pub fn git_providers(&self) -> GitProvidersHandler {
        GitProvidersHandler { client: self.clone() }
    }
}

impl SecretsHandler {
    /// The team's secrets (names and dates only).
    pub async fn list(&self) -> Result<Vec<SecretItem>> {
        Ok(self.client.call::<SecretList>(Method::GET, "/secrets").await?.secrets)
    }
    /// Sets `name` to `value`, creating or replacing it.
    pub async fn set(&self, name: &str, value: &str) -> Result<SecretItem> {
        let body = SecretWrite { value: value.to_owned() };
        self.client.call_json(Method::PUT, &format!("/secrets/{}", seg(name)), &body).await
    }
    /// Deletes `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client.call::<serde_json::Value>(Method::DELETE, &format!("/secrets/{}", seg(name))).await.map(drop)
    }
}

impl GitProvidersHandler {
    /// The configured providers.
    pub async fn list(&self) -> Result<Vec<GitProviderItem>> {
        Ok(self.client.call::<GitProviderList>(Method::GET, "/admin/git-providers").await?.git_providers)
    }
    /// Sets the provider for git host `host` (`github.com`, `gitlab.example.com:8443`).
    pub async fn set(&self, host: &str, provider: &GitProvider) -> Result<GitProviderItem> {
        self.client.call_json(Method::PUT, &format!("/admin/git-providers/{}", seg(host)), provider).await
    }
    /// Removes the provider for `host`.
    pub async fn delete(&self, host: &str) -> Result<()> {
        self.client
            .call::<serde_json::Value>(Method::DELETE, &format!("/admin/git-providers/{}", seg(host)))
            .await
            .map(drop)
    }
}
