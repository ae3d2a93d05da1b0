//! [`Client`] and its builder: base URL, API key, timeouts, user agent, retries.

use std::time::Duration;

use oz_core::failure::ErrorCode;
use oz_core::wire::problem::Problem;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The default API root, as the official Oz SDKs use.
pub const DEFAULT_BASE_URL: &str = "https://app.warp.dev/api/v1";

/// A client of the REST API. Cheap to clone; share one.
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    api_key: SecretString,
    max_retries: u32,
    retry_base: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("api_key", &"[REDACTED]").finish()
    }
}

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<SecretString>,
    timeout: Duration,
    connect_timeout: Duration,
    user_agent: String,
    max_retries: u32,
    retry_base: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("oz-sdk-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_retries: 3,
            retry_base: Duration::from_millis(200),
        }
    }
}

impl ClientBuilder {
    /// The API root (`http://127.0.0.1:8080/api/v1`). Default: `OZ_API_BASE_URL`, else
    /// [`DEFAULT_BASE_URL`]. A server root without `/api/v1` gets it added.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
    /// The API key. Default: `WARP_API_KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }
    /// The whole-request timeout (default 30 s; event streams are exempt).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The connect timeout (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// The `User-Agent`.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }
    /// Retries of idempotent calls on 429, 5xx, retryable problems and connection errors (default 3).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
    /// The first retry delay, doubled each time (default 200 ms).
    pub fn retry_base_delay(mut self, delay: Duration) -> Self {
        self.retry_base = delay;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api_key = match self.api_key {
            Some(k) => k,
            None => SecretString::from(
                std::env::var("WARP_API_KEY")
                    .ok()
                    .filter(|k| !k.trim().is_empty())
                    .ok_or_else(|| Error::Config("no API key: call .api_key(..) or set WARP_API_KEY".into()))?,
            ),
        };
        let base = self
            .base_url
            .or_else(|| std::env::var("OZ_API_BASE_URL").ok().filter(|u| !u.trim().is_empty()))
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let mut base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!("the base URL {base:?} must start with http:// or https://")));
        }
        if !base.ends_with("/api/v1") {
            base.push_str("/api/v1");
        }
        let http = reqwest::Client::builder()
            .user_agent(self.user_agent)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client { http, base, api_key, max_retries: self.max_retries, retry_base: self.retry_base })
    }
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.api_key.expose_secret())
    }

    /// Sends a request, retrying idempotent ones; returns the response of the last attempt.
    pub(crate) async fn execute(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE | Method::HEAD);
        let mut attempt = 0;
        loop {
            let result = build(self.request(method.clone(), path)).send().await;
            let error = match result {
                Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::FOUND => return Ok(resp),
                Ok(resp) => problem_of(resp).await,
                Err(e) => Error::Transport(e.without_url().to_string()),
            };
            let retry = idempotent
                && attempt < self.max_retries
                && (error.is_retryable() || error.status().is_some_and(|s| s == 429 || s >= 500));
            if !retry {
                return Err(error);
            }
            let delay = self.retry_base * 2u32.saturating_pow(attempt);
            tracing::debug!(attempt, ?delay, "retrying after: {error}");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    pub(crate) async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T> {
        decode(self.execute(method, path, |r| r).await?).await
    }

    pub(crate) async fn call_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        decode(self.execute(method, path, |r| r.json(body)).await?).await
    }
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|e| Error::Transport(e.without_url().to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))))
}

async fn problem_of(resp: Response) -> Error {
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Problem>(&body) {
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
