//! How the client decides to trust natterd's certificate: a pinned SHA-256
//! fingerprint of the leaf (what `natterd` prints on start), or a CA bundle.
//! There is no "insecure" mode.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// What the client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the leaf certificate with this SHA-256.
    Pin([u8; 32]),
    /// Any certificate for the server name chaining to one of these roots.
    Ca(Vec<CertificateDer<'static>>),
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("a pin looks like sha256:<64 hex digits>")]
    BadPin,
    #[error("{0}: {1}")]
    Ca(String, String),
}

impl Trust {
    /// Parses `sha256:<hex>` (the prefix is optional, colons between bytes allowed).
    ///
    /// # Errors
    /// `BadPin` when it is not 32 bytes of hex.
    pub fn pin(s: &str) -> Result<Self, TrustError> {
        let hex_part = s.trim().strip_prefix("sha256:").unwrap_or(s.trim()).replace(':', "");
        let bytes = hex::decode(hex_part).map_err(|_| TrustError::BadPin)?;
        <[u8; 32]>::try_from(bytes).map(Trust::Pin).map_err(|_| TrustError::BadPin)
    }

    /// Reads a PEM CA bundle.
    ///
    /// # Errors
    /// Unreadable file or no certificate in it.
    pub fn ca_file(path: &Path) -> Result<Self, TrustError> {
        let err = |e: String| TrustError::Ca(path.display().to_string(), e);
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificate in file".into()));
        }
        Ok(Trust::Ca(certs))
    }

    /// The pin as `sha256:<hex>`, if this is a pin.
    pub fn pin_string(&self) -> Option<String> {
        match self {
            Trust::Pin(p) => Some(fingerprint_string(p)),
            Trust::Ca(_) => None,
        }
    }

    /// The TLS configuration; with a pin, the leaf certificate the server
    /// offers is recorded in `seen` (to say what did not match).
    pub(crate) fn rustls_config(&self, seen: &SeenLeaf) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut config = match self {
            Trust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier { pin: *pin, provider, seen: seen.clone() }))
                .with_no_client_auth(),
            Trust::Ca(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone())?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
        Ok(config)
    }
}

/// `sha256:<hex>` of a SHA-256 digest, as natterd prints its fingerprint.
pub(crate) fn fingerprint_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// The SHA-256 of the leaf certificate a server offered, recorded by the pin
/// verifier: when the pin does not match, the error can show both.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeenLeaf(Arc<Mutex<Option<[u8; 32]>>>);

impl SeenLeaf {
    pub(crate) fn get(&self) -> Option<[u8; 32]> {
        *self.0.lock().expect("seen leaf lock")
    }

    fn set(&self, digest: [u8; 32]) {
        *self.0.lock().expect("seen leaf lock") = Some(digest);
    }
}

/// Accepts exactly one leaf certificate, and still checks the handshake
/// signatures, so the peer must hold that certificate's private key.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    seen: SeenLeaf,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        self.seen.set(digest);
        if digest == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(Trust::pin(&format!("sha256:{hex}")).unwrap(), Trust::Pin([0xab; 32]));
        assert_eq!(Trust::pin(&hex).unwrap(), Trust::Pin([0xab; 32]));
        assert!(Trust::pin("sha256:abcd").is_err());
        assert!(Trust::pin("sha256:zz").is_err());
        assert_eq!(Trust::Pin([0xab; 32]).pin_string().unwrap(), format!("sha256:{hex}"));
    }
}
