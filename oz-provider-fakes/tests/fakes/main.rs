//! The fakes' checks and answers, driven with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod github;
mod linear;
mod slack;

/// A reqwest client (plain http to loopback; rustls with ring installed as reqwest wants one).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
