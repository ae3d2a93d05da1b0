//! Calls to the providers' APIs: one HTTP client (rustls, no redirects, bounded time), answers read
//! to at most a megabyte, and failures sorted into those worth retrying (a transport error, 429,
//! 5xx, a provider's own rate limit) and the rest. Error messages carry the provider's answer,
//! never a credential: tokens travel in headers only, and URLs hold none.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{RequestBuilder, Url};

/// The longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 1024 * 1024;

/// The client every provider call goes through.
pub(crate) fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .user_agent(concat!("oz-server/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// A provider's API root from its settings: `https://`, or `http://` to a loopback address only
/// (a local fake, a proxy on the same machine).
pub(crate) fn base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!("{text:?} must be an https:// URL (http:// only to a loopback address)")),
    }
}

/// The URL `base` with `path` (slash-separated, no leading slash) after its own path.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

/// A call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The API could not be reached or did not answer in time.
    #[error("{provider} {what}: the API could not be reached")]
    Transport {
        /// `Slack`, `Linear`, `GitHub`.
        provider: &'static str,
        /// The call (`chat.postMessage`).
        what: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error.
    #[error("{provider} {what}: {detail} (HTTP {status})")]
    Refused {
        /// `Slack`, `Linear`, `GitHub`.
        provider: &'static str,
        /// The call.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's own words (its error code or message).
        detail: String,
        /// Whether trying again later may succeed (a rate limit, a server error).
        retryable: bool,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
}

impl CallError {
    /// `Some(wait)` if trying again may help (`wait`: what the provider asked for, if it did).
    pub(crate) fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            CallError::Transport { .. } => Some(None),
            CallError::Refused { retryable: true, retry_after, .. } => Some(*retry_after),
            CallError::Refused { .. } => None,
        }
    }

    /// An error answer.
    pub(crate) fn refused(
        provider: &'static str,
        what: &'static str,
        answer: &Answer,
        detail: impl Into<String>,
        retryable: bool,
    ) -> Self {
        let mut detail: String = detail.into();
        if detail.len() > 300 {
            let mut end = 300;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        CallError::Refused { provider, what, status: answer.status, detail, retryable, retry_after: answer.retry_after }
    }
}

/// A provider's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its HTTP status.
    pub(crate) status: u16,
    /// How long to wait before trying again: its `Retry-After`, else the time to its
    /// `X-RateLimit-Reset` when it says no requests remain (GitHub's primary rate limit).
    pub(crate) retry_after: Option<Duration>,
    /// Whether it says no requests remain (`X-RateLimit-Remaining: 0`).
    pub(crate) exhausted: bool,
    /// Its body as JSON (`Null` if it was not).
    pub(crate) body: serde_json::Value,
}

impl Answer {
    /// Whether the status is one to retry (429, 5xx).
    pub(crate) fn is_retryable_status(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

/// Sends `request` and reads its answer, whatever its status.
pub(crate) async fn send(
    provider: &'static str,
    what: &'static str,
    request: RequestBuilder,
) -> Result<Answer, CallError> {
    let response = request.send().await.map_err(|source| CallError::Transport { provider, what, source })?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let reset = header("x-ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|_| exhausted)
        .map(|at| Duration::from_secs(u64::try_from(at - jiff::Timestamp::now().as_second()).unwrap_or(1).max(1)));
    let retry_after = header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .or(reset)
        .map(|d| d.min(Duration::from_secs(3600)));
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|source| CallError::Transport { provider, what, source })? {
        if body.len() + chunk.len() > MAX_ANSWER {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok(Answer { status, retry_after, exhausted, body })
}
