//! VAPID (RFC 8292): the key natterd signs its push requests with, and the
//! `Authorization: vapid t=<JWT>, k=<public key>` header.
//!
//! The key is `[push] vapid_key_file` (the private P-256 scalar, 32 bytes,
//! base64url, as `web-push generate-vapid-keys` prints it) or, by default,
//! derived from the server key (`<data_dir>/secret.key` or
//! `[auth] secret_key_file`), which every node of a deployment shares already:
//! the application server key clients subscribe with is then the same on
//! every node and survives restarts.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use web_push_native::jwt_simple::algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use web_push_native::jwt_simple::claims::Claims;

use crate::auth::server_key::ServerKey;

/// How long a signed request stays valid (RFC 8292 allows at most 24 hours).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    #[error("cannot read push.vapid_key_file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("push.vapid_key_file {0}: not a P-256 private key (32 bytes, base64url)")]
    Malformed(String),
    #[error("signing a VAPID token: {0}")]
    Sign(String),
}

/// natterd's VAPID key pair.
pub struct VapidKey {
    pair: ES256KeyPair,
    /// Uncompressed P-256 point (65 bytes): the application server key.
    public: Vec<u8>,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey({})", URL_SAFE_NO_PAD.encode(&self.public))
    }
}

impl VapidKey {
    /// The configured key file, or the key derived from `server_key`.
    ///
    /// # Errors
    /// The file cannot be read or holds no P-256 key.
    pub fn load(configured: Option<&Path>, server_key: &ServerKey) -> Result<Self, VapidError> {
        match configured {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| VapidError::Read { path: path.display().to_string(), source })?;
                let bytes = URL_SAFE_NO_PAD
                    .decode(text.trim().trim_end_matches('='))
                    .map_err(|_| VapidError::Malformed(path.display().to_string()))?;
                Self::from_private(&bytes).ok_or_else(|| VapidError::Malformed(path.display().to_string()))
            }
            None => Ok(Self::derived(server_key)),
        }
    }

    /// A P-256 scalar from the server key: the first HMAC output that is a
    /// valid scalar (all but about 2^-32 of them are).
    pub fn derived(server_key: &ServerKey) -> Self {
        (0u32..)
            .find_map(|counter| Self::from_private(&server_key.hmac("vapid-key", &counter.to_be_bytes())))
            .expect("some HMAC output is a P-256 scalar")
    }

    fn from_private(bytes: &[u8]) -> Option<Self> {
        let pair = ES256KeyPair::from_bytes(bytes).ok()?;
        let public = pair.public_key().public_key().to_bytes_uncompressed();
        Some(Self { pair, public })
    }

    /// The application server key clients subscribe with (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The `Authorization` header for a request to `endpoint`: a JWT for its
    /// origin (scheme, host and any non-default port: what the push service
    /// compares `aud` with), `sub` the operator's contact.
    ///
    /// # Errors
    /// The endpoint has no origin, or signing failed.
    pub fn authorization(&self, endpoint: &reqwest::Url, subject: &str) -> Result<String, VapidError> {
        let origin = endpoint.origin();
        if !origin.is_tuple() {
            return Err(VapidError::Sign(format!("{endpoint} has no origin")));
        }
        let claims =
            Claims::create(TOKEN_LIFETIME.into()).with_audience(origin.ascii_serialization()).with_subject(subject);
        let token = self.pair.sign(claims).map_err(|e| VapidError::Sign(e.to_string()))?;
        Ok(format!("vapid t={token}, k={}", URL_SAFE_NO_PAD.encode(&self.public)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_key_is_stable_and_the_token_names_the_origin_with_its_port() {
        let server_key = ServerKey::from_bytes(&[7; 32]);
        let a = VapidKey::derived(&server_key);
        let b = VapidKey::derived(&server_key);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.public_key().len(), 65);
        assert_eq!(a.public_key()[0], 4);
        assert_ne!(a.public_key(), VapidKey::derived(&ServerKey::from_bytes(&[8; 32])).public_key());

        let url = reqwest::Url::parse("http://127.0.0.1:8123/push/abc?x=1").unwrap();
        let header = a.authorization(&url, "mailto:ops@example.org").unwrap();
        let token = header.strip_prefix("vapid t=").unwrap().split(',').next().unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:8123");
        assert_eq!(claims["sub"], "mailto:ops@example.org");
        assert!(header.ends_with(&format!(", k={}", URL_SAFE_NO_PAD.encode(a.public_key()))));
    }

    #[test]
    fn a_key_file_is_read_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.key");
        let server_key = ServerKey::from_bytes(&[7; 32]);
        std::fs::write(&path, format!("{}\n", URL_SAFE_NO_PAD.encode([3u8; 32]))).unwrap();
        let key = VapidKey::load(Some(&path), &server_key).unwrap();
        assert_ne!(key.public_key(), VapidKey::derived(&server_key).public_key());
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(VapidKey::load(Some(&path), &server_key), Err(VapidError::Malformed(_))));
        assert!(matches!(VapidKey::load(Some(&dir.path().join("none")), &server_key), Err(VapidError::Read { .. })));
    }
}
