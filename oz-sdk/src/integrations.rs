//! Integrations (our extension): named triggers fired by signed webhooks, Slack, Linear or GitHub.
//!
//! ```no_run
//! # async fn demo(client: oz_sdk::Client) -> oz_sdk::Result<()> {
//! use oz_sdk::wire::api::{ProviderSettings, SlackSettings};
//! let slack = SlackSettings {
//!     signing_secret: "SLACK_SIGNING_SECRET".into(), // team secrets, set first with client.secrets()
//!     bot_token_secret: "SLACK_BOT_TOKEN".into(),
//!     allowed_users: vec![],
//!     allowed_channels: vec!["C0123456789".into()],
//!     team_id: Some("T0123456789".into()),
//!     api_base_url: None,
//! };
//! let integration = client.integrations().create("triage", "").provider(ProviderSettings::Slack(slack)).send().await?;
//! println!("Slack events URL: {}", integration.urls["events"]);
//! # Ok(()) }
//! ```

use oz_core::wire::api::{AgentConfig, IntegrationItem, IntegrationRequest, ProviderSettings};
use reqwest::Method;

use crate::client::Client;
use crate::error::Result;
use crate::http::seg;

/// `client.integrations()`.
#[derive(Debug, Clone)]
pub struct IntegrationsHandler {
    client: Client,
}

impl Client {
    /// Integrations.
    pub fn integrations(&self) -> IntegrationsHandler {
        IntegrationsHandler { client: self.clone() }
    }
}

#[derive(serde::Deserialize)]
struct IntegrationList {
    integrations: Vec<IntegrationItem>,
}

impl IntegrationsHandler {
    /// Creates one: a generic webhook (the response carries its signing secret, once), or with
    /// [`CreateIntegration::provider`] a Slack, Linear or GitHub trigger (`prompt`, optional there,
    /// is put before what people ask).
    pub fn create(&self, name: impl Into<String>, prompt: impl Into<String>) -> CreateIntegration {
        CreateIntegration {
            client: self.client.clone(),
            request: IntegrationRequest {
                name: name.into(),
                prompt: prompt.into(),
                agent_config: None,
                enabled: None,
                provider: None,
            },
        }
    }
    /// All integrations.
    pub async fn list(&self) -> Result<Vec<IntegrationItem>> {
        Ok(self.client.call::<IntegrationList>(Method::GET, "/integrations").await?.integrations)
    }
    /// One integration.
    pub async fn get(&self, id: &str) -> Result<IntegrationItem> {
        self.client.call(Method::GET, &format!("/integrations/{}", seg(id))).await
    }
    /// Replaces one (the secret is kept).
    pub async fn update(&self, id: &str, request: &IntegrationRequest) -> Result<IntegrationItem> {
        self.client.call_json(Method::PUT, &format!("/integrations/{}", seg(id)), request).await
    }
    /// Deletes one.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.client.call::<serde_json::Value>(Method::DELETE, &format!("/integrations/{}", seg(id))).await.map(drop)
    }
}

/// The builder of `POST /integrations`.
#[derive(Debug, Clone)]
pub struct CreateIntegration {
    client: Client,
    request: IntegrationRequest,
}

impl CreateIntegration {
    /// The worker its runs go to.
    pub fn worker_host(mut self, worker: impl Into<String>) -> Self {
        self.request.agent_config.get_or_insert_with(AgentConfig::default).worker_host = Some(worker.into());
        self
    }
    /// The environment of its runs.
    pub fn environment_id(mut self, id: impl Into<String>) -> Self {
        self.request.agent_config.get_or_insert_with(AgentConfig::default).environment_id = Some(id.into());
        self
    }
    /// The provider it listens to (its credentials are team secrets the settings name).
    pub fn provider(mut self, settings: ProviderSettings) -> Self {
        self.request.provider = Some(settings);
        self
    }
    /// Created disabled (events are acknowledged and ignored until enabled).
    pub fn disabled(mut self) -> Self {
        self.request.enabled = Some(false);
        self
    }
    /// Sends it.
    pub async fn send(self) -> Result<IntegrationItem> {
        self.client.call_json(Method::POST, "/integrations", &self.request).await
    }
}
