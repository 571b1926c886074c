//! Join tokens: a single-use secret that lets one host enroll. The collector stores only
//! the hash (a leaked store enrolls nobody) with the host and expiry, and spends it at the
//! first use; none of that is here.

use std::time::{Duration, SystemTime};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

use crate::{PkiError, check_name};

/// Starts every token, so that one pasted into the wrong place, or leaked into a log, is
/// recognisable (and secret scanners can match it).
pub const TOKEN_PREFIX: &str = "rjt_";

/// A new join token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// What the operator hands to the host: [`TOKEN_PREFIX`] and 32 random bytes,
    /// base64url without padding. Shown once.
    pub secret: String,
    /// The host it enrolls.
    pub host: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("host", &self.host)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token that enrolls `host` until `ttl` from now.
    pub fn new(host: &str, ttl: Duration) -> Result<Token, PkiError> {
        check_name(host)?;
        let expires = SystemTime::now()
            .checked_add(ttl)
            .ok_or_else(|| PkiError::Identity(format!("token lifetime out of range: {ttl:?}")))?;
        Ok(Token {
            secret: format!(
                "{TOKEN_PREFIX}{}",
                URL_SAFE_NO_PAD.encode(crate::ca::random::<32>()?)
            ),
            host: host.to_owned(),
            expires,
        })
    }

    /// The hash the collector stores and looks the token up by.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        token_hash(&self.secret)
    }
}

/// SHA-256 of a token's text, prefix included. Tokens carry 256 random bits, so a plain
/// hash suffices: there is nothing to guess that a slow hash would protect.
#[must_use]
pub fn token_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_printable_distinct_and_hashed() {
        let a = Token::new("web-1", Duration::from_mins(10)).unwrap();
        let b = Token::new("web-1", Duration::from_mins(10)).unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(TOKEN_PREFIX));
        assert_eq!(a.secret.len(), TOKEN_PREFIX.len() + 43);
        assert!(
            a.secret[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(a.hash(), token_hash(&a.secret));
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains(&a.secret));
        assert!(Token::new("bad host", Duration::from_secs(1)).is_err());
        assert!(Token::new("web-1", Duration::MAX).is_err());
    }
}
