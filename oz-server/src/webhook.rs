//! Webhook signatures: `X-Oz-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
//! `X-Oz-Timestamp: <unix seconds>`. A delivery is accepted only within [`REPLAY_WINDOW_SECS`] of its
//! timestamp, only once, and the comparison takes constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a delivery's timestamp may be from now, either way.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-oz-signature";
/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-oz-timestamp";

/// The `v1=<hex>` signature of `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable_hmac());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("v1={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

// HMAC accepts keys of any length; this cannot happen.
fn unreachable_hmac() -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    Hmac::<Sha256>::new_from_slice(b"k").expect("HMAC takes any key length")
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or malformed.
    #[error("{0}")]
    Malformed(&'static str),
    /// The timestamp is outside the window.
    #[error("the delivery's timestamp is more than {REPLAY_WINDOW_SECS} s from now")]
    Stale,
    /// The signature does not match.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks a delivery's headers against `body` at `now` (unix seconds).
pub fn verify(
    secret: &str,
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp_header
        .ok_or(SignatureError::Malformed("missing X-Oz-Timestamp"))?
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("X-Oz-Timestamp must be unix seconds"))?;
    let given = signature_header.ok_or(SignatureError::Malformed("missing X-Oz-Signature"))?.trim();
    // abs_diff: any two i64s (the header is the sender's), never an overflow.
    if now.abs_diff(timestamp) > REPLAY_WINDOW_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, timestamp, body);
    let same = given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_within_the_window_and_only_for_the_same_bytes() {
        let body = br#"{"issue": 42}"#;
        let sig = sign("s3cret", 1_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert_eq!(verify("s3cret", Some("1000000"), Some(&sig), body, 1_000_100), Ok(()));
        assert_eq!(verify("s3cret", Some("1000000"), Some(&sig), body, 1_000_301), Err(SignatureError::Stale));
        assert_eq!(verify("s3cret", Some("1000000"), Some(&sig), body, 999_699), Err(SignatureError::Stale));
        assert_eq!(verify("other", Some("1000000"), Some(&sig), body, 1_000_000), Err(SignatureError::Mismatch));
        assert_eq!(
            verify("s3cret", Some("1000000"), Some(&sig), br#"{"issue": 43}"#, 1_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify("s3cret", Some("1000001"), Some(&sig), body, 1_000_000), Err(SignatureError::Mismatch));
        assert!(matches!(verify("s3cret", None, Some(&sig), body, 0), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify("s3cret", Some("soon"), Some(&sig), body, 0), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify("s3cret", Some("1"), None, body, 1), Err(SignatureError::Malformed(_))));
    }

    /// `now - timestamp` overflows an i64 at the extremes (a panic in debug builds, a wrapped and
    /// possibly in-window difference in release ones): they are simply outside the window.
    #[test]
    fn extreme_timestamps_are_outside_the_window_without_overflow() {
        let body = b"{}";
        for (timestamp, now) in
            [(i64::MIN, 1_700_000_000), (i64::MAX, 1_700_000_000), (i64::MIN, i64::MAX), (i64::MAX, i64::MIN)]
        {
            let sig = sign("s3cret", timestamp, body);
            let header = timestamp.to_string();
            let e = verify("s3cret", Some(&header), Some(&sig), body, now).unwrap_err();
            assert_eq!(e, SignatureError::Stale, "{timestamp} at {now}");
            assert!(e.to_string().contains("more than 300 s from now"), "{e}");
        }
        // The window's edges still hold at the extremes.
        let sig = sign("s3cret", i64::MIN + 300, body);
        assert_eq!(verify("s3cret", Some(&(i64::MIN + 300).to_string()), Some(&sig), body, i64::MIN), Ok(()));
    }
}
