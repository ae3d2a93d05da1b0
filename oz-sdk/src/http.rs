//! The HTTP plumbing [`Client`](crate::Client) and [`AgentClient`](crate::AgentClient) share: one
//! reqwest setup, the bearer credential, retries through [`RetryPolicy`], and the mapping of error
//! answers to problem documents.

use std::time::Duration;

use backon::Retryable;
use oz_core::failure::ErrorCode;
use oz_core::retry::RetryPolicy;
use oz_core::wire::problem::Problem;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// How the reqwest client is set up.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    pub(crate) user_agent: String,
    /// Between two reads of an answer, so an event stream with keep-alives never times out.
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            user_agent: concat!("oz-sdk-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Which failed attempts are tried again, and how long to wait before each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryRule {
    pub(crate) policy: RetryPolicy,
    pub(crate) when: fn(&Error) -> bool,
}

impl RetryRule {
    pub(crate) const NEVER: RetryRule =
        RetryRule { policy: RetryPolicy::bounded(Duration::ZERO, Duration::ZERO, 0), when: |_| false };

    /// A call that is safe to repeat: on 429, 5xx, a retryable problem or any transport error.
    pub(crate) fn idempotent(policy: RetryPolicy) -> Self {
        RetryRule { policy, when: |e| e.is_retryable() || e.status().is_some_and(|s| s == 429 || s >= 500) }
    }

    /// A call that must not be repeated once the server may have seen it: on 429 and 5xx (answered,
    /// so not acted on), and on connect errors (a connect timeout included), which sent nothing. A
    /// timeout after the request went out is not retried: the server may have acted on it.
    pub(crate) fn unless_sent(policy: RetryPolicy) -> Self {
        RetryRule {
            policy,
            when: |e| match e {
                Error::Transport(t) => t.is_connect(),
                _ => e.status().is_some_and(|s| s == 429 || s >= 500),
            },
        }
    }
}

/// One API root, one credential.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    credential: SecretString,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("base", &self.base).field("credential", &"[REDACTED]").finish()
    }
}

impl Http {
    /// `base_url` may be a server root; `/api/v1` is added when missing.
    pub(crate) fn new(base_url: &str, credential: SecretString, settings: &HttpSettings) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut base = base_url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!("the base URL {base:?} must start with http:// or https://")));
        }
        if !base.ends_with("/api/v1") {
            base.push_str("/api/v1");
        }
        let client = reqwest::Client::builder()
            .user_agent(settings.user_agent.as_str())
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.timeout)
            .build()
            .map_err(Error::Setup)?;
        Ok(Self { client, base, credential })
    }

    /// The API root, ending in `/api/v1`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// A WebSocket request for `path` under the API root (`ws://` or `wss://`), with the credential.
    pub(crate) fn websocket_request(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = match self.base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}{path}"),
            None => format!("ws://{}{path}", self.base.trim_start_matches("http://")),
        };
        let mut request = url
            .into_client_request()
            .map_err(|e| Error::Config(format!("not a WebSocket URL under {}: {e}", self.base)))?;
        let auth = format!("Bearer {}", self.credential.expose_secret())
            .parse()
            .map_err(|_| Error::Config("the API key cannot be sent in a header".into()))?;
        request.headers_mut().insert("Authorization", auth);
        Ok(request)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(self.credential.expose_secret())
    }

    /// Sends a request built afresh for each attempt; an error answer becomes [`Error::Api`].
    pub(crate) async fn execute(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        rule: RetryRule,
    ) -> Result<Response> {
        let attempt = || async {
            match build(self.request(method.clone(), path)).send().await {
                Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::FOUND => Ok(resp),
                Ok(resp) => Err(problem_of(resp).await),
                Err(e) => Err(Error::Transport(e.without_url())),
            }
        };
        attempt
            .retry(rule.policy.builder())
            .sleep(tokio::time::sleep)
            .when(rule.when)
            .notify(|error, delay| tracing::debug!(%method, path, ?delay, "retrying after: {error}"))
            .await
    }
}

/// Reads a JSON answer.
pub(crate) async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|e| Error::Transport(e.without_url()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::decode(e, &bytes))
}

/// The problem document of an error answer; a body that is not one becomes one, from the status.
async fn problem_of(resp: Response) -> Error {
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body = resp.bytes().await.unwrap_or_default();
    problem_from(status, &body, retry_after)
}

/// An error answer as [`Error::Api`]: its problem document, or one made from its status and body.
pub(crate) fn problem_from(status: u16, body: &[u8], retry_after: bool) -> Error {
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => Error::Api(Box::new(p)),
        Err(_) => {
            let code = match status {
                401 => ErrorCode::AuthenticationRequired,
                403 => ErrorCode::NotAuthorized,
                404 => ErrorCode::ResourceNotFound,
                409 => ErrorCode::Conflict,
                s if s >= 500 => ErrorCode::InternalError,
                _ => ErrorCode::InvalidRequest,
            };
            let mut p = Problem::new(status, code, String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
            p.retryable |= retry_after;
            Error::Api(Box::new(p))
        }
    }
}

/// Percent-encodes one path segment.
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
