//! Schedules: create, list, get, update, delete, pause, resume.

use oz_core::wire::api::{AgentConfig, ScheduleCreate, ScheduleItem, ScheduleUpdate};
use reqwest::Method;

use crate::client::Client;
use crate::error::Result;
use crate::http::seg;

/// `client.schedules()`.
#[derive(Debug, Clone)]
pub struct SchedulesHandler {
    client: Client,
}

impl Client {
    /// Schedules.
    pub fn schedules(&self) -> SchedulesHandler {
        SchedulesHandler { client: self.clone() }
    }
}

#[derive(serde::Deserialize)]
struct ScheduleList {
    schedules: Vec<ScheduleItem>,
}

impl SchedulesHandler {
    /// Creates a schedule: `.create("nightly", "0 2 * * *").prompt("...").worker_host("w").send()`.
    pub fn create(&self, name: impl Into<String>, cron: impl Into<String>) -> CreateSchedule {
        CreateSchedule {
            client: self.client.clone(),
            request: ScheduleCreate {
                name: name.into(),
                cron_schedule: cron.into(),
                prompt: None,
                enabled: None,
                agent_config: None,
                team: None,
                timezone: None,
            },
        }
    }
    /// All schedules.
    pub async fn list(&self) -> Result<Vec<ScheduleItem>> {
        Ok(self.client.call::<ScheduleList>(Method::GET, "/agent/schedules").await?.schedules)
    }
    /// One schedule.
    pub async fn get(&self, id: &str) -> Result<ScheduleItem> {
        self.client.call(Method::GET, &format!("/agent/schedules/{}", seg(id))).await
    }
    /// Replaces a schedule (`name`, `cron_schedule`, `enabled` required).
    pub async fn update(&self, id: &str, update: &ScheduleUpdate) -> Result<ScheduleItem> {
        self.client.call_json(Method::PUT, &format!("/agent/schedules/{}", seg(id)), update).await
    }
    /// Deletes a schedule.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.client.call::<serde_json::Value>(Method::DELETE, &format!("/agent/schedules/{}", seg(id))).await.map(drop)
    }
    /// Pauses a schedule.
    pub async fn pause(&self, id: &str) -> Result<ScheduleItem> {
        self.client
            .call_json(Method::POST, &format!("/agent/schedules/{}/pause", seg(id)), &serde_json::json!({}))
            .await
    }
    /// Resumes a schedule (from now; missed ticks are not made up).
    pub async fn resume(&self, id: &str) -> Result<ScheduleItem> {
        self.client
            .call_json(Method::POST, &format!("/agent/schedules/{}/resume", seg(id)), &serde_json::json!({}))
            .await
    }
}

/// The builder of `POST /agent/schedules`.
#[derive(Debug, Clone)]
pub struct CreateSchedule {
    client: Client,
    request: ScheduleCreate,
}

impl CreateSchedule {
    /// The prompt of its runs.
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.request.prompt = Some(prompt.into());
        self
    }
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
    /// An IANA time zone for the cron expression (our extension; default UTC).
    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.request.timezone = Some(tz.into());
        self
    }
    /// Created paused.
    pub fn disabled(mut self) -> Self {
        self.request.enabled = Some(false);
        self
    }
    /// Sends it.
    pub async fn send(self) -> Result<ScheduleItem> {
        self.client.call_json(Method::POST, "/agent/schedules", &self.request).await
    }
}
