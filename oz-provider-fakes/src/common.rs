//! What the fakes share: requests as a fake received them, injected failures, the loopback server,
//! polling for a condition, and HMAC signing.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A request as a fake received it, whether or not it passed the fake's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The method, upper case (`POST`).
    pub method: String,
    /// The path as sent, percent-encoding kept.
    pub path: String,
    /// The query string as sent (without `?`), if any.
    pub query: Option<String>,
    /// The headers in the order received, names lower case.
    pub headers: Vec<(String, String)>,
    /// The body, as sent.
    pub body: Vec<u8>,
}

impl Recorded {
    pub(crate) fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        Self {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into_owned())
                })
                .collect(),
            body: body.to_vec(),
        }
    }

    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `Value::Null` when it is empty or not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `METHOD /path`, for assertions on the order of calls.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The query string's `name` parameter, decoded (`application/x-www-form-urlencoded`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_decode(self.query.as_deref()?).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// A failure a fake answers instead of acting, the way its provider does (see each fake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The provider's rate limit, asking to retry after `retry_after_secs` seconds.
    RateLimited {
        /// What the `Retry-After` header says.
        retry_after_secs: u64,
    },
    /// An internal error of the provider (a 5xx).
    ServerError,
    /// Any other HTTP error status (400 to 599), answered with the provider's usual error body and
    /// none of the headers the other failures carry (no `Retry-After`, even for a 429).
    Status(u16),
}

/// The bookkeeping each fake's state embeds.
#[derive(Default)]
pub(crate) struct Core {
    pub(crate) requests: Vec<Recorded>,
    pub(crate) violations: Vec<String>,
    pub(crate) failures: VecDeque<Failure>,
}

impl Core {
    /// Records a request, and the failure to answer if one is due.
    pub(crate) fn record(&mut self, recorded: Recorded) -> Option<Failure> {
        self.requests.push(recorded);
        self.failures.pop_front()
    }

    /// Queues `failure` for the next `n` requests; panics for a [`Failure::Status`] that is not an
    /// error status (400 to 599).
    pub(crate) fn fail_next(&mut self, n: usize, failure: Failure) {
        if let Failure::Status(status) = failure {
            assert!((400..=599).contains(&status), "Failure::Status({status}) is not an HTTP error status");
        }
        self.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// Records that the last request broke a documented rule.
    pub(crate) fn violation(&mut self, rule: impl Into<String>) {
        let line = self.requests.last().map(Recorded::line).unwrap_or_default();
        self.violations.push(format!("{line}: {}", rule.into()));
    }
}

/// Serves `router` on a fresh loopback port, on the current tokio runtime; `http://127.0.0.1:PORT`.
pub(crate) async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Polls `f` every 20 ms until it answers; panics with `what`, the requests and the violations
/// after `timeout`.
pub(crate) async fn wait_for<S, T>(
    fake: &S,
    what: &str,
    timeout: Duration,
    f: impl Fn(&S) -> Option<T>,
    requests: impl Fn(&S) -> Vec<Recorded>,
    violations: impl Fn(&S) -> Vec<String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = f(fake) {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut report = String::new();
            for r in requests(fake) {
                let query = r.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
                let body = String::from_utf8_lossy(&r.body);
                let body: String = body.chars().take(2000).collect();
                let _ = writeln!(report, "  {} {}{query} {body}", r.method, r.path);
            }
            for v in violations(fake) {
                let _ = writeln!(report, "  violation: {v}");
            }
            panic!("timed out after {timeout:?} waiting for {what}; the fake received:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lower-case hex of HMAC-SHA256(`key`, `message`).
pub(crate) fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
pub(crate) fn form_decode(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((n, v)) => (decode(n), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Unix time in seconds.
pub(crate) fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `2024-05-01T12:00:00Z` for the unix time `secs`.
pub(crate) fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}
