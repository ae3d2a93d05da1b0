//! A fake of Linear's GraphQL API (<https://developers.linear.app/docs/graphql/working-with-the-graphql-api>)
//! for the few fields an agent uses on an issue, checking each request as Linear documents it and
//! answering as Linear does:
//!
//! - `POST {base}/graphql` with `Content-Type: application/json` and `Authorization: <API key>`: a
//!   personal API key is sent as is, without `Bearer` (OAuth tokens take `Bearer`); another or no
//!   `Authorization` is HTTP 400 `AUTHENTICATION_ERROR`;
//! - the body `{"query", "variables"?, "operationName"?}`; the query is parsed (`graphql-parser`): a
//!   syntax error is HTTP 400 `GRAPHQL_PARSE_FAILED`;
//! - validation as a GraphQL server does it, HTTP 400 `GRAPHQL_VALIDATION_FAILED`: fields and
//!   arguments must exist on their type (`Cannot query field "x" on type "Query".`), objects need a
//!   selection and scalars none, required arguments must be given, literals must fit their type,
//!   input objects may only hold their type's fields, every variable used must be declared, every
//!   declared one used, of a type that fits where it is used, and given (with a value of its type)
//!   unless it is nullable or has a default;
//! - the schema served: `issue(id: String!): Issue!` (an id or an identifier like `ENG-12`);
//!   `commentCreate(input: CommentCreateInput!)`, `commentUpdate(id: String!, input:
//!   CommentUpdateInput!)`: `CommentPayload {success lastSyncId comment}`; `issueUpdate(id: String!,
//!   input: IssueUpdateInput!)`: `IssuePayload {success lastSyncId issue}`. `Issue {id identifier
//!   title description url createdAt updatedAt state {id name} comments(first after last before
//!   includeArchived orderBy filter) {nodes pageInfo}}`, `Comment {id body createdAt updatedAt
//!   editedAt url user {id name displayName email} issue}`; `__typename` anywhere; fragments and
//!   `@skip`/`@include`. Answers hold exactly the fields selected (aliases honoured);
//! - an unknown issue or comment: HTTP 200 `{"data":null,"errors":[{"message":"Entity not found:
//!   Issue","extensions":{"code":"INVALID_INPUT"}}]}`; `commentCreate` without `issueId` or `body`:
//!   the same with `Argument Validation Error`.
//!
//! Every request is recorded; every one answered with an error (but an injected [`Failure`] and the
//! `issue` query's entity-not-found) is also a violation. Injected failures: rate limited is HTTP
//! 400 `RATELIMITED` with `X-RateLimit-Requests-Remaining: 0` and `Retry-After`, a server error
//! HTTP 500, any other status that status with an `INTERNAL_SERVER_ERROR` error (`fake: an injected
//! failure`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use graphql_parser::query::{
    Definition, Directive, FragmentDefinition, OperationDefinition, Selection, SelectionSet, Type, Value as GValue,
};
use serde_json::{Map, Value, json};

use crate::common::{self, Core, Failure, Recorded};

/// The id of the API key's user, who writes the comments made through the API.
pub const API_USER_ID: &str = "user_oz";
/// The name of the API key's user.
pub const API_USER_NAME: &str = "Oz";

/// An issue to seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinearIssue {
    /// The issue's id (a UUID in Linear).
    pub id: String,
    /// Its identifier (`ENG-12`).
    pub identifier: String,
    /// Its title.
    pub title: String,
    /// Its description (markdown); empty reads as `null`.
    pub description: String,
    /// Its URL (`https://linear.app/acme/issue/ENG-12/title`).
    pub url: String,
    /// Comments already on it: `(user name, body)`, oldest first.
    pub comments: Vec<(String, String)>,
}

/// A comment on an issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearComment {
    /// The comment's id.
    pub id: String,
    /// The id of its issue.
    pub issue_id: String,
    /// Its body, as last written.
    pub body: String,
    /// The body of each `commentUpdate`, in order.
    pub updates: Vec<String>,
    /// Whether it was made through the API (by the API key's user) rather than seeded.
    pub by_api: bool,
}

struct IssueState {
    seed: LinearIssue,
    state_id: Option<String>,
    created_at: String,
    updated_at: String,
}

struct CommentState {
    comment: LinearComment,
    user: (String, String),
    created_at: String,
    updated_at: String,
    edited_at: Option<String>,
}

/// An agent session (Linear's Agents API): made by Linear when the app is mentioned or delegated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearAgentSession {
    /// The session's id.
    pub id: String,
    /// The id of its issue.
    pub issue_id: String,
    /// The `content` of each activity the app created, in order.
    pub activities: Vec<Value>,
    /// The external URLs the app set (`{label, url}` each).
    pub external_urls: Vec<Value>,
}

struct Inner {
    core: Core,
    api_key: String,
    issues: Vec<IssueState>,
    comments: Vec<CommentState>,
    sessions: Vec<LinearAgentSession>,
    sync_id: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake Linear; clones share it.
#[derive(Clone)]
pub struct FakeLinear {
    url: String,
    state: Shared,
}

impl FakeLinear {
    /// Starts a fake Linear on a loopback port of the current tokio runtime, accepting the
    /// personal API key `api_key` (`lin_api_...`).
    pub async fn start(api_key: &str) -> Self {
        let state = Arc::new(Mutex::new(Inner {
            core: Core::default(),
            api_key: api_key.to_owned(),
            issues: Vec::new(),
            comments: Vec::new(),
            sessions: Vec::new(),
            sync_id: 1000,
        }));
        let url = common::serve(Router::new().fallback(handle).with_state(state.clone())).await;
        Self { url, state }
    }

    /// `http://127.0.0.1:PORT`: the endpoint is `{base_url}/graphql`.
    pub fn base_url(&self) -> String {
        self.url.clone()
    }

    /// Every request received, in order, including those that failed a check.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().core.requests.clone()
    }

    /// The documented rules requests broke, one message each (`METHOD /path: rule`).
    pub fn violations(&self) -> Vec<String> {
        self.lock().core.violations.clone()
    }

    /// The next `n` requests are answered with `failure` (and recorded, and do nothing else).
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.lock().core.fail_next(n, failure);
    }

    /// Adds an issue, with its comments (by users `user_1`, `user_2`... named as given).
    pub fn seed_issue(&self, issue: LinearIssue) {
        let mut state = self.lock();
        let now = common::rfc3339(common::now_secs());
        for (i, (user, body)) in issue.comments.iter().enumerate() {
            state.comments.push(CommentState {
                comment: LinearComment {
                    id: uuid::Uuid::new_v4().to_string(),
                    issue_id: issue.id.clone(),
                    body: body.clone(),
                    updates: Vec::new(),
                    by_api: false,
                },
                user: (format!("user_{}", i + 1), user.clone()),
                created_at: now.clone(),
                updated_at: now.clone(),
                edited_at: None,
            });
        }
        state.issues.push(IssueState { seed: issue, state_id: None, created_at: now.clone(), updated_at: now });
    }

    /// The comments of the issue `issue_id` (its id or identifier), oldest first.
    pub fn comments(&self, issue_id: &str) -> Vec<LinearComment> {
        let state = self.lock();
        let Some(id) = state.find_issue(issue_id).map(|i| state.issues[i].seed.id.clone()) else {
            return Vec::new();
        };
        state.comments.iter().filter(|c| c.comment.issue_id == id).map(|c| c.comment.clone()).collect()
    }

    /// An agent session Linear made for the app on issue `issue_id` (as when it is mentioned or
    /// delegated the issue); the app then posts activities to it (an OAuth app's token only).
    pub fn seed_agent_session(&self, id: &str, issue_id: &str) {
        self.lock().sessions.push(LinearAgentSession {
            id: id.into(),
            issue_id: issue_id.into(),
            ..Default::default()
        });
    }

    /// An agent session as the app left it.
    pub fn agent_session(&self, id: &str) -> Option<LinearAgentSession> {
        self.lock().sessions.iter().find(|x| x.id == id).cloned()
    }

    /// The workflow state id `issueUpdate` last set on the issue `issue_id` (id or identifier).
    pub fn issue_state(&self, issue_id: &str) -> Option<String> {
        let state = self.lock();
        state.find_issue(issue_id).and_then(|i| state.issues[i].state_id.clone())
    }

    /// Polls `f` every 20 ms until it answers; panics with `what`, the requests and the
    /// violations after `timeout`.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl Fn(&Self) -> Option<T>) -> T {
        common::wait_for(self, what, timeout, f, Self::requests, Self::violations).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }
}

/// Linear's webhook signature of `body` (the `Linear-Signature` header): the hex HMAC-SHA256 of
/// the body with the webhook's signing secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    common::hmac_sha256_hex(secret.as_bytes(), body)
}

/// An error answer: HTTP status, the GraphQL error, and whether it is a violation.
struct Refusal {
    status: StatusCode,
    body: Value,
    violation: Option<String>,
}

fn request_error(status: StatusCode, code: &str, message: &str) -> Refusal {
    Refusal {
        status,
        body: json!({"errors": [{"message": message, "extensions": {"code": code}}]}),
        violation: Some(format!("{code}: {message}")),
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    request_error(StatusCode::BAD_REQUEST, "GRAPHQL_VALIDATION_FAILED", &message.into())
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let recorded = Recorded::new(&method, &uri, &headers, &body);
    match state.core.record(recorded.clone()) {
        Some(Failure::RateLimited { retry_after_secs }) => {
            let reset_ms = (common::now_secs() + i64::try_from(retry_after_secs).unwrap_or(0)) * 1000;
            return (
                StatusCode::BAD_REQUEST,
                [
                    ("x-ratelimit-requests-remaining", "0".to_owned()),
                    ("x-ratelimit-requests-reset", reset_ms.to_string()),
                    ("retry-after", retry_after_secs.to_string()),
                ],
                axum::Json(
                    json!({"errors": [{"message": "Rate limit exceeded", "extensions": {"code": "RATELIMITED"}}]}),
                ),
            )
                .into_response();
        }
        Some(Failure::ServerError) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"errors": [{"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]})),
            )
                .into_response();
        }
        Some(Failure::Status(status)) => {
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({"errors": [{"message": "fake: an injected failure", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]})),
            )
                .into_response();
        }
        None => {}
    }
    match state.call(&recorded) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(Refusal { status, body, violation }) => {
            if let Some(rule) = violation {
                state.core.violation(rule);
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

/// What validation and execution know of the operation.
struct Ctx<'d> {
    fragments: HashMap<&'d str, &'d FragmentDefinition<'d, String>>,
    var_types: HashMap<String, String>,
    vars: Map<String, Value>,
    used: BTreeSet<String>,
    depth: usize,
}

/// A field's result type.
#[derive(Clone, Copy)]
enum Out {
    Scalar(&'static str),
    Object(&'static str),
    List(&'static str),
}

type Args = &'static [(&'static str, &'static str)];

const NO_ARGS: Args = &[];

/// The output types served: a field's type and arguments.
fn output_field(ty: &str, field: &str) -> Option<(Out, Args)> {
    use Out::{List, Object, Scalar};
    let scalar = |t| Some((Scalar(t), NO_ARGS));
    match (ty, field) {
        ("Query", "issue") => Some((Object("Issue"), &[("id", "String!")])),
        ("Mutation", "commentCreate") => Some((Object("CommentPayload"), &[("input", "CommentCreateInput!")])),
        ("Mutation", "commentUpdate") => Some((
            Object("CommentPayload"),
            &[("id", "String!"), ("input", "CommentUpdateInput!"), ("skipEditedAt", "Boolean")],
        )),
        ("Mutation", "issueUpdate") => {
            Some((Object("IssuePayload"), &[("id", "String!"), ("input", "IssueUpdateInput!")]))
        }
        ("Mutation", "agentActivityCreate") => {
            Some((Object("AgentActivityPayload"), &[("input", "AgentActivityCreateInput!")]))
        }
        ("Mutation", "agentSessionUpdate") => {
            Some((Object("AgentSessionPayload"), &[("id", "String!"), ("input", "AgentSessionUpdateInput!")]))
        }
        ("AgentActivityPayload" | "AgentSessionPayload", "success") => scalar("Boolean!"),
        ("AgentActivityPayload" | "AgentSessionPayload", "lastSyncId") => scalar("Float!"),
        ("AgentActivityPayload", "agentActivity") => Some((Object("AgentActivity"), NO_ARGS)),
        ("AgentActivity", "id") => scalar("String!"),
        ("Issue", "id" | "identifier" | "title" | "url") => scalar("String!"),
        ("Issue", "description") => scalar("String"),
        ("Issue", "createdAt" | "updatedAt") => scalar("DateTime!"),
        ("Issue", "state") => Some((Object("WorkflowState"), NO_ARGS)),
        ("Issue", "comments") => Some((
            Object("CommentConnection"),
            &[
                ("first", "Int"),
                ("after", "String"),
                ("last", "Int"),
                ("before", "String"),
                ("includeArchived", "Boolean"),
                ("orderBy", "PaginationOrderBy"),
                ("filter", "CommentFilter"),
            ],
        )),
        ("WorkflowState", "id" | "name") => scalar("String!"),
        ("CommentConnection", "nodes") => Some((List("Comment"), NO_ARGS)),
        ("CommentConnection", "pageInfo") => Some((Object("PageInfo"), NO_ARGS)),
        ("PageInfo", "hasNextPage" | "hasPreviousPage") => scalar("Boolean!"),
        ("PageInfo", "startCursor" | "endCursor") => scalar("String"),
        ("Comment", "id" | "body" | "url") => scalar("String!"),
        ("Comment", "createdAt" | "updatedAt") => scalar("DateTime!"),
        ("Comment", "editedAt") => scalar("DateTime"),
        ("Comment", "user") => Some((Object("User"), NO_ARGS)),
        ("Comment", "issue") => Some((Object("Issue"), NO_ARGS)),
        ("User", "id" | "name" | "displayName" | "email") => scalar("String!"),
        ("CommentPayload" | "IssuePayload", "success") => scalar("Boolean!"),
        ("CommentPayload" | "IssuePayload", "lastSyncId") => scalar("Float!"),
        ("CommentPayload", "comment") => Some((Object("Comment"), NO_ARGS)),
        ("IssuePayload", "issue") => Some((Object("Issue"), NO_ARGS)),
        _ => None,
    }
}

/// The input object types served: their fields.
fn input_fields(ty: &str) -> Option<Args> {
    match ty {
        "CommentCreateInput" => Some(&[
            ("id", "String"),
            ("issueId", "String"),
            ("body", "String"),
            ("bodyData", "JSON"),
            ("parentId", "String"),
            ("createAsUser", "String"),
            ("displayIconUrl", "String"),
            ("doNotSubscribeToIssue", "Boolean"),
            ("quotedText", "String"),
            ("createdAt", "DateTime"),
        ]),
        "AgentActivityCreateInput" => Some(&[
            ("id", "String"),
            ("agentSessionId", "String!"),
            ("content", "JSONObject!"),
            ("ephemeral", "Boolean"),
            ("signal", "String"),
            ("signalMetadata", "JSONObject"),
            ("contextualMetadata", "JSONObject"),
            ("sourceCommentId", "String"),
        ]),
        "AgentSessionUpdateInput" => Some(&[
            ("externalLink", "String"),
            ("externalUrls", "[AgentSessionExternalUrlInput!]"),
            ("addedExternalUrls", "[AgentSessionExternalUrlInput!]"),
            ("removedExternalUrls", "[String!]"),
            ("plan", "JSONObject"),
        ]),
        "AgentSessionExternalUrlInput" => Some(&[("label", "String!"), ("url", "String!")]),
        "CommentUpdateInput" => Some(&[
            ("body", "String"),
            ("bodyData", "JSON"),
            ("quotedText", "String"),
            ("resolvingUserId", "String"),
            ("resolvingCommentId", "String"),
            ("doNotSubscribeToIssue", "Boolean"),
        ]),
        "IssueUpdateInput" => Some(&[
            ("title", "String"),
            ("description", "String"),
            ("descriptionData", "JSON"),
            ("stateId", "String"),
            ("assigneeId", "String"),
            ("delegateId", "String"),
            ("priority", "Int"),
            ("estimate", "Int"),
            ("labelIds", "[String!]"),
            ("addedLabelIds", "[String!]"),
            ("removedLabelIds", "[String!]"),
            ("teamId", "String"),
            ("projectId", "String"),
            ("cycleId", "String"),
            ("parentId", "String"),
            ("dueDate", "TimelessDate"),
            ("subscriberIds", "[String!]"),
            ("sortOrder", "Float"),
        ]),
        _ => None,
    }
}

fn enum_values(ty: &str) -> Option<&'static [&'static str]> {
    match ty {
        "PaginationOrderBy" => Some(&["createdAt", "updatedAt"]),
        _ => None,
    }
}

fn type_string(t: &Type<'_, String>) -> String {
    match t {
        Type::NamedType(n) => n.clone(),
        Type::ListType(inner) => format!("[{}]", type_string(inner)),
        Type::NonNullType(inner) => format!("{}!", type_string(inner)),
    }
}

/// Whether a value of `ty` (a scalar, enum or input type) may be a literal `v`; the reason if not.
fn check_literal(ctx: &mut Ctx<'_>, v: &GValue<'_, String>, ty: &str) -> Result<(), String> {
    if let GValue::Variable(name) = v {
        ctx.used.insert(name.clone());
        let Some(var_ty) = ctx.var_types.get(name) else {
            return Err(format!("Variable \"${name}\" is not defined."));
        };
        if var_ty != ty && var_ty.strip_suffix('!') != Some(ty) {
            return Err(format!("Variable \"${name}\" of type \"{var_ty}\" used in position expecting type \"{ty}\"."));
        }
        return Ok(());
    }
    let (inner, non_null) = match ty.strip_suffix('!') {
        Some(inner) => (inner, true),
        None => (ty, false),
    };
    let found = || format!("Expected value of type \"{ty}\", found {}.", literal_text(v));
    if matches!(v, GValue::Null) {
        return if non_null { Err(found()) } else { Ok(()) };
    }
    if let Some(elem) = inner.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return match v {
            GValue::List(items) => items.iter().try_for_each(|item| check_literal(ctx, item, elem)),
            single => check_literal(ctx, single, elem),
        };
    }
    let fits = match (inner, v) {
        ("String" | "DateTime" | "TimelessDate", GValue::String(_)) => true,
        ("ID", GValue::String(_) | GValue::Int(_)) => true,
        ("Int", GValue::Int(_)) => true,
        ("Float", GValue::Int(_) | GValue::Float(_)) => true,
        ("Boolean", GValue::Boolean(_)) => true,
        ("JSON" | "JSONObject" | "CommentFilter", any) => {
            mark_variables(ctx, any)?;
            true
        }
        (t, GValue::Enum(e)) if enum_values(t).is_some_and(|values| values.contains(&e.as_str())) => true,
        (t, GValue::Object(fields)) if input_fields(t).is_some() => {
            let declared = input_fields(t).unwrap_or_default();
            for (name, value) in fields {
                let Some((_, field_ty)) = declared.iter().find(|(n, _)| n == name) else {
                    return Err(format!("Field \"{name}\" is not defined by type \"{t}\"."));
                };
                check_literal(ctx, value, field_ty)?;
            }
            true
        }
        _ => false,
    };
    if fits { Ok(()) } else { Err(found()) }
}

fn mark_variables(ctx: &mut Ctx<'_>, v: &GValue<'_, String>) -> Result<(), String> {
    match v {
        GValue::Variable(name) => {
            ctx.used.insert(name.clone());
            if ctx.var_types.contains_key(name) { Ok(()) } else { Err(format!("Variable \"${name}\" is not defined.")) }
        }
        GValue::List(items) => items.iter().try_for_each(|i| mark_variables(ctx, i)),
        GValue::Object(fields) => fields.values().try_for_each(|i| mark_variables(ctx, i)),
        _ => Ok(()),
    }
}

fn literal_text(v: &GValue<'_, String>) -> String {
    match v {
        GValue::String(s) => format!("{s:?}"),
        GValue::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Whether a variable's JSON value fits `ty`; the reason if not.
fn check_json(v: &Value, ty: &str) -> Result<(), String> {
    let (inner, non_null) = match ty.strip_suffix('!') {
        Some(inner) => (inner, true),
        None => (ty, false),
    };
    if v.is_null() {
        return if non_null { Err(format!("Expected non-nullable type \"{ty}\" not to be null.")) } else { Ok(()) };
    }
    if let Some(elem) = inner.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return match v {
            Value::Array(items) => items.iter().try_for_each(|item| check_json(item, elem)),
            single => check_json(single, elem),
        };
    }
    let fits = match (inner, v) {
        ("String" | "DateTime" | "TimelessDate", Value::String(_)) => true,
        ("ID", Value::String(_)) => true,
        ("ID" | "Int", Value::Number(n)) => n.is_i64(),
        ("Float", Value::Number(_)) => true,
        ("Boolean", Value::Bool(_)) => true,
        ("JSON" | "JSONObject" | "CommentFilter", _) => true,
        (t, Value::String(e)) if enum_values(t).is_some_and(|values| values.contains(&e.as_str())) => true,
        (t, Value::Object(fields)) if input_fields(t).is_some() => {
            let declared = input_fields(t).unwrap_or_default();
            for (name, value) in fields {
                let Some((_, field_ty)) = declared.iter().find(|(n, _)| n == name) else {
                    return Err(format!("Field \"{name}\" is not defined by type \"{t}\"."));
                };
                check_json(value, field_ty).map_err(|e| format!("At \"{name}\": {e}"))?;
            }
            true
        }
        _ => false,
    };
    if fits { Ok(()) } else { Err(format!("{inner} cannot represent {v}")) }
}

fn to_json(ctx: &Ctx<'_>, v: &GValue<'_, String>) -> Value {
    match v {
        GValue::Variable(name) => ctx.vars.get(name).cloned().unwrap_or(Value::Null),
        GValue::Int(n) => json!(n.as_i64()),
        GValue::Float(f) => json!(f),
        GValue::String(s) => json!(s),
        GValue::Boolean(b) => json!(b),
        GValue::Null => Value::Null,
        GValue::Enum(e) => json!(e),
        GValue::List(items) => Value::Array(items.iter().map(|i| to_json(ctx, i)).collect()),
        GValue::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), to_json(ctx, v))).collect()),
    }
}

/// Checks a field's arguments against those declared.
fn check_args(
    ctx: &mut Ctx<'_>,
    parent: &str,
    field: &str,
    declared: Args,
    given: &[(String, GValue<'_, String>)],
) -> Result<(), String> {
    for (name, value) in given {
        let Some((_, ty)) = declared.iter().find(|(n, _)| n == name) else {
            return Err(format!("Unknown argument \"{name}\" on field \"{parent}.{field}\"."));
        };
        check_literal(ctx, value, ty)?;
    }
    for (name, ty) in declared {
        if ty.ends_with('!') && !given.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "Field \"{field}\" argument \"{name}\" of type \"{ty}\" is required, but it was not provided."
            ));
        }
    }
    Ok(())
}

/// Whether `@skip`/`@include` keep a selection.
fn included(ctx: &mut Ctx<'_>, directives: &[Directive<'_, String>]) -> Result<bool, String> {
    let mut keep = true;
    for d in directives {
        let skip = match d.name.as_str() {
            "skip" => true,
            "include" => false,
            other => return Err(format!("Unknown directive \"@{other}\".")),
        };
        check_args(ctx, "@", &d.name, &[("if", "Boolean!")], &d.arguments)?;
        let value = d.arguments.iter().find(|(n, _)| n == "if").map(|(_, v)| to_json(ctx, v));
        let flag = value.and_then(|v| v.as_bool()).unwrap_or(false);
        keep &= if skip { !flag } else { flag };
    }
    Ok(keep)
}

/// Walks `set` on an object of type `ty`: validates it and, given the object's full `value`, puts
/// the selected fields in `out`.
fn walk(
    ctx: &mut Ctx<'_>,
    ty: &str,
    value: Option<&Value>,
    set: &SelectionSet<'_, String>,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    ctx.depth += 1;
    if ctx.depth > 32 {
        return Err("Query is too deep (fragment cycle?).".into());
    }
    for selection in &set.items {
        match selection {
            Selection::Field(f) => {
                if !included(ctx, &f.directives)? {
                    continue;
                }
                let key = f.alias.clone().unwrap_or_else(|| f.name.clone());
                if f.name == "__typename" {
                    out.insert(key, json!(ty));
                    continue;
                }
                let Some((result, declared)) = output_field(ty, &f.name) else {
                    return Err(format!("Cannot query field \"{}\" on type \"{ty}\".", f.name));
                };
                check_args(ctx, ty, &f.name, declared, &f.arguments)?;
                let mut sub = value.map(|v| v.get(&f.name).cloned().unwrap_or(Value::Null));
                if let (Some(Value::Object(connection)), "comments") = (&mut sub, f.name.as_str()) {
                    let first = f.arguments.iter().find(|(n, _)| n == "first").map(|(_, v)| to_json(ctx, v));
                    if let (Some(n), Some(Value::Array(nodes))) =
                        (first.and_then(|v| v.as_u64()), connection.get_mut("nodes"))
                    {
                        let more = nodes.len() as u64 > n;
                        nodes.truncate(usize::try_from(n).unwrap_or(usize::MAX));
                        let info = page_info(nodes, more);
                        connection.insert("pageInfo".into(), info);
                    }
                }
                match result {
                    Out::Scalar(scalar) => {
                        if !f.selection_set.items.is_empty() {
                            return Err(format!(
                                "Field \"{}\" must not have a selection since type \"{scalar}\" has no subfields.",
                                f.name
                            ));
                        }
                        if let Some(v) = sub {
                            out.insert(key, v);
                        }
                    }
                    Out::Object(object) | Out::List(object) => {
                        if f.selection_set.items.is_empty() {
                            let shown =
                                if matches!(result, Out::List(_)) { format!("[{object}!]!") } else { object.into() };
                            return Err(format!(
                                "Field \"{}\" of type \"{shown}\" must have a selection of subfields. Did you mean \"{} {{ ... }}\"?",
                                f.name, f.name
                            ));
                        }
                        match sub {
                            None => walk(ctx, object, None, &f.selection_set, &mut Map::new())?,
                            Some(Value::Array(items)) => {
                                let mut selected = Vec::with_capacity(items.len());
                                for item in &items {
                                    let mut one = Map::new();
                                    walk(ctx, object, Some(item), &f.selection_set, &mut one)?;
                                    selected.push(Value::Object(one));
                                }
                                out.insert(key, Value::Array(selected));
                            }
                            Some(Value::Null) => {
                                walk(ctx, object, None, &f.selection_set, &mut Map::new())?;
                                out.insert(key, Value::Null);
                            }
                            Some(item) => {
                                let mut one = match out.remove(&key) {
                                    Some(Value::Object(existing)) => existing,
                                    _ => Map::new(),
                                };
                                walk(ctx, object, Some(&item), &f.selection_set, &mut one)?;
                                out.insert(key, Value::Object(one));
                            }
                        }
                    }
                }
            }
            Selection::FragmentSpread(spread) => {
                if !included(ctx, &spread.directives)? {
                    continue;
                }
                let Some(fragment) = ctx.fragments.get(spread.fragment_name.as_str()).copied() else {
                    return Err(format!("Unknown fragment \"{}\".", spread.fragment_name));
                };
                let graphql_parser::query::TypeCondition::On(on) = &fragment.type_condition;
                if on != ty {
                    return Err(format!(
                        "Fragment \"{}\" cannot be spread here as objects of type \"{ty}\" can never be of type \"{on}\".",
                        spread.fragment_name
                    ));
                }
                walk(ctx, ty, value, &fragment.selection_set, out)?;
            }
            Selection::InlineFragment(inline) => {
                if !included(ctx, &inline.directives)? {
                    continue;
                }
                if let Some(graphql_parser::query::TypeCondition::On(on)) = &inline.type_condition
                    && on != ty
                {
                    return Err(format!(
                        "Fragment cannot be spread here as objects of type \"{ty}\" can never be of type \"{on}\"."
                    ));
                }
                walk(ctx, ty, value, &inline.selection_set, out)?;
            }
        }
    }
    ctx.depth -= 1;
    Ok(())
}

fn page_info(nodes: &[Value], has_next: bool) -> Value {
    let cursor = |v: Option<&Value>| v.and_then(|n| n.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "hasNextPage": has_next,
        "hasPreviousPage": false,
        "startCursor": cursor(nodes.first()),
        "endCursor": cursor(nodes.last()),
    })
}

/// An execution error: Linear's message, and whether it is a violation.
struct ExecError {
    message: String,
    violation: bool,
}

fn not_found(entity: &str, violation: bool) -> ExecError {
    ExecError { message: format!("Entity not found: {entity}"), violation }
}

fn argument_error(what: &str) -> ExecError {
    ExecError { message: format!("Argument Validation Error: {what}"), violation: true }
}

impl Inner {
    fn find_issue(&self, id: &str) -> Option<usize> {
        self.issues.iter().position(|i| i.seed.id == id || i.seed.identifier.eq_ignore_ascii_case(id))
    }

    fn call(&mut self, r: &Recorded) -> Result<Value, Refusal> {
        if r.path != "/graphql" {
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                body: json!({"errors": [{"message": "Not Found"}]}),
                violation: Some(format!("the endpoint is POST /graphql, not {}", r.path)),
            });
        }
        const BAD_POST: &str = "POST body missing, invalid Content-Type, or JSON object has no keys.";
        if r.method != "POST" {
            return Err(request_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", BAD_POST));
        }
        let content_type = r.header("content-type").unwrap_or_default();
        if content_type.split(';').next().map(str::trim) != Some("application/json") {
            let mut refusal = request_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", BAD_POST);
            refusal.violation = Some(format!("Content-Type must be application/json, got {content_type:?}"));
            return Err(refusal);
        }
        // A personal API key goes as is; an OAuth access token (an app's, `lin_oauth_...`) as a bearer.
        let expected = if self.api_key.starts_with("lin_oauth_") {
            format!("Bearer {}", self.api_key)
        } else {
            self.api_key.clone()
        };
        match r.header("authorization") {
            Some(auth) if auth == expected => {}
            other => {
                let mut refusal = request_error(
                    StatusCode::BAD_REQUEST,
                    "AUTHENTICATION_ERROR",
                    "Authentication required, not authenticated",
                );
                refusal.violation = Some(match other {
                    None => "no Authorization header (the API key, as is)".into(),
                    Some(a) if a.strip_prefix("Bearer ") == Some(self.api_key.as_str()) => {
                        "a personal API key is sent as `Authorization: <key>`, without `Bearer`".into()
                    }
                    Some(a) => format!("Authorization is not the API key: {a:?}"),
                });
                return Err(refusal);
            }
        }
        let body: Value = serde_json::from_slice(&r.body)
            .map_err(|e| request_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &format!("Invalid JSON body: {e}")))?;
        let Some(query) = body.get("query").and_then(Value::as_str) else {
            return Err(request_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension.",
            ));
        };
        let variables = match body.get("variables") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(v)) => v.clone(),
            Some(_) => {
                return Err(request_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "`variables` in a POST body should be an object",
                ));
            }
        };
        let operation_name = body.get("operationName").and_then(Value::as_str);
        let document = graphql_parser::parse_query::<String>(query).map_err(|e| {
            request_error(StatusCode::BAD_REQUEST, "GRAPHQL_PARSE_FAILED", &format!("Syntax Error: {e}"))
        })?;
        self.run(&document, operation_name, variables)
    }

    fn run<'d>(
        &mut self,
        document: &'d graphql_parser::query::Document<'d, String>,
        operation_name: Option<&str>,
        variables: Map<String, Value>,
    ) -> Result<Value, Refusal> {
        let mut fragments = HashMap::new();
        let mut operations = Vec::new();
        for definition in &document.definitions {
            match definition {
                Definition::Fragment(f) => {
                    fragments.insert(f.name.as_str(), f);
                }
                Definition::Operation(op) => operations.push(op),
            }
        }
        let name_of = |op: &OperationDefinition<'_, String>| match op {
            OperationDefinition::Query(q) => q.name.clone(),
            OperationDefinition::Mutation(m) => m.name.clone(),
            OperationDefinition::Subscription(s) => s.name.clone(),
            OperationDefinition::SelectionSet(_) => None,
        };
        let operation = match operation_name {
            Some(wanted) => {
                operations.iter().find(|op| name_of(op).as_deref() == Some(wanted)).copied().ok_or_else(|| {
                    request_error(
                        StatusCode::BAD_REQUEST,
                        "OPERATION_RESOLUTION_FAILURE",
                        &format!("Unknown operation named \"{wanted}\"."),
                    )
                })?
            }
            None if operations.len() == 1 => operations[0],
            None => {
                return Err(request_error(
                    StatusCode::BAD_REQUEST,
                    "OPERATION_RESOLUTION_FAILURE",
                    "Must provide operation name if query contains multiple operations.",
                ));
            }
        };
        let (root, definitions, set) = match operation {
            OperationDefinition::Query(q) => ("Query", q.variable_definitions.as_slice(), &q.selection_set),
            OperationDefinition::Mutation(m) => ("Mutation", m.variable_definitions.as_slice(), &m.selection_set),
            OperationDefinition::SelectionSet(s) => ("Query", &[][..], s),
            OperationDefinition::Subscription(_) => return Err(invalid("Subscriptions are not served over HTTP.")),
        };
        let op_label = name_of(operation).map(|n| format!(" in operation \"{n}\"")).unwrap_or_default();

        // Variables: declared, given, of their types.
        let mut ctx = Ctx { fragments, var_types: HashMap::new(), vars: Map::new(), used: BTreeSet::new(), depth: 0 };
        for definition in definitions {
            let ty = type_string(&definition.var_type);
            let name = definition.name.clone();
            match (variables.get(&name), &definition.default_value) {
                (Some(v), _) => {
                    check_json(v, &ty)
                        .map_err(|e| invalid(format!("Variable \"${name}\" got invalid value {v}; {e}")))?;
                    ctx.vars.insert(name.clone(), v.clone());
                }
                (None, Some(default)) => {
                    let empty = Ctx {
                        fragments: HashMap::new(),
                        var_types: HashMap::new(),
                        vars: Map::new(),
                        used: BTreeSet::new(),
                        depth: 0,
                    };
                    ctx.vars.insert(name.clone(), to_json(&empty, default));
                }
                (None, None) if ty.ends_with('!') => {
                    return Err(invalid(format!("Variable \"${name}\" of required type \"{ty}\" was not provided.")));
                }
                (None, None) => {}
            }
            ctx.var_types.insert(name, ty);
        }
        // Validation, before anything is done.
        walk(&mut ctx, root, None, set, &mut Map::new()).map_err(invalid)?;
        if let Some(unused) = ctx.var_types.keys().find(|v| !ctx.used.contains(*v)) {
            return Err(invalid(format!("Variable \"${unused}\" is never used{op_label}.")));
        }
        // Execution, root field by root field (in order, as mutations are).
        let mut data = Map::new();
        for selection in &set.items {
            let Selection::Field(field) = selection else {
                return Err(invalid("The fake serves root fields only, not fragments at the root."));
            };
            if !included(&mut ctx, &field.directives).map_err(invalid)? {
                continue;
            }
            let key = field.alias.clone().unwrap_or_else(|| field.name.clone());
            if field.name == "__typename" {
                data.insert(key, json!(root));
                continue;
            }
            let args: Map<String, Value> = field.arguments.iter().map(|(n, v)| (n.clone(), to_json(&ctx, v))).collect();
            let (result_type, full) = match self.resolve(&field.name, &args) {
                Ok(found) => found,
                Err(ExecError { message, violation }) => {
                    if violation {
                        self.core.violation(format!("{}: {message}", field.name));
                    }
                    return Ok(json!({
                        "data": null,
                        "errors": [{"message": message, "path": [key], "extensions": {"code": "INVALID_INPUT"}}],
                    }));
                }
            };
            let mut selected = Map::new();
            walk(&mut ctx, result_type, Some(&full), &field.selection_set, &mut selected).map_err(invalid)?;
            data.insert(key, Value::Object(selected));
        }
        Ok(json!({"data": data}))
    }

    /// Runs a root field: the type of its result and the result in full.
    fn resolve(&mut self, field: &str, args: &Map<String, Value>) -> Result<(&'static str, Value), ExecError> {
        let string = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let input = args.get("input").cloned().unwrap_or(Value::Null);
        let now = common::rfc3339(common::now_secs());
        match field {
            "issue" => {
                let id = string(args.get("id")).unwrap_or_default();
                let index = self.find_issue(&id).ok_or_else(|| not_found("Issue", false))?;
                Ok(("Issue", self.issue_json(index, true)))
            }
            "commentCreate" => {
                let issue_id = string(input.get("issueId")).ok_or_else(|| argument_error("issueId must be given"))?;
                let body = string(input.get("body"))
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| argument_error("body should not be empty"))?;
                let index = self.find_issue(&issue_id).ok_or_else(|| not_found("Issue", true))?;
                let id = string(input.get("id")).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                self.comments.push(CommentState {
                    comment: LinearComment {
                        id,
                        issue_id: self.issues[index].seed.id.clone(),
                        body,
                        updates: Vec::new(),
                        by_api: true,
                    },
                    user: (API_USER_ID.into(), API_USER_NAME.into()),
                    created_at: now.clone(),
                    updated_at: now,
                    edited_at: None,
                });
                let comment = self.comment_json(self.comments.len() - 1);
                Ok(("CommentPayload", self.payload("comment", comment)))
            }
            "commentUpdate" => {
                let id = string(args.get("id")).unwrap_or_default();
                let index =
                    self.comments.iter().position(|c| c.comment.id == id).ok_or_else(|| not_found("Comment", true))?;
                let skip_edited = args.get("skipEditedAt").and_then(Value::as_bool).unwrap_or(false);
                let state = &mut self.comments[index];
                if let Some(body) = string(input.get("body")) {
                    state.comment.body = body.clone();
                    state.comment.updates.push(body);
                }
                state.updated_at = now.clone();
                if !skip_edited {
                    state.edited_at = Some(now);
                }
                let comment = self.comment_json(index);
                Ok(("CommentPayload", self.payload("comment", comment)))
            }
            "issueUpdate" => {
                let id = string(args.get("id")).unwrap_or_default();
                let index = self.find_issue(&id).ok_or_else(|| not_found("Issue", true))?;
                let issue = &mut self.issues[index];
                if let Some(state) = string(input.get("stateId")) {
                    issue.state_id = Some(state);
                }
                if let Some(title) = string(input.get("title")) {
                    issue.seed.title = title;
                }
                if let Some(description) = string(input.get("description")) {
                    issue.seed.description = description;
                }
                issue.updated_at = now;
                let issue = self.issue_json(index, true);
                Ok(("IssuePayload", self.payload("issue", issue)))
            }
            "agentActivityCreate" | "agentSessionUpdate" if !self.api_key.starts_with("lin_oauth_") => Err(ExecError {
                message: "Agent sessions are only available to OAuth applications (actor=app)".into(),
                violation: true,
            }),
            "agentActivityCreate" => {
                let session_id = string(input.get("agentSessionId"))
                    .ok_or_else(|| argument_error("agentSessionId must be given"))?;
                let index = self
                    .sessions
                    .iter()
                    .position(|x| x.id == session_id)
                    .ok_or_else(|| not_found("AgentSession", true))?;
                let content = input.get("content").cloned().unwrap_or(Value::Null);
                let kind = content.get("type").and_then(Value::as_str).unwrap_or("");
                let has_body = content.get("body").and_then(Value::as_str).is_some_and(|b| !b.is_empty());
                match kind {
                    "thought" | "elicitation" | "response" | "error" if has_body => {}
                    "action" if content.get("action").is_some() && content.get("parameter").is_some() => {}
                    "prompt" => return Err(argument_error("content.type prompt is made by users, not agents")),
                    _ => {
                        return Err(argument_error(
                            "content must be {type: thought|elicitation|action|response|error, body}",
                        ));
                    }
                }
                self.sessions[index].activities.push(content);
                let id = uuid::Uuid::new_v4().to_string();
                Ok(("AgentActivityPayload", self.payload("agentActivity", json!({"id": id}))))
            }
            "agentSessionUpdate" => {
                let id = string(args.get("id")).unwrap_or_default();
                let index =
                    self.sessions.iter().position(|x| x.id == id).ok_or_else(|| not_found("AgentSession", true))?;
                if let Some(urls) = input.get("externalUrls").and_then(Value::as_array) {
                    self.sessions[index].external_urls = urls.clone();
                }
                self.sync_id += 1;
                Ok(("AgentSessionPayload", json!({"success": true, "lastSyncId": self.sync_id})))
            }
            other => Err(ExecError { message: format!("fake: no resolver for {other}"), violation: true }),
        }
    }

    fn payload(&mut self, key: &str, entity: Value) -> Value {
        self.sync_id += 1;
        json!({"success": true, "lastSyncId": self.sync_id, key: entity})
    }

    fn issue_json(&self, index: usize, with_comments: bool) -> Value {
        let issue = &self.issues[index];
        let nodes: Vec<Value> = if with_comments {
            (0..self.comments.len())
                .filter(|&c| self.comments[c].comment.issue_id == issue.seed.id)
                .map(|c| self.comment_json(c))
                .collect()
        } else {
            Vec::new()
        };
        let description = Some(&issue.seed.description).filter(|d| !d.is_empty());
        json!({
            "id": issue.seed.id,
            "identifier": issue.seed.identifier,
            "title": issue.seed.title,
            "description": description,
            "url": issue.seed.url,
            "createdAt": issue.created_at,
            "updatedAt": issue.updated_at,
            "state": issue.state_id.as_ref().map(|id| json!({"id": id, "name": id})),
            "comments": {"pageInfo": page_info(&nodes, false), "nodes": nodes},
        })
    }

    fn comment_json(&self, index: usize) -> Value {
        let c = &self.comments[index];
        let issue = self.find_issue(&c.comment.issue_id);
        let url = issue.map(|i| self.issues[i].seed.url.clone()).unwrap_or_default();
        let short: String = c.comment.id.chars().take(8).collect();
        json!({
            "id": c.comment.id,
            "body": c.comment.body,
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
            "editedAt": c.edited_at,
            "url": format!("{url}#comment-{short}"),
            "user": {"id": c.user.0, "name": c.user.1, "displayName": c.user.1, "email": format!("{}@example.invalid", c.user.0)},
            "issue": issue.map(|i| self.issue_json(i, false)),
        })
    }
}
