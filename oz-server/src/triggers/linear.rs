//! Linear: webhooks (`Linear-Signature: <hex HMAC-SHA256(secret, raw body)>`, verified before the
//! body is parsed, then `webhookTimestamp` within a minute, as Linear recommends; `Linear-Delivery`
//! names the delivery, which starts at most one run). An issue assigned to the agent's user, or
//! given the configured label, starts a run whose prompt is the issue's title, description and
//! comments; a comment that mentions the agent on an issue with a run is a follow-up to that run.
//!
//! Posting back goes through the GraphQL API with the integration's API key (sent as Linear wants a
//! personal key: `Authorization: <key>`): a comment when the run starts (with its session link),
//! edited as it moves, the outcome as a new comment, and the issue moved to the configured state
//! when the run opened a pull request.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use jiff::Timestamp;
use oz_core::wire::api::{LinearSettings, ProviderSettings};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::client::{self, Answer, CallError};
use super::postback::{Markup, Progress, Step};
use super::{Decision, Start, TriggerError, signature, str_of, team_secret};
use crate::error::ApiError;
use crate::extract::{ApiBytes, ApiPath};
use crate::state::AppState;
use crate::store::{IntegrationRecord, RunTriggerRecord};

/// Linear's API root (GraphQL at `/graphql`).
pub const LINEAR_API: &str = "https://api.linear.app";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "linear-signature";
/// The delivery id header.
pub const DELIVERY_HEADER: &str = "linear-delivery";
/// How far `webhookTimestamp` may be from now, in seconds.
pub const WINDOW_SECS: u64 = 60;
/// The run source of Linear's runs.
pub const SOURCE: &str = "LINEAR";
/// What a comment says to reach the agent when the settings do not say.
pub const DEFAULT_MENTION: &str = "@oz";

/// The issue and its comments, for a run's prompt.
const ISSUE_QUERY: &str = "query OzIssue($id: String!) { issue(id: $id) { id identifier title description url comments(first: 50) { nodes { body createdAt user { name } } } } }";
const COMMENT_CREATE: &str =
    "mutation OzCommentCreate($input: CommentCreateInput!) { commentCreate(input: $input) { success comment { id } } }";
const COMMENT_UPDATE: &str = "mutation OzCommentUpdate($id: String!, $input: CommentUpdateInput!) { commentUpdate(id: $id, input: $input) { success } }";
const ACTIVITY_CREATE: &str =
    "mutation OzAgentActivity($input: AgentActivityCreateInput!) { agentActivityCreate(input: $input) { success } }";
const SESSION_UPDATE: &str = "mutation OzAgentSession($id: String!, $input: AgentSessionUpdateInput!) { agentSessionUpdate(id: $id, input: $input) { success } }";
const ISSUE_UPDATE: &str = "mutation OzIssueUpdate($id: String!, $input: IssueUpdateInput!) { issueUpdate(id: $id, input: $input) { success } }";

/// The `Linear-Signature` of `body` (what Linear sends; for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    signature::sign_hex(secret.as_bytes(), &[body])
}

/// `POST /integrations/{id}/linear/webhook`: Linear's webhook URL.
#[utoipa::path(post, path = "/integrations/{id}/linear/webhook", tag = "integrations", params(("id" = String, Path)), request_body(content = String, content_type = "application/json"), responses((status = 200, body = Object, description = "What was done"), (status = 401, description = "Bad signature, stale or unknown", body = crate::api::schema::Problem, content_type = "application/problem+json"), (status = 413, description = "Too large", body = crate::api::schema::Problem, content_type = "application/problem+json")))]
pub async fn webhook(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Value>, ApiError> {
    let (integration, settings) = super::load(&state, &id, "linear").await?;
    let ProviderSettings::Linear(settings) = settings else {
        return Err(super::refused("the signature does not match"));
    };
    let secret = super::signing_secret(&state, &integration, &settings.webhook_secret).await?;
    super::check_body_signature(&secret, &headers, SIGNATURE_HEADER, "", &body)?;
    let payload: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    let sent_ms = payload
        .get("webhookTimestamp")
        .and_then(Value::as_i64)
        .ok_or_else(|| super::refused("missing webhookTimestamp"))?;
    if !signature::fresh(sent_ms / 1000, Timestamp::now().as_second(), WINDOW_SECS) {
        return Err(super::refused("webhookTimestamp is more than a minute from now"));
    }
    if !integration.enabled {
        return Ok(Json(json!({"ignored": "the integration is disabled"})));
    }
    let delivery = match headers.get(DELIVERY_HEADER).and_then(|v| v.to_str().ok()) {
        Some(d) if !d.trim().is_empty() => format!("linear:{}", d.trim()),
        _ => format!("linear:{}:{sent_ms}", str_of(&payload, "webhookId")),
    };
    let decision = decide(&state, &integration, &settings, &payload, delivery.clone()).await;
    Ok(Json(super::act(&state, &integration, SOURCE, &delivery, decision).await?))
}

/// Whether the actor of a webhook may trigger runs.
fn allowed(settings: &LinearSettings, actor: &str) -> bool {
    settings.allowed_users.is_empty() || settings.allowed_users.iter().any(|u| u == "*" || u == actor)
}

fn thread_key(issue_id: &str) -> String {
    format!("linear:{issue_id}")
}

/// What a webhook means.
async fn decide(
    state: &AppState,
    integration: &IntegrationRecord,
    settings: &LinearSettings,
    payload: &Value,
    delivery: String,
) -> Decision {
    if let Some(organization) = settings.organization_id.as_deref()
        && str_of(payload, "organizationId") != organization
    {
        return Decision::Ignore("a webhook from another Linear workspace");
    }
    let data = payload.get("data").cloned().unwrap_or(Value::Null);
    let action = str_of(payload, "action");
    let actor = payload.get("actor").map(|a| str_of(a, "id").to_owned()).unwrap_or_default();
    match str_of(payload, "type") {
        "Issue" if action == "create" || action == "update" => {
            let updated_from = payload.get("updatedFrom");
            let assigned = settings.agent_user_id.as_deref().is_some_and(|agent| {
                str_of(&data, "assigneeId") == agent
                    && (action == "create" || updated_from.is_some_and(|u| u.get("assigneeId").is_some()))
            });
            let labelled = settings.label.as_deref().is_some_and(|wanted| {
                let label = data.get("labels").and_then(Value::as_array).and_then(|labels| {
                    labels
                        .iter()
                        .find(|l| str_of(l, "name").eq_ignore_ascii_case(wanted))
                        .map(|l| str_of(l, "id").to_owned())
                });
                label.is_some_and(|id| {
                    action == "create"
                        || updated_from
                            .and_then(|u| u.get("labelIds"))
                            .and_then(Value::as_array)
                            .is_some_and(|before| !before.iter().any(|b| b.as_str() == Some(id.as_str())))
                })
            });
            if !assigned && !labelled {
                return Decision::Ignore("an issue change that is not an assignment to the agent or its label");
            }
            if !allowed(settings, &actor) {
                tracing::info!(integration_id = %integration.id, actor, "a Linear user who is not allowed was refused");
                return Decision::Ignore("this user may not start runs here");
            }
            let issue_id = str_of(&data, "id").to_owned();
            if issue_id.is_empty() {
                return Decision::Ignore("an issue without its id");
            }
            let key = thread_key(&issue_id);
            if let Ok(Some(t)) = state.store.run_trigger_in_thread(&integration.id, &key).await
                && let Ok(Some(run)) = state.store.run_by_id(&t.run_id).await
                && !run.state.is_terminal()
            {
                return Decision::Ignore("this issue's run has not ended");
            }
            let request = issue_request(state, integration, settings, &issue_id, &data).await;
            let identifier = str_of(&data, "identifier");
            Decision::Start(Start {
                delivery,
                thread_key: key,
                reply: json!({"issue_id": issue_id, "identifier": identifier}),
                title: format!("{identifier} {}", str_of(&data, "title")).trim().to_owned(),
                request,
                trigger_url: Some(str_of(&data, "url").to_owned())
                    .filter(|u| !u.is_empty())
                    .or_else(|| Some(str_of(payload, "url").to_owned()).filter(|u| !u.is_empty())),
                by: format!("linear:{actor}"),
            })
        }
        "Comment" if action == "create" => {
            let body = str_of(&data, "body");
            let mention = settings.mention.as_deref().unwrap_or(DEFAULT_MENTION);
            let author = str_of(&data, "userId");
            if !super::mentions(body, mention) {
                return Decision::Ignore("a comment that does not mention the agent");
            }
            if settings.agent_user_id.as_deref() == Some(author) || data.get("botActor").is_some_and(|b| !b.is_null()) {
                return Decision::Ignore("the agent's own comment");
            }
            let who = if author.is_empty() { actor.as_str() } else { author };
            if !allowed(settings, who) {
                return Decision::Ignore("this user may not steer runs here");
            }
            let issue_id = str_of(&data, "issueId");
            Decision::FollowUp {
                thread_key: thread_key(issue_id),
                message: body.to_owned(),
                by: format!("linear:{who}"),
            }
        }
        "AgentSessionEvent" => agent_session(state, integration, settings, payload, &actor, delivery).await,
        _ => Decision::Ignore("an event this integration does not act on"),
    }
}

/// Linear's Agents API: a session Linear made when the agent (an OAuth app) was mentioned or
/// delegated an issue (`created`), a person's message in it (`prompted`), or their Stop (`prompted`
/// with the `stop` signal).
async fn agent_session(
    state: &AppState,
    integration: &IntegrationRecord,
    settings: &LinearSettings,
    payload: &Value,
    actor: &str,
    delivery: String,
) -> Decision {
    let session = payload.get("agentSession").cloned().unwrap_or(Value::Null);
    let session_id = str_of(&session, "id");
    if session_id.is_empty() {
        return Decision::Ignore("an agent session event without its session");
    }
    let key = format!("linear-session:{session_id}");
    let creator = session.pointer("/creator/id").and_then(Value::as_str).unwrap_or(str_of(&session, "creatorId"));
    let who = if creator.is_empty() { actor } else { creator };
    match str_of(payload, "action") {
        "created" => {
            if !allowed(settings, who) {
                return Decision::Ignore("this user may not start runs here");
            }
            let issue = session.get("issue").cloned().unwrap_or(Value::Null);
            let issue_id = str_of(&issue, "id").to_owned();
            let issue_id = if issue_id.is_empty() { str_of(&session, "issueId").to_owned() } else { issue_id };
            let context = str_of(payload, "promptContext");
            let request = if context.trim().is_empty() {
                issue_request(state, integration, settings, &issue_id, &issue).await
            } else {
                context.to_owned()
            };
            let identifier = str_of(&issue, "identifier");
            Decision::Start(Start {
                delivery,
                thread_key: key,
                reply: json!({"issue_id": issue_id, "identifier": identifier, "agent_session_id": session_id}),
                title: format!("{identifier} {}", str_of(&issue, "title")).trim().to_owned(),
                request,
                trigger_url: Some(str_of(&issue, "url").to_owned()).filter(|u| !u.is_empty()),
                by: format!("linear:{who}"),
            })
        }
        "prompted" => {
            let activity = payload.get("agentActivity").cloned().unwrap_or(Value::Null);
            let author = str_of(&activity, "userId");
            let who = if author.is_empty() { who } else { author };
            if !allowed(settings, who) {
                return Decision::Ignore("this user may not steer runs here");
            }
            if str_of(&activity, "signal") == "stop" {
                return Decision::Cancel { thread_key: key };
            }
            let body = activity.pointer("/content/body").and_then(Value::as_str).unwrap_or("");
            if body.trim().is_empty() {
                return Decision::Ignore("a prompt with nothing in it");
            }
            Decision::FollowUp { thread_key: key, message: body.to_owned(), by: format!("linear:{who}") }
        }
        _ => Decision::Ignore("an agent session event this integration does not act on"),
    }
}

/// The issue as the agent is asked: title, description and comments (fetched; the webhook's own
/// fields when that fails or takes too long).
async fn issue_request(
    state: &AppState,
    integration: &IntegrationRecord,
    settings: &LinearSettings,
    issue_id: &str,
    data: &Value,
) -> String {
    let fetch = async {
        let api = LinearApi::of(state, integration, settings).await?;
        api.graphql("issue", ISSUE_QUERY, json!({"id": issue_id})).await
    };
    let issue = match tokio::time::timeout(super::CONTEXT_TIMEOUT, fetch).await {
        Ok(Ok(answer)) => answer.get("issue").cloned().unwrap_or(Value::Null),
        Ok(Err(e)) => {
            tracing::warn!(error = %oz_core::error::error_chain(&e), "a Linear issue's comments could not be read");
            Value::Null
        }
        Err(_) => {
            tracing::warn!("a Linear issue's comments were not read in time");
            Value::Null
        }
    };
    let source = if issue.is_object() { &issue } else { data };
    let mut text = format!(
        "Linear issue {}: {}\n\n{}",
        str_of(source, "identifier"),
        str_of(source, "title"),
        str_of(source, "description")
    );
    let comments = issue.pointer("/comments/nodes").and_then(Value::as_array).cloned().unwrap_or_default();
    if !comments.is_empty() {
        text.push_str("\n\nComments:");
        for c in comments {
            let who = c.pointer("/user/name").and_then(Value::as_str).unwrap_or("someone");
            text.push_str(&format!("\n- {who}: {}", str_of(&c, "body")));
        }
    }
    text.trim().to_owned()
}

/// Linear's GraphQL API with an integration's API key.
pub(crate) struct LinearApi {
    endpoint: Url,
    key: SecretString,
}

impl LinearApi {
    /// The API for `integration`, with its key opened.
    pub(crate) async fn of(
        state: &AppState,
        integration: &IntegrationRecord,
        settings: &LinearSettings,
    ) -> Result<Self, TriggerError> {
        let key = team_secret(state, &integration.team_id, &settings.api_key_secret).await?;
        let base = super::api_root(state, "Linear", settings.api_base_url.as_deref(), LINEAR_API)?;
        Ok(LinearApi { endpoint: client::join(&base, "graphql"), key })
    }

    /// Runs one operation; its `data`.
    async fn graphql(&self, what: &'static str, query: &str, variables: Value) -> Result<Value, TriggerError> {
        let request = client::http()
            .post(self.endpoint.clone())
            .header(reqwest::header::AUTHORIZATION, authorization(self.key.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({"query": query, "variables": variables}).to_string());
        Ok(data(what, client::send("Linear", what, request).await?)?)
    }

    /// One post-back step.
    pub(crate) async fn post(
        &self,
        step: Step,
        trigger: &mut RunTriggerRecord,
        progress: &Progress,
        settings: &ProviderSettings,
    ) -> Result<(), TriggerError> {
        let issue_id = str_of(&trigger.reply, "issue_id").to_owned();
        let session = str_of(&trigger.reply, "agent_session_id").to_owned();
        if !session.is_empty() && step != Step::MoveIssue {
            return self.post_to_session(step, &session, trigger, progress).await;
        }
        match step {
            Step::CreateStatus => {
                let input = json!({"issueId": issue_id, "body": progress.status_text(Markup::Markdown)});
                let answer = self.graphql("commentCreate", COMMENT_CREATE, json!({"input": input})).await?;
                let id = answer.pointer("/commentCreate/comment/id").and_then(Value::as_str).unwrap_or_default();
                trigger.message_ref = Some(id.to_owned());
                trigger.message_execution = progress.execution;
            }
            Step::UpdateStatus => {
                let id = trigger.message_ref.clone().unwrap_or_default();
                let input = json!({"body": progress.status_text(Markup::Markdown)});
                self.graphql("commentUpdate", COMMENT_UPDATE, json!({"id": id, "input": input})).await?;
            }
            Step::Outcome => {
                let input = json!({"issueId": issue_id, "body": progress.outcome_text(Markup::Markdown)});
                self.graphql("commentCreate", COMMENT_CREATE, json!({"input": input})).await?;
            }
            Step::MoveIssue => {
                if let ProviderSettings::Linear(LinearSettings { pull_request_state_id: Some(state_id), .. }) = settings
                {
                    let input = json!({"stateId": state_id});
                    self.graphql("issueUpdate", ISSUE_UPDATE, json!({"id": issue_id, "input": input})).await?;
                }
            }
        }
        Ok(())
    }
}

impl LinearApi {
    /// A post-back step as agent activities: the session links to ours, and each step is a thought,
    /// the outcome a response (or an error), which Linear shows in the session and uses to mark it.
    async fn post_to_session(
        &self,
        step: Step,
        session: &str,
        trigger: &mut RunTriggerRecord,
        progress: &Progress,
    ) -> Result<(), TriggerError> {
        let activity = |kind: &str, body: String| json!({"input": {"agentSessionId": session, "content": {"type": kind, "body": body}}});
        match step {
            Step::CreateStatus => {
                let urls = json!([{"label": "Oz session", "url": progress.session_link}]);
                self.graphql(
                    "agentSessionUpdate",
                    SESSION_UPDATE,
                    json!({"id": session, "input": {"externalUrls": urls}}),
                )
                .await?;
                let thought = activity("thought", progress.status_text(Markup::Markdown));
                self.graphql("agentActivityCreate", ACTIVITY_CREATE, thought).await?;
                trigger.message_ref = Some(session.to_owned());
                trigger.message_execution = progress.execution;
            }
            Step::UpdateStatus => {
                let thought = activity("thought", progress.status_text(Markup::Markdown));
                self.graphql("agentActivityCreate", ACTIVITY_CREATE, thought).await?;
            }
            Step::Outcome => {
                let kind = if progress.state == oz_core::run::RunState::Succeeded { "response" } else { "error" };
                let outcome = activity(kind, progress.outcome_text(Markup::Markdown));
                self.graphql("agentActivityCreate", ACTIVITY_CREATE, outcome).await?;
            }
            Step::MoveIssue => {}
        }
        Ok(())
    }
}

/// The `Authorization` header for `key`: a personal API key goes as is, an OAuth access token (an
/// agent app's, `lin_oauth_...`) as a bearer token, as Linear documents each.
fn authorization(key: &str) -> String {
    if key.starts_with("lin_oauth_") { format!("Bearer {key}") } else { key.to_owned() }
}

/// The `data` of a GraphQL answer; its `errors` (rate limits included: Linear answers 400 with
/// `RATELIMITED`) as a refusal.
fn data(what: &'static str, answer: Answer) -> Result<Value, CallError> {
    let errors = answer.body.get("errors").and_then(Value::as_array).filter(|e| !e.is_empty());
    if answer.status == 200 && errors.is_none() {
        return Ok(answer.body.get("data").cloned().unwrap_or(Value::Null));
    }
    let first = errors.and_then(|e| e.first()).cloned().unwrap_or(Value::Null);
    let code = first.pointer("/extensions/code").and_then(Value::as_str).unwrap_or("");
    let message = first.get("message").and_then(Value::as_str).unwrap_or("no answer");
    let retryable = answer.is_retryable_status() || code == "RATELIMITED";
    let detail = if code.is_empty() { message.to_owned() } else { format!("{code}: {message}") };
    Err(CallError::refused("Linear", what, &answer, detail, retryable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_raw_body() {
        let body = br#"{"action":"create","type":"Issue"}"#;
        let sig = sign("lin_wh_secret", body);
        assert_eq!(sig.len(), 64);
        assert!(signature::matches(b"lin_wh_secret", &[body], &sig));
        assert!(!signature::matches(b"lin_wh_secret", &[&body[1..]], &sig));
    }
}
