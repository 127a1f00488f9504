//! Join tokens: `SWMTKN-1-<CA digest, base 36>-<secret>`, Swarm's format.
//!
//! The digest lets the joiner check the CA before trusting anything the manager says; the
//! secret is what the manager checks. Workers and managers have different secrets, and
//! rotating one invalidates the old token.

use std::fmt;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
/// A digest of 32 bytes is at most 50 base-36 digits; shorter ones are zero-padded.
const DIGEST_DIGITS: usize = 50;
const SECRET_LEN: usize = 25;
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: [u8; 32],
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "invalid join token: expected SWMTKN-1-<digest>-<secret>, as `shoal join-token` prints it"
    )]
    Malformed,
    #[error("invalid join token: its CA digest is not base 36")]
    BadDigest,
}

impl JoinToken {
    /// A token with a fresh random secret for the CA with this digest.
    pub fn generate(ca_digest: [u8; 32]) -> JoinToken {
        let secret = (0..SECRET_LEN)
            .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
            .collect();
        JoinToken { ca_digest, secret }
    }

    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = text.trim().split('-').collect();
        let [prefix, version, digest, secret] = parts.as_slice() else {
            return Err(TokenError::Malformed);
        };
        if *prefix != PREFIX || *version != VERSION || secret.len() != SECRET_LEN {
            return Err(TokenError::Malformed);
        }
        if !secret.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(TokenError::Malformed);
        }
        Ok(JoinToken {
            ca_digest: from_base36(digest).ok_or(TokenError::BadDigest)?,
            secret: secret.to_string(),
        })
    }

    /// Whether `other` carries the same secret, compared in constant time.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), other.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{VERSION}-{}-{}",
            to_base36(&self.ca_digest),
            self.secret
        )
    }
}

fn to_base36(bytes: &[u8; 32]) -> String {
    // Repeated division of a big-endian number by 36.
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(DIGEST_DIGITS);
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 36) as u8;
            remainder = value % 36;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    while digits.len() < DIGEST_DIGITS {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

fn from_base36(text: &str) -> Option<[u8; 32]> {
    if text.len() != DIGEST_DIGITS {
        return None;
    }
    let mut number = [0u8; 32];
    for c in text.bytes() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u32;
        let mut carry = digit;
        for byte in number.iter_mut().rev() {
            let value = u32::from(*byte) * 36 + carry;
            *byte = (value & 0xff) as u8;
            carry = value >> 8;
        }
        if carry != 0 {
            return None; // larger than 256 bits
        }
    }
    Some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_look_like_swarms() {
        let token = JoinToken::generate([0xab; 32]);
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-"));
        assert_eq!(
            text.len(),
            "SWMTKN-1-".len() + DIGEST_DIGITS + 1 + SECRET_LEN
        );
        assert_eq!(JoinToken::parse(&text), Ok(token));
    }

    #[test]
    fn digests_of_every_size_round_trip() {
        for digest in [[0u8; 32], [0xff; 32], {
            let mut d = [0u8; 32];
            d[31] = 1;
            d
        }] {
            let text = to_base36(&digest);
            assert_eq!(text.len(), DIGEST_DIGITS);
            assert_eq!(from_base36(&text), Some(digest));
        }
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert_eq!(JoinToken::parse("hello"), Err(TokenError::Malformed));
        assert_eq!(
            JoinToken::parse("SWMTKN-2-abc-0123456789012345678901234"),
            Err(TokenError::Malformed)
        );
        let good = JoinToken::generate([1; 32]).to_string();
        let bad_digest = good.replacen("SWMTKN-1-0", "SWMTKN-1-!", 1);
        assert!(JoinToken::parse(&bad_digest).is_err());
    }

    #[test]
    fn secrets_compare_exactly() {
        let a = JoinToken::generate([1; 32]);
        let b = JoinToken::generate([1; 32]);
        assert!(a.secret_matches(&a.clone()));
        assert!(!a.secret_matches(&b));
    }
}
