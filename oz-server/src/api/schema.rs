//! The types the OpenAPI annotations of the handlers name (some handlers import them directly too).

#![allow(unused_imports)]

pub(crate) use oz_core::environment::EnvironmentConfig;
pub(crate) use oz_core::run::RunState;
pub(crate) use oz_core::wire::admin::{
    GitProvider, GitProviderItem, GitProviderList, KeyCreated, KeyItem, KeyList, NewKey, NewTeam, NewUser, TeamCreated,
    UserItem, UserList, UserUpdate,
};
pub(crate) use oz_core::wire::api::{
    CloudEnvironment, EnvironmentList, FollowupRequest, IntegrationItem, IntegrationRequest, LocalRunCreated,
    LocalRunRequest, RunAgentRequest, RunCreated, RunItem, RunList, RunStreamEvent, ScheduleCreate, ScheduleItem,
    ScheduleUpdate, WebhookAccepted,
};
pub(crate) use oz_core::wire::callbacks::{ResolvedRun, RunnerReport};
pub(crate) use oz_core::wire::problem::Problem;
pub(crate) use oz_core::wire::secrets::{SecretItem, SecretList, SecretWrite};

// The error responses most handlers share, declared once for their `responses(...)`.

/// 400 `invalid_request`.
#[derive(utoipa::IntoResponses)]
#[response(status = 400, description = "Invalid request", content_type = "application/problem+json")]
#[expect(dead_code, reason = "never built: handlers answer with ApiError, whose problem document this describes")]
pub(crate) struct BadRequest(Problem);

/// 401 `authentication_required`.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "No or bad credentials", content_type = "application/problem+json")]
#[expect(dead_code, reason = "never built: handlers answer with ApiError, whose problem document this describes")]
pub(crate) struct Unauthorized(Problem);

/// 404 `resource_not_found`: there is no such resource, or it is another team's.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "Not found (or another team's)", content_type = "application/problem+json")]
#[expect(dead_code, reason = "never built: handlers answer with ApiError, whose problem document this describes")]
pub(crate) struct NotFound(Problem);

/// 403 `not_authorized`: the key's role (or kind) may not do this.
#[derive(utoipa::IntoResponses)]
#[response(status = 403, description = "The key's role may not do this", content_type = "application/problem+json")]
#[expect(dead_code, reason = "never built: handlers answer with ApiError, whose problem document this describes")]
pub(crate) struct Forbidden(Problem);

/// A run's conversation as its runner packs it: bytes the control plane keeps sealed and never reads.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(dead_code, reason = "never built: the handlers take and give raw bytes, which this describes")]
pub(crate) struct ConversationArchive(Vec<u8>);
