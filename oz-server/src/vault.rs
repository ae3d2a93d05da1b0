//! Secrets at rest: [`Keyring`] seals values with ChaCha20-Poly1305 under a key the database never
//! holds (a file, or `OZ_SECRET_KEY`), with a fresh random nonce per value and the value's place
//! (`team/name`) as associated data, so a sealed value cannot be moved to another row. Each sealed
//! value names the key that sealed it: keys rotate by adding a new current key, resealing, and
//! dropping the old one.
//!
//! Sealed form (text, for a TEXT column): `oz1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`.
//! Key file: one key a line, `<id> <base64 of 32 bytes>`, the first line current; `#` comments.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::SecretString;

const PREFIX: &str = "oz1";
const NONCE_LEN: usize = 12;

/// Why sealing or opening failed. Never carries a value or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The key file or variable does not hold keys.
    #[error("the secret keys are malformed: {0}")]
    Keys(String),
    /// The value was sealed under a key this server does not have.
    #[error("a secret was sealed with key {0:?}, which is not configured (add it to the secret keys)")]
    UnknownKey(String),
    /// The sealed text is not in the sealed form.
    #[error("a stored secret is not in the sealed form")]
    Malformed,
    /// Authentication failed: the value was altered, moved to another place, or sealed under another
    /// key with the same id.
    #[error("a stored secret does not open: it was altered, moved, or sealed with another key")]
    Tampered,
    /// The operating system gave no randomness.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// The keys secrets are sealed with: the current one seals, any of them opens.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(bytes)
}

fn key_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keyring {
    /// A keyring with one new random key (`id`).
    pub fn generate(id: &str) -> Result<Self, VaultError> {
        if !key_id_ok(id) {
            return Err(VaultError::Keys(format!("key id {id:?}: letters, digits, - and _ only")));
        }
        let key = Key::from(random::<32>()?);
        Ok(Self { current: id.to_owned(), keys: BTreeMap::from([(id.to_owned(), key)]) })
    }

    /// Reads the key file's text (or `OZ_SECRET_KEY`: one base64 key, which gets the id `env`).
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut current = None;
        let mut keys = BTreeMap::new();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        for (n, line) in lines.iter().enumerate() {
            let (id, encoded) = match line.split_once(char::is_whitespace) {
                Some((id, encoded)) => (id.trim(), encoded.trim()),
                None if lines.len() == 1 => ("env", *line),
                None => return Err(VaultError::Keys(format!("line {}: expected `<id> <base64 key>`", n + 1))),
            };
            if !key_id_ok(id) {
                return Err(VaultError::Keys(format!("line {}: key id {id:?}: letters, digits, - and _ only", n + 1)));
            }
            let bytes = STANDARD
                .decode(encoded)
                .map_err(|_| VaultError::Keys(format!("line {}: the key is not base64", n + 1)))?;
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| VaultError::Keys(format!("line {}: a key is 32 bytes (44 base64 characters)", n + 1)))?;
            if keys.insert(id.to_owned(), Key::from(bytes)).is_some() {
                return Err(VaultError::Keys(format!("line {}: key id {id:?} appears twice", n + 1)));
            }
            current.get_or_insert_with(|| id.to_owned());
        }
        let current = current.ok_or_else(|| VaultError::Keys("no key".into()))?;
        Ok(Self { current, keys })
    }

    /// The keys from `OZ_SECRET_KEY` (`env`, one base64 key) if set, else from `file`, which is made
    /// (mode 0600, one new key) when it does not exist. Returns whether it made the file.
    pub fn load_or_create(file: &std::path::Path, env: Option<&str>) -> Result<(Self, bool), VaultError> {
        if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
            return Ok((Self::parse(text)?, false));
        }
        match std::fs::read_to_string(file) {
            Ok(text) => Ok((Self::parse(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate("k1")?;
                ring.write_file(file, false)?;
                Ok((ring, true))
            }
            Err(e) => Err(VaultError::Keys(format!("could not read {}: {e}", file.display()))),
        }
    }

    /// Writes the key file (mode 0600); `replace`: over an existing one.
    pub fn write_file(&self, file: &std::path::Path, replace: bool) -> Result<(), VaultError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| VaultError::Keys(format!("could not write {}: {e}", file.display()));
        let temp = file.with_extension("new");
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io)?;
        f.write_all(self.to_file_text().as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
        if !replace && file.exists() {
            let _ = std::fs::remove_file(&temp);
            return Err(VaultError::Keys(format!("{} exists already", file.display())));
        }
        std::fs::rename(&temp, file).map_err(io)
    }

    /// Every key id, the current first.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids = vec![self.current.as_str()];
        ids.extend(self.keys.keys().map(String::as_str).filter(|id| *id != self.current));
        ids
    }

    /// The same keys without `id` (after every value it sealed was resealed); not the current one.
    pub fn without(&self, id: &str) -> Result<Self, VaultError> {
        if id == self.current {
            return Err(VaultError::Keys(format!("{id:?} is the current key; rotate first")));
        }
        let mut next = self.clone();
        next.keys.remove(id).ok_or_else(|| VaultError::Keys(format!("there is no key {id:?}")))?;
        Ok(next)
    }

    /// The key id a sealed value names.
    pub fn key_of(sealed: &str) -> Option<&str> {
        parse_sealed(sealed).ok().map(|(id, _)| id)
    }

    /// The key file's text for these keys, the current first.
    pub fn to_file_text(&self) -> String {
        let mut text = String::from(
            "# oz secret keys: `<id> <base64 key>`, the first line seals; keep this file off the database's disk.\n",
        );
        let mut line = |id: &str, key: &Key| text.push_str(&format!("{id} {}\n", STANDARD.encode(key.as_slice())));
        if let Some(key) = self.keys.get(&self.current) {
            line(&self.current, key);
        }
        for (id, key) in self.keys.iter().filter(|(id, _)| **id != self.current) {
            line(id, key);
        }
        text
    }

    /// The same keys plus a new random current key `id` (a rotation; reseal, then drop the old key).
    pub fn rotated(&self, id: &str) -> Result<Self, VaultError> {
        if self.keys.contains_key(id) {
            return Err(VaultError::Keys(format!("key id {id:?} is already in the keyring")));
        }
        let mut next = Self::generate(id)?;
        next.keys.extend(self.keys.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(next)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Seals `value` for the place `aad` (`<team>/<name>`).
    pub fn seal(&self, aad: &str, value: &str) -> Result<String, VaultError> {
        self.seal_bytes(aad, value.as_bytes())
    }

    /// Seals bytes for the place `aad`, in the same text form as [`Keyring::seal`].
    pub fn seal_bytes(&self, aad: &str, value: &[u8]) -> Result<String, VaultError> {
        let key = self.keys.get(&self.current).ok_or_else(|| VaultError::UnknownKey(self.current.clone()))?;
        let nonce_bytes = random::<NONCE_LEN>()?;
        let sealed = ChaCha20Poly1305::new(key)
            .encrypt(&Nonce::from(nonce_bytes), Payload { msg: value, aad: aad.as_bytes() })
            .map_err(|_| VaultError::Tampered)?;
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}.{}.{}", self.current, URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Opens a value sealed for the place `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<SecretString, VaultError> {
        let plain = self.open_bytes(aad, sealed)?;
        let text = String::from_utf8(plain).map_err(|_| VaultError::Tampered)?;
        Ok(SecretString::from(text))
    }

    /// Opens bytes sealed for the place `aad` ([`Keyring::seal_bytes`]).
    pub fn open_bytes(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, VaultError> {
        let (key_id, blob) = parse_sealed(sealed)?;
        let key = self.keys.get(key_id).ok_or_else(|| VaultError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD.decode(blob).map_err(|_| VaultError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(VaultError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Malformed)?;
        ChaCha20Poly1305::new(key)
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
            .map_err(|_| VaultError::Tampered)
    }

    /// Whether `sealed` was sealed with another key than the current one (a rotation reseals it).
    pub fn is_stale(&self, sealed: &str) -> bool {
        parse_sealed(sealed).is_ok_and(|(id, _)| id != self.current)
    }
}

/// Where a team secret is sealed (its associated data).
pub fn secret_place(team_id: &str, name: &str) -> String {
    format!("secret:{team_id}/{name}")
}

/// Where a run's conversation is sealed.
pub fn conversation_place(run_id: &str) -> String {
    format!("conversation:{run_id}")
}

/// Where an integration's signing secret is sealed.
pub fn integration_place(integration_id: &str) -> String {
    format!("integration:{integration_id}")
}

/// Seals what older versions stored in the clear (integration signing secrets) and reseals what an
/// older key sealed, so that after a rotation the old key can be dropped. Returns how many values it
/// wrote.
pub async fn upkeep(store: &dyn crate::store::Store, keyring: &Keyring) -> Result<usize, UpkeepError> {
    let mut written = 0;
    for secret in store.all_secrets().await? {
        if keyring.is_stale(&secret.sealed) {
            let place = secret_place(&secret.team_id, &secret.name);
            let value = keyring.open(&place, &secret.sealed)?;
            let sealed = keyring.seal(&place, secrecy::ExposeSecret::expose_secret(&value))?;
            store.reseal_secret(&secret.team_id, &secret.name, &sealed).await?;
            written += 1;
        }
    }
    for team in store.teams().await? {
        for integration in store.integrations(&team.id).await? {
            let place = integration_place(&integration.id);
            let value = if !is_sealed(&integration.secret) {
                SecretString::from(integration.secret.clone())
            } else if keyring.is_stale(&integration.secret) {
                keyring.open(&place, &integration.secret)?
            } else {
                continue;
            };
            let sealed = keyring.seal(&place, secrecy::ExposeSecret::expose_secret(&value))?;
            store.reseal_integration_secret(&integration.id, &sealed).await?;
            written += 1;
        }
    }
    for run_id in store.conversations_sealed_with_other_keys(keyring.current_id()).await? {
        let Some(sealed) = store.conversation(&run_id).await? else { continue };
        let place = conversation_place(&run_id);
        let value = keyring.open_bytes(&place, &sealed)?;
        store
            .put_conversation(&run_id, &keyring.seal_bytes(&place, &value)?, value.len(), jiff::Timestamp::now())
            .await?;
        written += 1;
    }
    if written > 0 {
        store.forget_overwritten().await?;
    }
    Ok(written)
}

/// Why [`upkeep`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpkeepError {
    /// Reading or writing the store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Opening or sealing.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// How every value sealed with key `key_id` begins.
pub fn sealed_prefix(key_id: &str) -> String {
    format!("{PREFIX}.{key_id}.")
}

/// Whether a stored text is in the sealed form (older rows may hold a value in the clear).
pub fn is_sealed(text: &str) -> bool {
    parse_sealed(text).is_ok()
}

fn parse_sealed(sealed: &str) -> Result<(&str, &str), VaultError> {
    let rest = sealed.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')).ok_or(VaultError::Malformed)?;
    let (id, blob) = rest.split_once('.').ok_or(VaultError::Malformed)?;
    if !key_id_ok(id) || blob.is_empty() {
        return Err(VaultError::Malformed);
    }
    Ok((id, blob))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn values_seal_and_open_in_their_place_only() {
        let ring = Keyring::generate("k1").unwrap();
        let sealed = ring.seal("team-a/npm", "npm_s3cret").unwrap();
        assert!(is_sealed(&sealed) && sealed.starts_with("oz1.k1."));
        assert!(!sealed.contains("npm_s3cret"));
        assert_ne!(sealed, ring.seal("team-a/npm", "npm_s3cret").unwrap(), "a fresh nonce every time");
        assert_eq!(ring.open("team-a/npm", &sealed).unwrap().expose_secret(), "npm_s3cret");
        assert!(matches!(ring.open("team-b/npm", &sealed), Err(VaultError::Tampered)), "moved to another row");
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open("team-a/npm", &altered).is_err());
        let other = Keyring::generate("k1").unwrap();
        assert!(matches!(other.open("team-a/npm", &sealed), Err(VaultError::Tampered)), "another key, same id");
        assert!(matches!(ring.open("x", "plain value"), Err(VaultError::Malformed)));
    }

    #[test]
    fn keys_rotate_and_round_trip_through_their_file() {
        let old = Keyring::generate("k1").unwrap();
        let sealed = old.seal("t/n", "v").unwrap();
        let new = old.rotated("k2").unwrap();
        assert_eq!(new.current_id(), "k2");
        assert!(new.is_stale(&sealed));
        assert_eq!(new.open("t/n", &sealed).unwrap().expose_secret(), "v", "old values still open");
        let resealed = new.seal("t/n", "v").unwrap();
        assert!(!new.is_stale(&resealed));
        let reread = Keyring::parse(&new.to_file_text()).unwrap();
        assert_eq!(reread.current_id(), "k2");
        assert_eq!(reread.open("t/n", &sealed).unwrap().expose_secret(), "v");
        assert!(old.rotated("k1").is_err());
        let single = Keyring::parse(&STANDARD.encode([9u8; 32])).unwrap();
        assert_eq!(single.current_id(), "env");
        for bad in ["", "k1 notbase64!", "k1 AAAA", "a b c\nd e"] {
            assert!(Keyring::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{new:?}").contains(&STANDARD.encode(new.keys["k2"].as_slice())), "Debug shows no key");
    }
}
