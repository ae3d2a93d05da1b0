//! What the tests share: the test keys, a loopback server, requests as a fake saw them, and the
//! search for secrets in what a person could be shown.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use oz_core::environment::RepoRef;
use oz_core::retry::RetryPolicy;
use oz_core::run::RunId;
use oz_credentials::{CredentialError, HttpOptions};
use serde_json::Value;

/// The fake App's key (PKCS#1, as GitHub hands it out) and its public half.
pub const APP_PRIVATE_PEM: &str = include_str!("../keys/app-private-pkcs1.pem");
pub const APP_PUBLIC_PEM: &str = include_str!("../keys/app-public.pem");
/// A key no fake trusts (PKCS#8).
pub const OTHER_PRIVATE_PEM: &str = include_str!("../keys/other-private-pkcs8.pem");

/// Serves `router` on a fresh loopback port until the test ends; its base URL.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A request as a fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// The path as sent, percent-encoding kept.
    pub path: String,
    pub headers: HeaderMap,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

impl Recorded {
    pub fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        Self {
            method: method.clone(),
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body: serde_json::from_slice(body).ok(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `METHOD /path`, for assertions on the order of calls.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Decodes `%XX` escapes (a fake's own, so the provider's encoding is what is tested).
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn run_id() -> RunId {
    RunId::parse("run-42").unwrap()
}

pub fn repo(text: &str) -> RepoRef {
    RepoRef::parse(text).unwrap()
}

/// Quick retries, so retry tests take milliseconds.
pub fn quick_http() -> HttpOptions {
    HttpOptions::default().with_timeout(Duration::from_secs(5)).with_retry(RetryPolicy::bounded(
        Duration::from_millis(5),
        Duration::from_millis(20),
        2,
    ))
}

/// An error as a person could see it: its message, its `Debug` and its chain of causes.
pub fn shown(err: &CredentialError) -> String {
    format!("{err}\n{err:?}\n{}", oz_core::error::error_chain(err))
}

/// Fails when `shown` holds any of `secrets`, or any line of a private key's PEM body.
pub fn assert_no_secret(shown: &str, secrets: &[&str]) {
    let haystack = shown.as_bytes();
    let contains = |needle: &[u8]| !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle);
    for secret in secrets {
        assert!(!contains(secret.as_bytes()), "a secret ({}...) shows in:\n{shown}", &secret[..secret.len().min(8)]);
    }
    for pem in [APP_PRIVATE_PEM, OTHER_PRIVATE_PEM] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!contains(line.as_bytes()), "a line of a private key shows in:\n{shown}");
        }
    }
}
