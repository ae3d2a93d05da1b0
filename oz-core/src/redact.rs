//! Masking secrets in byte streams (task output, transcripts, logs).
//!
//! [`Redactor`] knows a set of secrets and their base64 forms; [`StreamRedactor`] applies it to a
//! stream of chunks, holding back just enough bytes that a secret split across two chunks is still
//! masked. Register every secret before the first byte flows: masking applies from the first byte.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::{Bytes, BytesMut};

/// What a masked secret is replaced with.
pub const MASK: &[u8] = b"[REDACTED]";

/// Secrets shorter than this are not masked: they would mask ordinary text everywhere.
pub const MIN_SECRET_LEN: usize = 6;

/// A set of secrets to mask, with the automaton that finds them.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    patterns: Vec<Vec<u8>>,
    automaton: Option<AhoCorasick>,
    longest: usize,
}

impl Redactor {
    /// A redactor for `secrets`.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut redactor = Self::default();
        for secret in secrets {
            redactor.add_pattern_forms(secret.as_ref());
        }
        redactor.rebuild();
        redactor
    }

    /// Adds one secret (and its base64 forms). Secrets shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn add(&mut self, secret: impl AsRef<[u8]>) {
        self.add_pattern_forms(secret.as_ref());
        self.rebuild();
    }

    /// Whether no secret is registered.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest pattern, which is how much a stream must hold back.
    pub fn longest_pattern(&self) -> usize {
        self.longest
    }

    /// Masks every secret in a complete buffer.
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        self.redact_into(input, &mut out);
        out
    }

    /// Masks every secret in a string (lossless for UTF-8 input, since the mask is ASCII).
    pub fn redact_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.redact(input.as_bytes())).into_owned()
    }

    fn redact_into(&self, input: &[u8], out: &mut Vec<u8>) {
        let Some(automaton) = &self.automaton else {
            out.extend_from_slice(input);
            return;
        };
        let mut last = 0;
        for m in automaton.find_iter(input) {
            out.extend_from_slice(&input[last..m.start()]);
            out.extend_from_slice(MASK);
            last = m.end();
        }
        out.extend_from_slice(&input[last..]);
    }

    fn add_pattern_forms(&mut self, secret: &[u8]) {
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        self.push_pattern(secret.to_vec());
        // The base64 text of a secret depends on its offset (mod 3) within the encoded data. For each
        // offset, keep only the characters that depend on the secret's bytes alone.
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for offset in 0..3usize {
                let mut data = vec![0u8; offset];
                data.extend_from_slice(secret);
                let encoded = engine.encode(&data);
                let start_bits = offset * 8;
                let end_bits = (offset + secret.len()) * 8;
                let first = start_bits.div_ceil(6);
                let last = end_bits / 6; // exclusive: chars fully inside [start_bits, end_bits)
                if last > first && last - first >= MIN_SECRET_LEN {
                    self.push_pattern(encoded.as_bytes()[first..last].to_vec());
                }
            }
        }
    }

    fn push_pattern(&mut self, pattern: Vec<u8>) {
        if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern);
        }
    }

    fn rebuild(&mut self) {
        self.longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        self.automaton = if self.patterns.is_empty() {
            None
        } else {
            // Leftmost-longest over a handful of literal patterns cannot fail to build.
            AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&self.patterns).ok()
        };
    }
}

/// Applies a [`Redactor`] to a stream of chunks. Output is delayed by at most
/// `longest_pattern - 1` bytes; call [`StreamRedactor::finish`] at the end of the stream.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Redactor,
    held: BytesMut,
}

impl StreamRedactor {
    /// A stream redactor over `redactor`.
    pub fn new(redactor: Redactor) -> Self {
        Self { redactor, held: BytesMut::new() }
    }

    /// Registers one more secret; bytes still held back are masked too.
    pub fn add_secret(&mut self, secret: impl AsRef<[u8]>) {
        self.redactor.add(secret);
    }

    /// Feeds a chunk; returns what can be emitted now. Only a tail that could still become a secret
    /// (a proper prefix of one) is held back, so ordinary output passes through whole.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let Some(automaton) = self.redactor.automaton.clone() else {
            let mut out = std::mem::take(&mut self.held);
            out.extend_from_slice(chunk);
            return out.freeze();
        };
        self.held.extend_from_slice(chunk);
        let buf = &self.held[..];
        let mut out = Vec::with_capacity(buf.len());
        let mut emitted = 0;
        loop {
            // Bytes before `hold` are decided: no pattern can start there and still be incomplete.
            let hold = self.first_partial_start(buf, emitted);
            let mut overran = false;
            let base = emitted;
            for m in automaton.find_iter(&buf[base..]) {
                let (start, end) = (base + m.start(), base + m.end());
                if start >= hold {
                    break;
                }
                out.extend_from_slice(&buf[emitted..start]);
                out.extend_from_slice(MASK);
                emitted = end;
                if end > hold {
                    overran = true;
                    break;
                }
            }
            if !overran {
                out.extend_from_slice(&buf[emitted..hold]);
                emitted = hold;
                break;
            }
        }
        let _ = self.held.split_to(emitted);
        Bytes::from(out)
    }

    /// The first position at or after `from` whose rest of `buf` is a proper prefix of a pattern
    /// (a secret that may continue in the next chunk), or `buf.len()`.
    fn first_partial_start(&self, buf: &[u8], from: usize) -> usize {
        let earliest = buf.len().saturating_sub(self.redactor.longest.saturating_sub(1)).max(from);
        (earliest..buf.len())
            .find(|&i| {
                let tail = &buf[i..];
                self.redactor.patterns.iter().any(|p| p.len() > tail.len() && p.starts_with(tail))
            })
            .unwrap_or(buf.len())
    }

    /// Ends the stream, returning the held-back bytes, masked.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        Bytes::from(self.redactor.redact(&held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";

    #[test]
    fn masks_a_whole_buffer() {
        let r = Redactor::new([SECRET]);
        assert_eq!(r.redact_str(&format!("token={SECRET}; again {SECRET}")), "token=[REDACTED]; again [REDACTED]");
        assert_eq!(r.redact_str("nothing here"), "nothing here");
    }

    #[test]
    fn short_secrets_are_ignored_rather_than_masking_everything() {
        let r = Redactor::new(["ab"]);
        assert!(r.is_empty());
        assert_eq!(r.redact_str("abcab"), "abcab");
    }

    #[test]
    fn masks_base64_forms_at_every_offset() {
        let r = Redactor::new([SECRET]);
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let data = format!("{prefix}{SECRET}");
            for encoded in [
                STANDARD_NO_PAD.encode(&data),
                URL_SAFE_NO_PAD.encode(&data),
                base64::engine::general_purpose::STANDARD.encode(&data),
            ] {
                let masked = r.redact_str(&format!("Authorization: Basic {encoded}"));
                assert!(masked.contains("[REDACTED]"), "{prefix:?}: {masked}");
                let leftover: String = masked.replace("[REDACTED]", "").replace("Authorization: Basic ", "");
                // What may survive: the encoding of the (public) prefix, plus at most 2 boundary
                // characters on each side that mix secret and non-secret bits, plus padding.
                let budget = prefix.len().div_ceil(3) * 4 + 6;
                assert!(leftover.len() <= budget, "{prefix:?}: too much of the encoding survived: {masked}");
            }
        }
    }

    #[test]
    fn masks_a_secret_split_across_every_chunk_boundary() {
        let text = format!("before {SECRET} after");
        for split in 0..=text.len() {
            let mut s = StreamRedactor::new(Redactor::new([SECRET]));
            let mut out = Vec::new();
            out.extend_from_slice(&s.push(&text.as_bytes()[..split]));
            out.extend_from_slice(&s.push(&text.as_bytes()[split..]));
            out.extend_from_slice(&s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), "before [REDACTED] after", "split at {split}");
        }
    }

    #[test]
    fn a_long_installation_token_split_byte_by_byte() {
        let long = format!("ghs_{}", "Ab9".repeat(120));
        let text = format!("x{long}y{long}");
        let mut s = StreamRedactor::new(Redactor::new([long.as_str()]));
        let mut out = Vec::new();
        for b in text.as_bytes() {
            out.extend_from_slice(&s.push(std::slice::from_ref(b)));
        }
        out.extend_from_slice(&s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "x[REDACTED]y[REDACTED]");
    }

    #[test]
    fn ordinary_output_is_not_held_back() {
        let mut s = StreamRedactor::new(Redactor::new([SECRET]));
        assert_eq!(&s.push(b"installing dependencies...\n")[..], b"installing dependencies...\n");
        // A tail that could be the start of the secret waits for more.
        assert_eq!(&s.push(b"token: ghs_16C")[..], b"token: ");
        assert_eq!(&s.push(b"ATS\n")[..], b"ghs_16CATS\n");
    }

    #[test]
    fn a_secret_added_mid_stream_masks_held_bytes() {
        // "new-secret-value" is registered, so "new-secr" is held as a possible start of it; then
        // "new-secret" is registered too, and the held bytes are masked as that.
        let mut s = StreamRedactor::new(Redactor::new(["new-secret-value"]));
        let first = s.push(b"abc-new-secr");
        assert_eq!(&first[..], b"abc-");
        s.add_secret("new-secret");
        let mut out = first.to_vec();
        out.extend_from_slice(&s.push(b"et-tail"));
        out.extend_from_slice(&s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "abc-[REDACTED]-tail");
    }

    proptest! {
        /// Streaming in arbitrary chunks gives exactly what redacting the whole buffer gives.
        #[test]
        fn streaming_equals_whole_buffer(
            noise in proptest::collection::vec(any::<u8>(), 0..300),
            positions in proptest::collection::vec(0usize..300, 0..4),
            cuts in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let secrets = ["s3cr3t-token", "s3cr3t-token-longer", "other-key-xyz"];
            let mut data = noise.clone();
            for (i, p) in positions.iter().enumerate() {
                let at = (*p).min(data.len());
                let secret = secrets[i % secrets.len()].as_bytes();
                data.splice(at..at, secret.iter().copied());
            }
            let redactor = Redactor::new(secrets);
            let expected = redactor.redact(&data);
            let mut stream = StreamRedactor::new(redactor);
            let mut out = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                out.extend_from_slice(&stream.push(&rest[..n]));
                rest = &rest[n..];
                i += 1;
            }
            out.extend_from_slice(&stream.finish());
            prop_assert_eq!(out, expected);
        }
    }
}
