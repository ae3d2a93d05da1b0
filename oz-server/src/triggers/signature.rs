//! The providers' request signatures: each an HMAC-SHA256 over the raw body (Slack: with its
//! timestamp), given in hex, compared in constant time before anything is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC-SHA256 of `parts` (concatenated) under `key`.
fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_key(),
    };
    for part in parts {
        mac.update(part);
    }
    mac
}

#[allow(clippy::expect_used)]
fn unreachable_key() -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(b"k").expect("HMAC takes any key length")
}

/// The hex HMAC-SHA256 of `parts` under `key` (what a sender puts in its header).
pub(crate) fn sign_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(mac(key, parts).finalize().into_bytes())
}

/// Whether `given_hex` is the HMAC-SHA256 of `parts` under `key`, compared in constant time.
pub(crate) fn matches(key: &[u8], parts: &[&[u8]], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex.trim()) else { return false };
    mac(key, parts).verify_slice(&given).is_ok()
}

/// Whether `timestamp` (unix seconds) is within `window_secs` of `now`, either way.
pub(crate) fn fresh(timestamp: i64, now: i64, window_secs: u64) -> bool {
    now.abs_diff(timestamp) <= window_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_only_the_same_key_and_bytes() {
        let sig = sign_hex(b"key", &[b"v0:1:", b"{}"]);
        assert_eq!(sig.len(), 64);
        assert!(matches(b"key", &[b"v0:1:{}"], &sig), "parts are concatenated");
        assert!(!matches(b"other", &[b"v0:1:{}"], &sig));
        assert!(!matches(b"key", &[b"v0:1:{ }"], &sig));
        assert!(!matches(b"key", &[b"v0:1:{}"], "zz"));
        assert!(!matches(b"key", &[b"v0:1:{}"], &sig[..62]));
        assert!(fresh(100, 400, 300) && !fresh(100, 401, 300) && fresh(i64::MAX, i64::MAX, 0));
        assert!(!fresh(i64::MIN, i64::MAX, 300));
    }
}
