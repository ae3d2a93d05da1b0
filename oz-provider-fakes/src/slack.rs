//! A fake of the Slack Web API methods a bot uses to talk in threads, checking each call as Slack
//! documents it (<https://api.slack.com/web>) and answering as Slack does:
//!
//! - every method lives at `{base}/METHOD` (`base_url()` ends in `/api`, like
//!   `https://slack.com/api`); an unknown method is HTTP 404 `{"ok":false,"error":"unknown_method"}`;
//! - every call carries `Authorization: Bearer <bot token>`: without it `not_authed`, with another
//!   token `invalid_auth` (HTTP 200, as Slack answers errors);
//! - the write methods (`chat.postMessage`, `chat.update`, `chat.postEphemeral`) are `POST`s of a
//!   JSON body with `Content-Type: application/json; charset=utf-8`; plain `application/json` is
//!   accepted with `"warning":"missing_charset"` (and is a violation here); another content type is
//!   `invalid_form_data`, a body that is not a JSON object `invalid_json`;
//! - `chat.postMessage` needs `channel` (`channel_not_found`) and `text`, `blocks` or `attachments`
//!   (`no_text`); a `thread_ts` that is no message of the channel is posted anyway (Slack does) but is
//!   a violation;
//! - `chat.update` needs `channel` and `ts` of a message the bot posted there (`message_not_found`;
//!   `cant_update_message` for someone else's), and text or blocks; each update is kept;
//! - `chat.postEphemeral` needs `channel`, `user` and text or blocks; answers `message_ts`;
//! - `GET conversations.replies?channel=C&ts=T[&limit=N]`: the thread whose root is `T`, root first;
//!   `thread_not_found` for an unknown one.
//!
//! Every request is recorded; every one answered with an error (but an injected [`Failure`], or
//! `conversations.replies`' `thread_not_found`) is also a violation. Injected failures: rate limited
//! is HTTP 429 with `Retry-After` and `{"ok":false,"error":"ratelimited"}`, a server error HTTP 500,
//! any other status that status with `{"ok":false,"error":"fake_injected_failure"}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::common::{self, Core, Failure, Recorded};

/// The `bot_id` of the fake's bot user.
pub const BOT_ID: &str = "B0FAKE";
/// The user id of the fake's bot user.
pub const BOT_USER_ID: &str = "U0FAKEBOT";

/// A message in a channel: seeded, or posted by the bot.
#[derive(Clone, Debug, PartialEq)]
pub struct SlackMessage {
    /// The channel id.
    pub channel: String,
    /// The message's `ts`, its id in the channel.
    pub ts: String,
    /// The `ts` of the thread's root, for a reply (and for a root that has replies it is its own ts).
    pub thread_ts: Option<String>,
    /// The text, as last posted or updated.
    pub text: String,
    /// The blocks, as last posted or updated.
    pub blocks: Option<Value>,
    /// The body of each `chat.update` of this message, in order.
    pub updates: Vec<Value>,
    /// Who wrote it: the seeded user, or [`BOT_USER_ID`].
    pub user: String,
    /// Whether the bot posted it (through `chat.postMessage`).
    pub by_bot: bool,
}

struct Inner {
    core: Core,
    bot_token: String,
    messages: Vec<SlackMessage>,
    ephemerals: Vec<Value>,
    last_ts: (i64, u32),
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake Slack; clones share it.
#[derive(Clone)]
pub struct FakeSlack {
    url: String,
    state: Shared,
}

impl FakeSlack {
    /// Starts a fake Slack on a loopback port of the current tokio runtime, whose bot's token is
    /// `bot_token` (`xoxb-...`).
    pub async fn start(bot_token: &str) -> Self {
        let state = Arc::new(Mutex::new(Inner {
            core: Core::default(),
            bot_token: bot_token.to_owned(),
            messages: Vec::new(),
            ephemerals: Vec::new(),
            last_ts: (0, 0),
        }));
        let url = common::serve(Router::new().fallback(handle).with_state(state.clone())).await;
        Self { url: format!("{url}/api"), state }
    }

    /// `http://127.0.0.1:PORT/api`: methods are at `{base_url}/chat.postMessage`.
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

    /// The next `n` calls are answered with `failure` (and recorded, and do nothing else).
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.lock().core.fail_next(n, failure);
    }

    /// Drops the failures still queued by [`FakeSlack::fail_next`] (Slack is back).
    pub fn clear_failures(&self) {
        self.lock().core.failures.clear();
    }

    /// Adds a message by `user` to `channel` at `ts`; a reply when `thread_ts` is given (the root
    /// then gets its own `ts` as `thread_ts`, as Slack shows a root with replies).
    pub fn seed_message(&self, channel: &str, ts: &str, user: &str, text: &str, thread_ts: Option<&str>) {
        let mut state = self.lock();
        if let Some(root) = thread_ts {
            state.mark_root(channel, root);
        }
        state.messages.push(SlackMessage {
            channel: channel.to_owned(),
            ts: ts.to_owned(),
            thread_ts: thread_ts.map(str::to_owned),
            text: text.to_owned(),
            blocks: None,
            updates: Vec::new(),
            user: user.to_owned(),
            by_bot: false,
        });
    }

    /// Every message, seeded or posted, in the order they were added.
    pub fn messages(&self) -> Vec<SlackMessage> {
        self.lock().messages.clone()
    }

    /// The body of every accepted `chat.postEphemeral`, with the `message_ts` answered added.
    pub fn ephemerals(&self) -> Vec<Value> {
        self.lock().ephemerals.clone()
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

/// Slack's request signature of `body` sent at `timestamp` (the `X-Slack-Signature` header; the
/// timestamp travels as `X-Slack-Request-Timestamp`): `v0=` and the hex HMAC-SHA256 of
/// `v0:{timestamp}:{body}` with the app's signing secret.
pub fn sign(signing_secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("v0:{timestamp}:").into_bytes();
    message.extend_from_slice(body);
    format!("v0={}", common::hmac_sha256_hex(signing_secret.as_bytes(), &message))
}

fn ok(mut answer: Value, warning: bool) -> Response {
    if warning && let Some(fields) = answer.as_object_mut() {
        fields.insert("warning".into(), json!("missing_charset"));
        fields.insert("response_metadata".into(), json!({"warnings": ["missing_charset"]}));
    }
    axum::Json(answer).into_response()
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let recorded = Recorded::new(&method, &uri, &headers, &body);
    match state.core.record(recorded.clone()) {
        Some(Failure::RateLimited { retry_after_secs }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                axum::Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
        }
        Some(Failure::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"ok": false, "error": "fatal_error"})))
                .into_response();
        }
        Some(Failure::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, axum::Json(json!({"ok": false, "error": "fake_injected_failure"}))).into_response();
        }
        None => {}
    }
    match state.call(&recorded) {
        Ok(answer) => answer,
        Err(Refusal { status, error, rule }) => {
            if let Some(rule) = rule {
                state.core.violation(rule);
            }
            (status, axum::Json(json!({"ok": false, "error": error}))).into_response()
        }
    }
}

/// An error answer: its HTTP status, Slack's `error`, and the rule broken (none for a legitimate
/// miss).
struct Refusal {
    status: StatusCode,
    error: &'static str,
    rule: Option<String>,
}

fn refuse(error: &'static str, rule: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::OK, error, rule: Some(rule.into()) }
}

/// A call's arguments and whether its content type lacked the charset.
struct Args {
    fields: Map<String, Value>,
    missing_charset: bool,
}

impl Inner {
    fn call(&mut self, r: &Recorded) -> Result<Response, Refusal> {
        let Some(name) = r.path.strip_prefix("/api/") else {
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                error: "unknown_method",
                rule: Some("Web API methods live under /api/".into()),
            });
        };
        let name = name.to_owned();
        if !["chat.postMessage", "chat.update", "chat.postEphemeral", "conversations.replies"].contains(&name.as_str())
        {
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                error: "unknown_method",
                rule: Some(format!("unknown method {name}")),
            });
        }
        match r.header("authorization") {
            None => return Err(refuse("not_authed", "no Authorization header (Bearer <bot token>)")),
            Some(auth) if auth != format!("Bearer {}", self.bot_token) => {
                return Err(refuse("invalid_auth", format!("Authorization is not `Bearer <bot token>`: {auth:?}")));
            }
            Some(_) => {}
        }
        if name == "conversations.replies" {
            return self.replies(r);
        }
        let args = json_args(r, &name)?;
        if args.missing_charset {
            self.core.violation(format!(
                "{name}: Content-Type `application/json` without `; charset=utf-8` (Slack warns missing_charset)"
            ));
        }
        match name.as_str() {
            "chat.postMessage" => self.post_message(args),
            "chat.update" => self.update(args),
            _ => self.post_ephemeral(args),
        }
    }

    fn next_ts(&mut self) -> String {
        let now = common::now_secs();
        let (secs, n) = self.last_ts;
        self.last_ts = if now > secs {
            (now, 1)
        } else if n >= 999_999 {
            (secs + 1, 1)
        } else {
            (secs, n + 1)
        };
        format!("{}.{:06}", self.last_ts.0, self.last_ts.1)
    }

    fn mark_root(&mut self, channel: &str, root: &str) {
        if let Some(m) =
            self.messages.iter_mut().find(|m| m.channel == channel && m.ts == root && m.thread_ts.is_none())
        {
            m.thread_ts = Some(root.to_owned());
        }
    }

    fn post_message(&mut self, args: Args) -> Result<Response, Refusal> {
        let fields = &args.fields;
        let channel = channel(fields, "chat.postMessage")?;
        let (text, blocks) = content(fields, "chat.postMessage", true)?;
        let thread_ts = optional_string(fields, "thread_ts", "chat.postMessage")?;
        if let Some(root) = &thread_ts
            && !self.messages.iter().any(|m| m.channel == channel && &m.ts == root)
        {
            self.core.violation(format!(
                "chat.postMessage: thread_ts {root:?} is no message of channel {channel} (Slack posts it anyway, unthreaded)"
            ));
        }
        if let Some(root) = &thread_ts {
            self.mark_root(&channel, root);
        }
        let ts = self.next_ts();
        let message = SlackMessage {
            channel: channel.clone(),
            ts: ts.clone(),
            thread_ts: thread_ts.clone(),
            text,
            blocks,
            updates: Vec::new(),
            user: BOT_USER_ID.to_owned(),
            by_bot: true,
        };
        let shown = message_json(&message, 0);
        self.messages.push(message);
        Ok(ok(json!({"ok": true, "channel": channel, "ts": ts, "message": shown}), args.missing_charset))
    }

    fn update(&mut self, args: Args) -> Result<Response, Refusal> {
        let fields = &args.fields;
        let channel = channel(fields, "chat.update")?;
        let Some(ts) = optional_string(fields, "ts", "chat.update")? else {
            return Err(refuse("message_not_found", "chat.update: `ts` is required"));
        };
        let (text, blocks) = content(fields, "chat.update", false)?;
        let Some(message) = self.messages.iter_mut().find(|m| m.channel == channel && m.ts == ts) else {
            return Err(refuse("message_not_found", format!("chat.update: no message {ts} in channel {channel}")));
        };
        if !message.by_bot {
            return Err(refuse("cant_update_message", format!("chat.update: message {ts} is not the bot's")));
        }
        if let Some(blocks) = blocks {
            message.blocks = Some(blocks);
        }
        if fields.contains_key("text") || message.blocks.is_none() {
            message.text = text;
        }
        message.updates.push(Value::Object(fields.clone()));
        let shown = message_json(message, 0);
        let text = message.text.clone();
        Ok(ok(json!({"ok": true, "channel": channel, "ts": ts, "text": text, "message": shown}), args.missing_charset))
    }

    fn post_ephemeral(&mut self, args: Args) -> Result<Response, Refusal> {
        let fields = &args.fields;
        channel(fields, "chat.postEphemeral")?;
        match fields.get("user") {
            Some(Value::String(u)) if !u.is_empty() => {}
            _ => return Err(refuse("user_not_in_channel", "chat.postEphemeral: `user` (a user id) is required")),
        }
        content(fields, "chat.postEphemeral", true)?;
        optional_string(fields, "thread_ts", "chat.postEphemeral")?;
        let ts = self.next_ts();
        let mut stored = fields.clone();
        stored.insert("message_ts".into(), json!(ts));
        self.ephemerals.push(Value::Object(stored));
        Ok(ok(json!({"ok": true, "message_ts": ts}), args.missing_charset))
    }

    fn replies(&mut self, r: &Recorded) -> Result<Response, Refusal> {
        if r.method != "GET" {
            return Err(refuse(
                "invalid_arguments",
                "conversations.replies: expected a GET with the arguments in the query string",
            ));
        }
        let (Some(channel), Some(ts)) = (r.query_param("channel"), r.query_param("ts")) else {
            return Err(refuse(
                "invalid_arguments",
                "conversations.replies: `channel` and `ts` are required query parameters",
            ));
        };
        let limit = match r.query_param("limit") {
            None => 1000,
            Some(l) => match l.parse::<usize>() {
                Ok(l) if l > 0 => l,
                _ => return Err(refuse("invalid_limit", format!("conversations.replies: bad limit {l:?}"))),
            },
        };
        let Some(root) = self.messages.iter().find(|m| m.channel == channel && m.ts == ts) else {
            return Err(Refusal { status: StatusCode::OK, error: "thread_not_found", rule: None });
        };
        let is_reply = root.thread_ts.as_deref().is_some_and(|t| t != root.ts);
        let mut thread: Vec<&SlackMessage> = if is_reply {
            vec![root]
        } else {
            let mut replies: Vec<&SlackMessage> = self
                .messages
                .iter()
                .filter(|m| m.channel == channel && m.ts != ts && m.thread_ts.as_deref() == Some(ts.as_str()))
                .collect();
            replies.sort_by(|a, b| ts_order(&a.ts, &b.ts));
            std::iter::once(root).chain(replies).collect()
        };
        let reply_count = thread.len() - 1;
        let has_more = thread.len() > limit;
        thread.truncate(limit);
        let messages: Vec<Value> = thread
            .iter()
            .enumerate()
            .map(|(i, m)| message_json(m, if i == 0 && !is_reply { reply_count } else { 0 }))
            .collect();
        Ok(ok(json!({"ok": true, "messages": messages, "has_more": has_more}), false))
    }
}

/// Orders two `ts`s numerically (`secs.micros`).
fn ts_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |t: &str| {
        let (s, f) = t.split_once('.').unwrap_or((t, "0"));
        (s.parse::<i64>().unwrap_or(0), f.parse::<i64>().unwrap_or(0))
    };
    parse(a).cmp(&parse(b))
}

/// A message as Slack shows it.
fn message_json(m: &SlackMessage, reply_count: usize) -> Value {
    let mut v = json!({"type": "message", "text": m.text, "ts": m.ts});
    let fields = v.as_object_mut().unwrap();
    if m.by_bot {
        fields.insert("bot_id".into(), json!(BOT_ID));
    }
    fields.insert("user".into(), json!(m.user));
    if let Some(t) = &m.thread_ts {
        fields.insert("thread_ts".into(), json!(t));
    }
    if let Some(b) = &m.blocks {
        fields.insert("blocks".into(), b.clone());
    }
    if reply_count > 0 {
        fields.insert("reply_count".into(), json!(reply_count));
    }
    if !m.updates.is_empty() {
        fields.insert("edited".into(), json!({"user": m.user, "ts": m.ts}));
    }
    v
}

/// The JSON body of a write method, checked as Slack documents it.
fn json_args(r: &Recorded, name: &str) -> Result<Args, Refusal> {
    if r.method != "POST" {
        return Err(refuse("invalid_arguments", format!("{name}: expected a POST with a JSON body, got {}", r.method)));
    }
    let content_type = r.header("content-type").unwrap_or_default();
    let normalized: String = content_type.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    let missing_charset = match normalized.as_str() {
        "application/json;charset=utf-8" => false,
        "application/json" => true,
        _ => {
            return Err(refuse(
                "invalid_form_data",
                format!("{name}: Content-Type must be `application/json; charset=utf-8`, got {content_type:?}"),
            ));
        }
    };
    let fields = match serde_json::from_slice::<Value>(&r.body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(refuse("json_not_object", format!("{name}: the JSON body is not an object"))),
        Err(e) => return Err(refuse("invalid_json", format!("{name}: the body is not JSON: {e}"))),
    };
    if fields.contains_key("token") {
        return Err(refuse(
            "invalid_arguments",
            format!("{name}: a JSON body must not carry `token`; send it as Bearer"),
        ));
    }
    Ok(Args { fields, missing_charset })
}

fn channel(fields: &Map<String, Value>, name: &str) -> Result<String, Refusal> {
    match fields.get("channel") {
        Some(Value::String(c)) if !c.is_empty() => Ok(c.clone()),
        _ => Err(refuse("channel_not_found", format!("{name}: `channel` (a channel id) is required"))),
    }
}

fn optional_string(fields: &Map<String, Value>, key: &str, name: &str) -> Result<Option<String>, Refusal> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(refuse("invalid_arguments", format!("{name}: `{key}` must be a string, got {other}"))),
    }
}

/// The text and blocks of a message; one of `text`, `blocks` (or `attachments` where allowed).
fn content(fields: &Map<String, Value>, name: &str, attachments: bool) -> Result<(String, Option<Value>), Refusal> {
    let text = optional_string(fields, "text", name)?.unwrap_or_default();
    let blocks = match fields.get("blocks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(b)) if b.iter().all(|b| b.get("type").is_some_and(Value::is_string)) => {
            Some(Value::Array(b.clone()))
        }
        Some(_) => {
            return Err(refuse("invalid_blocks", format!("{name}: `blocks` must be an array of blocks with a `type`")));
        }
    };
    let has_attachments =
        attachments && fields.get("attachments").is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()));
    if text.is_empty() && blocks.as_ref().is_none_or(|b| b.as_array().is_some_and(Vec::is_empty)) && !has_attachments {
        return Err(refuse("no_text", format!("{name}: one of `text` or `blocks` is required")));
    }
    Ok((text, blocks))
}
