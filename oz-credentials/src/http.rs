//! The HTTP plumbing the GitHub and GitLab providers share: one reqwest setup (rustls with ring, as
//! the rest of the workspace), base URLs that must be `https://` (plain `http://` only to loopback),
//! URLs built segment by segment (so `group/project` travels as `group%2Fproject`), retries through
//! [`RetryPolicy`], bounded answers, and error answers made into [`ProviderAnswer`]s.

use std::net::IpAddr;
use std::time::Duration;

use backon::Retryable;
use oz_core::retry::RetryPolicy;
use reqwest::{Method, RequestBuilder, Response, Url};
use secrecy::SecretString;
use secrecy::zeroize::Zeroize;
use serde::de::DeserializeOwned;

use crate::error::{Action, CredentialError, ProviderAnswer};
use crate::issued::ProviderKind;

/// The largest answer read, in bytes; the documented ones are well under a kilobyte.
const MAX_BODY: usize = 1024 * 1024;

/// How a provider talks HTTP.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpOptions {
    /// The longest a whole request may take, answer included.
    pub timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
    /// The `User-Agent` (GitHub refuses requests without one).
    pub user_agent: String,
    /// Retries. A `GET` or `DELETE` is retried after a transport error, a 429 or a 5xx; a `POST`
    /// (which mints a token) only when it cannot have been acted on: a connect error or a 429.
    pub retry: RetryPolicy,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("oz-credentials/", env!("CARGO_PKG_VERSION")).to_owned(),
            retry: RetryPolicy::bounded(Duration::from_millis(250), Duration::from_secs(2), 2),
        }
    }
}

impl HttpOptions {
    /// With another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// One provider's API root.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    client: reqwest::Client,
    base: Url,
    provider: ProviderKind,
    retry: RetryPolicy,
}

/// One call: what it is for, where it goes, and the credentials to mask in an error answer.
pub(crate) struct Call<'a> {
    pub(crate) action: Action,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) secrets: &'a [&'a str],
}

impl Api {
    pub(crate) fn new(provider: ProviderKind, base_url: &str, options: &HttpOptions) -> Result<Self, CredentialError> {
        let base = parse_base_url(provider, base_url)?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(options.user_agent.as_str())
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(CredentialError::HttpSetup)?;
        Ok(Self { client, base, provider, retry: options.retry })
    }

    /// The API root.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// The base URL with these path segments added, each percent-encoded as one segment.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends a request built afresh for each attempt and reads a success answer's body; an error
    /// answer becomes [`CredentialError::Refused`]. The body comes back in a buffer the caller
    /// zeroizes once decoded (it may hold a token).
    pub(crate) async fn send(
        &self,
        call: Call<'_>,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Vec<u8>, CredentialError> {
        let idempotent = call.method == Method::GET || call.method == Method::DELETE;
        let attempt = || async {
            let request = build(self.client.request(call.method.clone(), call.url.clone()));
            let response = request.send().await.map_err(|e| self.transport(call.action, e))?;
            let status = response.status();
            let mut body = self.read_body(call.action, response).await?;
            if status.is_success() {
                return Ok(body);
            }
            let answer = ProviderAnswer { status: status.as_u16(), message: answer_message(&body, call.secrets) };
            body.zeroize();
            Err(CredentialError::Refused { provider: self.provider, action: call.action, answer })
        };
        attempt
            .retry(self.retry.builder())
            .sleep(tokio::time::sleep)
            .when(|e| retryable(e, idempotent))
            .notify(|error, delay| tracing::debug!(provider = %self.provider, ?delay, "retrying after: {error}"))
            .await
    }

    /// Decodes a JSON answer, then zeroizes the buffer.
    pub(crate) fn decode<T: DeserializeOwned>(&self, action: Action, mut body: Vec<u8>) -> Result<T, CredentialError> {
        let decoded = serde_json::from_slice(&body).map_err(|e| CredentialError::Decode {
            provider: self.provider,
            action,
            // serde's message can quote the offending value, which may be the token: keep only
            // what kind of error it was and where.
            detail: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
        });
        body.zeroize();
        decoded
    }

    fn transport(&self, action: Action, e: reqwest::Error) -> CredentialError {
        CredentialError::Transport { provider: self.provider, action, source: e.without_url() }
    }

    async fn read_body(&self, action: Action, mut response: Response) -> Result<Vec<u8>, CredentialError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(action, e))? {
            if body.len() + chunk.len() > MAX_BODY {
                body.zeroize();
                return Err(CredentialError::Decode {
                    provider: self.provider,
                    action,
                    detail: format!("the answer is longer than {MAX_BODY} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Whether another attempt may help, and cannot mint a second token: see [`HttpOptions::retry`].
fn retryable(e: &CredentialError, idempotent: bool) -> bool {
    match e {
        CredentialError::Transport { source, .. } => source.is_connect() || idempotent,
        CredentialError::Refused { answer, .. } => answer.status == 429 || (idempotent && answer.status >= 500),
        _ => false,
    }
}

/// An `https://` URL, or an `http://` one to a loopback address (local servers, tests): the App's
/// JWT and the GitLab token must not cross a network in the clear.
fn parse_base_url(provider: ProviderKind, text: &str) -> Result<Url, CredentialError> {
    let url = Url::parse(text.trim())
        .map_err(|e| CredentialError::config(provider, format!("the base URL {text:?} is not a URL: {e}")))?;
    let loopback = url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    let ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => loopback,
        _ => false,
    };
    if !ok || url.cannot_be_a_base() || url.query().is_some() || !url.username().is_empty() || url.password().is_some()
    {
        return Err(CredentialError::config(
            provider,
            format!(
                "the base URL {text:?} must be https:// (http:// only to a loopback address), without credentials or a query"
            ),
        ));
    }
    Ok(url)
}

/// The host and, when it is not the scheme's default, the port: git's credential `host`.
pub(crate) fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Deserializes a token straight into a [`SecretString`], so no plain copy outlives decoding.
pub(crate) fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(SecretString::from)
}

/// What an error answer says: its JSON `message` (GitHub, GitLab), else `error` (GitLab's older
/// answers), else the body itself; one line, the request's credentials masked, cut short.
fn answer_message(body: &[u8], secrets: &[&str]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let picked = json.as_ref().and_then(|v| v.get("message").or_else(|| v.get("error")));
    let mut text = match picked {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[REDACTED]");
    }
    let mut message: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(ProviderAnswer::MAX_MESSAGE).collect();
    if message.trim().is_empty() {
        message = "(no message)".to_owned();
    }
    text.zeroize();
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_must_be_https_unless_loopback() {
        for ok in [
            "https://api.github.com",
            "https://gitlab.example.com/api/v4",
            "http://127.0.0.1:8080",
            "http://[::1]:1",
            "http://localhost:9",
        ] {
            parse_base_url(ProviderKind::GitLab, ok).unwrap();
        }
        for bad in [
            "http://api.github.com",
            "http://10.0.0.1",
            "ftp://x",
            "not a url",
            "https://u:p@example.com",
            "https://example.com/?q=1",
        ] {
            let err = parse_base_url(ProviderKind::GitLab, bad).unwrap_err();
            assert!(matches!(err, CredentialError::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn urls_are_built_segment_by_segment() {
        let api =
            Api::new(ProviderKind::GitLab, "https://gitlab.example.com/api/v4/", &HttpOptions::default()).unwrap();
        let url = api.url(&["projects", "group/project", "access_tokens", "42"]);
        assert_eq!(url.as_str(), "https://gitlab.example.com/api/v4/projects/group%2Fproject/access_tokens/42");
        assert_eq!(host_of(api.base()), "gitlab.example.com");
        assert_eq!(host_of(&Url::parse("http://127.0.0.1:8443/x").unwrap()), "127.0.0.1:8443");
    }

    #[test]
    fn an_answer_keeps_its_message_without_the_secrets() {
        let secret = "glpat-secret-value";
        let cases: [(&[u8], &str); 5] = [
            (br#"{"message":"Not Found","documentation_url":"https://docs"}"#, "Not Found"),
            (br#"{"message":{"expires_at":["must be in the future"]}}"#, r#"{"expires_at":["must be in the future"]}"#),
            (br#"{"error":"scopes is invalid"}"#, "scopes is invalid"),
            (b"bad token glpat-secret-value\nagain", "bad token [REDACTED] again"),
            (b"", "(no message)"),
        ];
        for (body, expected) in cases {
            assert_eq!(answer_message(body, &[secret, ""]), expected);
        }
        assert_eq!(answer_message("x".repeat(1000).as_bytes(), &[]).len(), ProviderAnswer::MAX_MESSAGE);
    }

    #[test]
    fn a_body_that_does_not_decode_is_described_without_its_content() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Created {
            id: u64,
        }
        let api = Api::new(ProviderKind::GitLab, "https://gitlab.example.com", &HttpOptions::default()).unwrap();
        let err = api.decode::<Created>(Action::CreateProjectToken, br#"{"id":"glpat-leaky"}"#.to_vec()).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("glpat-leaky"), "{shown}");
        assert!(shown.contains("Data error at line 1"), "{shown}");
    }

    #[test]
    fn only_calls_that_cannot_mint_twice_are_retried_after_an_answer() {
        let refused = |status| CredentialError::Refused {
            provider: ProviderKind::GitHubApp,
            action: Action::MintInstallationToken,
            answer: ProviderAnswer { status, message: String::new() },
        };
        assert!(retryable(&refused(429), false));
        assert!(!retryable(&refused(502), false));
        assert!(retryable(&refused(502), true));
        assert!(!retryable(&refused(404), true));
    }
}
