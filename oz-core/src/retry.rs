//! The one retry policy of the project: exponential backoff (doubling from a first delay up to a
//! longest one, optionally a bounded number of retries), through `backon`. The SDK retries idempotent
//! calls with it, the runner its calls to the control plane, and the worker its reconnects; each
//! picks the bounds, none writes its own loop of sleeps.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often and how long to wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Retries after the first attempt; `None` = without end (reconnects).
    pub max_retries: Option<usize>,
}

impl RetryPolicy {
    /// `max_retries` retries, the first after `first_delay`, doubling, at most `max_delay` apart.
    pub const fn bounded(first_delay: Duration, max_delay: Duration, max_retries: usize) -> Self {
        Self { first_delay, max_delay, max_retries: Some(max_retries) }
    }

    /// Retries without end, the first after `first_delay`, doubling, at most `max_delay` apart.
    pub const fn forever(first_delay: Duration, max_delay: Duration) -> Self {
        Self { first_delay, max_delay, max_retries: None }
    }

    /// The policy as a `backon` builder (for `Retryable::retry`).
    pub fn builder(&self) -> ExponentialBuilder {
        let builder =
            ExponentialBuilder::new().with_factor(2.0).with_min_delay(self.first_delay).with_max_delay(self.max_delay);
        match self.max_retries {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        }
    }

    /// The delays between attempts, in order (empty once the retries are used up).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        self.builder().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_longest_and_stop_after_the_retries() {
        let policy = RetryPolicy::bounded(Duration::from_millis(200), Duration::from_secs(1), 5);
        let delays: Vec<u128> = policy.delays().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        let forever = RetryPolicy::forever(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = forever.delays().take(9).map(|d| d.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
