//! Limits on making runs, so one key or one team cannot flood a shared server: a rate per API key
//! (a token bucket: `burst` at once, then `per_key_per_minute`) and a cap on a team's unfinished
//! runs. Both answer 429 with `Retry-After`. On by default, at values no ordinary use reaches.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// The limits (`ServerConfig::run_limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Runs an API key may create per minute, sustained; `0` turns the rate limit off.
    pub per_key_per_minute: u32,
    /// Runs an API key may create at once before the rate applies.
    pub burst: u32,
    /// A team's runs not yet ended (queued, offered, running) at most; `0` turns the cap off.
    pub active_per_team: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self { per_key_per_minute: 600, burst: 100, active_per_team: 10_000 }
    }
}

impl RunLimits {
    /// No limits (benchmarks; a server behind its own rate limiting).
    pub fn unlimited() -> Self {
        Self { per_key_per_minute: 0, burst: 0, active_per_team: 0 }
    }
}

/// Counts run creations per API key.
pub struct RunLimiter {
    limits: RunLimits,
    per_key: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RunLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLimiter").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl RunLimiter {
    /// A limiter for `limits`.
    pub fn new(limits: RunLimits) -> Self {
        let per_key = NonZeroU32::new(limits.per_key_per_minute).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self { limits, per_key }
    }

    /// Takes one run from key `key_id`'s allowance, or says when to come back.
    pub fn take(&self, key_id: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_key else { return Ok(()) };
        limiter.check_key(&key_id.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            too_many(
                oz_core::failure::ErrorCode::ResourceUnavailable,
                format!(
                    "this API key makes runs faster than the server allows ({} a minute, {} at once); retry later",
                    self.limits.per_key_per_minute, self.limits.burst
                ),
                wait,
            )
        })
    }

    /// Whether a team with `active` unfinished runs may make one more.
    pub fn admit(&self, active: u64) -> Result<(), ApiError> {
        if self.limits.active_per_team == 0 || active < self.limits.active_per_team {
            return Ok(());
        }
        Err(too_many(
            oz_core::failure::ErrorCode::BudgetExceeded,
            format!(
                "the team has {active} runs that have not ended, the most this server allows ({}); retry when some end",
                self.limits.active_per_team
            ),
            Duration::from_secs(30),
        ))
    }

    /// Forgets keys that have been quiet long enough to have their whole allowance back.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_key {
            limiter.retain_recent();
        }
    }
}

fn too_many(code: oz_core::failure::ErrorCode, detail: String, wait: Duration) -> ApiError {
    let mut error = ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, code, detail).retryable(true);
    error.retry_after = Some(wait.as_secs().max(1));
    error
}
