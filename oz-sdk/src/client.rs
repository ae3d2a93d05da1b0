//! [`Client`] and its builder: base URL, API key, timeouts, user agent, retries.

use std::time::Duration;

use oz_core::retry::RetryPolicy;
use reqwest::{Method, RequestBuilder, Response};
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::http::{Http, HttpSettings, RetryRule, decode};

/// The default API root, as the official Oz SDKs use.
pub const DEFAULT_BASE_URL: &str = "https://app.warp.dev/api/v1";

/// The longest wait between two retries of a call.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A client of the REST API, authenticated with an API key. Cheap to clone; share one.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) http: Http,
    retries: RetryPolicy,
}

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<SecretString>,
    settings: HttpSettings,
    max_retries: u32,
    retry_base: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            settings: HttpSettings::default(),
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
    /// How long an answer may pause between two reads (default 30 s): a slow answer that keeps
    /// coming, such as an event stream with keep-alives, is not cut.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }
    /// The connect timeout (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }
    /// The `User-Agent`.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.settings.user_agent = agent.into();
        self
    }
    /// Retries of idempotent calls on 429, 5xx, retryable problems and connection errors (default 3).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
    /// The first retry delay, doubled each time up to 5 s (default 200 ms).
    pub fn retry_base_delay(mut self, delay: Duration) -> Self {
        self.retry_base = delay;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
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
        let retries = RetryPolicy::bounded(self.retry_base, MAX_RETRY_DELAY, self.max_retries as usize);
        Ok(Client { http: Http::new(&base, api_key, &self.settings)?, retries })
    }
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        self.http.base()
    }

    /// Sends a request, retrying idempotent ones (GET, PUT, DELETE, HEAD); returns the response of
    /// the last attempt.
    pub(crate) async fn execute(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE | Method::HEAD);
        let rule = if idempotent { RetryRule::idempotent(self.retries) } else { RetryRule::NEVER };
        self.http.execute(method, path, build, rule).await
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
