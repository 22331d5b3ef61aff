//! Credentials: argon2id password hashing and opaque session tokens.
//!
//! Hashing is CPU-heavy, so callers run it on the blocking pool. A token is 32
//! random bytes (base64url); only its SHA-256 is ever stored.

pub mod codes;
pub(crate) mod http;
pub mod mail;
pub mod oauth;
pub mod server_key;
pub mod sms;
pub mod totp;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::TokenHash;

/// argon2id cost parameters (from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Config {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    /// OWASP's recommended minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes and verifies passwords with fixed parameters.
#[derive(Clone)]
pub struct PasswordHasherArgon2 {
    argon: Argon2<'static>,
    /// A hash of a random password, verified against when the account does not
    /// exist, so "unknown email" costs the same time as "wrong password".
    decoy: String,
}

impl PasswordHasherArgon2 {
    /// # Errors
    /// When the parameters are out of argon2's range.
    pub fn new(config: Argon2Config) -> Result<Self, AuthError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| AuthError::Params(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut me = Self { argon, decoy: String::new() };
        let mut random = [0u8; 24];
        rand::rng().fill_bytes(&mut random);
        me.decoy = me.hash(&hex::encode(random))?;
        Ok(me)
    }

    /// # Errors
    /// Only on an internal argon2 failure.
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    /// Verifies `password` against a stored PHC string (constant-time compare
    /// inside argon2). `None` verifies against the decoy and returns false.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let target = stored.unwrap_or(&self.decoy);
        let Ok(parsed) = PasswordHash::new(target) else {
            return false;
        };
        let ok = self.argon.verify_password(password.as_bytes(), &parsed).is_ok();
        ok && stored.is_some()
    }
}

/// Removes secrets (a password, a token, and the encodings that carry them on
/// the wire) from text a remote service may have echoed back into an error.
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    /// Longest first, so a secret inside another is not left half-replaced.
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(secrets: Vec<String>) -> Self {
        let mut secrets = secrets;
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "<redacted>"))
    }
}

/// A new random session token, and its hash for storage.
pub fn new_session_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasherArgon2 {
        PasswordHasherArgon2::new(Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 }).unwrap()
    }

    #[test]
    fn hash_then_verify() {
        let h = cheap();
        let stored = h.hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", Some(&stored)));
        assert!(!h.verify("wrong horse", Some(&stored)));
        assert!(!h.verify("correct horse", None));
        assert!(!h.verify("x", Some("not a phc string")));
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let (t1, h1) = new_session_token();
        let (t2, h2) = new_session_token();
        assert_ne!(t1, t2);
        assert_ne!(h1, h2);
        assert_eq!(hash_token(&t1), h1);
        assert_eq!(t1.len(), 43);
    }
}
