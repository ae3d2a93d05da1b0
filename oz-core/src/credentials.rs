//! Credentials: API keys, per-run workload tokens and git credentials. Every secret lives in a
//! [`SecretString`]: `Debug` and `Display` never show it, and it is zeroized on drop.

use std::fmt;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

/// An API key (`Authorization: Bearer <key>`).
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }
    /// The key itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// What a workload token lets its holder touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenScope {
    /// The team the run belongs to.
    pub team: String,
    /// The user the run acts for, if any.
    pub user: Option<String>,
    /// The run this token is for; the token is good for this run only.
    pub run_id: String,
    /// Repos (`owner/name`) the run may reach.
    pub repos: Vec<String>,
}

/// A short-lived token minted for one run, with which the in-sandbox runner calls back to the control
/// plane. It expires, and the control plane revokes it when the run ends.
#[derive(Clone)]
pub struct WorkloadToken {
    token: SecretString,
    /// When it stops being valid.
    pub expires_at: Timestamp,
    /// What it may touch.
    pub scope: TokenScope,
}

impl WorkloadToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>, expires_at: Timestamp, scope: TokenScope) -> Self {
        Self { token: SecretString::from(token.into()), expires_at, scope }
    }
    /// The token itself.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }
    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

impl fmt::Debug for WorkloadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A credential for one git host, handed to git through a credential helper: never in a URL, argv or
/// `.git/config`.
#[derive(Clone)]
pub struct GitCredential {
    /// The host it is for (`github.com`).
    pub host: String,
    /// The user name git presents (`x-access-token` for GitHub App tokens).
    pub username: String,
    token: SecretString,
    /// When it stops being valid, if known.
    pub expires_at: Option<Timestamp>,
}

impl GitCredential {
    /// Wraps a credential.
    pub fn new(
        host: impl Into<String>,
        username: impl Into<String>,
        token: impl Into<String>,
        expires_at: Option<Timestamp>,
    ) -> Self {
        Self { host: host.into(), username: username.into(), token: SecretString::from(token.into()), expires_at }
    }
    /// The token itself.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }
}

/// Whether a git credential for `host` (as git names it: `github.com`, `127.0.0.1:8080`, any case)
/// may be sent over `protocol`: https, or http to a loopback host (a local server), never another
/// plain-text remote. The one rule for the runner's helper and the worker's own git.
pub fn may_send_git_credential(protocol: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    protocol == "https" || (protocol == "http" && matches!(name, "localhost" | "127.0.0.1" | "[::1]"))
}

impl fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_in_debug_or_display() {
        let secret = "sk-live-very-secret-123";
        let key = ApiKey::new(secret);
        let token = WorkloadToken::new(
            secret,
            Timestamp::from_second(2_000_000_000).unwrap(),
            TokenScope { team: "t".into(), user: None, run_id: "r".into(), repos: vec!["a/b".into()] },
        );
        let git = GitCredential::new("github.com", "x-access-token", secret, None);
        for shown in
            [format!("{key:?}"), format!("{key}"), format!("{token:?}"), format!("{git:?}"), format!("{git:#?}")]
        {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        assert_eq!(key.expose(), secret);
        assert_eq!(git.expose(), secret);
        assert!(!token.is_expired(Timestamp::from_second(1_999_999_999).unwrap()));
        assert!(token.is_expired(Timestamp::from_second(2_000_000_000).unwrap()));
    }
}
