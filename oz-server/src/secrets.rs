//! Minting and checking API keys and workload tokens. Only a SHA-256 of each secret is stored; checks
//! compare hashes in constant time.
//!
//! Formats: API keys `oz_<id>.<secret>`, workload tokens `ozw_<id>.<secret>`, sign-in cookies
//! `ozs_<id>.<secret>`; `<id>` is 16 hex digits
//! (the database key), `<secret>` 64 hex digits.

use sha2::{Digest, Sha256};

/// The prefix of API keys.
pub const API_KEY_PREFIX: &str = "oz_";
/// The prefix of workload tokens.
pub const WORKLOAD_TOKEN_PREFIX: &str = "ozw_";
/// The prefix of dashboard sign-in cookies.
pub const SIGN_IN_PREFIX: &str = "ozs_";

/// A freshly minted credential: its public id, the full text to hand out (once), and the hash to store.
#[derive(Debug)]
pub struct Minted {
    /// The public id.
    pub id: String,
    /// The full credential, shown once.
    pub text: String,
    /// SHA-256 of the secret part.
    pub hash: Vec<u8>,
}

fn random_hex(uuids: usize) -> String {
    (0..uuids).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect()
}

/// Mints a credential with `prefix`.
pub fn mint(prefix: &str) -> Minted {
    let id = random_hex(1)[..16].to_owned();
    let secret = random_hex(2);
    Minted { text: format!("{prefix}{id}.{secret}"), hash: hash(&secret), id }
}

/// SHA-256 of a secret.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits `<prefix><id>.<secret>` into `(id, secret)`, or `None` if it is not one.
pub fn parse<'a>(prefix: &str, text: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = text.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn verify(secret: &str, stored: &[u8]) -> bool {
    let computed = hash(secret);
    computed.len() == stored.len() && computed.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_parse_and_verify() {
        let m = mint(API_KEY_PREFIX);
        let (id, secret) = parse(API_KEY_PREFIX, &m.text).unwrap();
        assert_eq!(id, m.id);
        assert!(verify(secret, &m.hash));
        assert!(!verify(&secret.replace('a', "b").replace('1', "2"), &m.hash));
        assert!(parse(WORKLOAD_TOKEN_PREFIX, &m.text).is_none());
        for bad in ["", "oz_", "oz_abc.def", "oz_0123456789abcdef.short", "Bearer oz_x"] {
            assert!(parse(API_KEY_PREFIX, bad).is_none(), "{bad}");
        }
        assert_ne!(mint(API_KEY_PREFIX).text, m.text);
    }
}
