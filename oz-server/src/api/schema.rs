//! The types the OpenAPI annotations of the handlers name (some handlers import them directly too).

#![allow(unused_imports)]

pub(crate) use oz_core::environment::EnvironmentConfig;
pub(crate) use oz_core::run::RunState;
pub(crate) use oz_core::wire::api::{
    CloudEnvironment, EnvironmentList, FollowupRequest, IntegrationItem, IntegrationRequest, RunAgentRequest,
    RunCreated, RunItem, RunList, RunStreamEvent, ScheduleCreate, ScheduleItem, ScheduleUpdate, WebhookAccepted,
};
pub(crate) use oz_core::wire::callbacks::RunnerReport;
pub(crate) use oz_core::wire::problem::Problem;
