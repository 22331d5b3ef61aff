//! The server's TLS identity: configured PEM files, or a certificate generated on
//! first start in `<data_dir>/tls/` (a private CA in `ca.pem`, a leaf signed by it
//! in `cert.pem`, the leaf key in `key.pem` with mode 0600). Clients pin the
//! leaf's SHA-256 fingerprint (`--pin`) or trust `ca.pem` (`--ca`).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate chain with its key, ready for rustls.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the chain was read from or written to.
    pub cert_path: PathBuf,
}

impl TlsIdentity {
    /// `sha256:<hex>` of the leaf certificate, as printed by natterd and pinned by
    /// clients.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "{cert} was generated without {missing}, which tls.names lists: move {dir} away and natterd generates a \
         new certificate with every name on its next start (clients must then pin its new fingerprint), or set \
         tls.cert and tls.key"
    )]
    NamesNotCovered { cert: PathBuf, dir: PathBuf, missing: String },
    #[error("tls.names: {0:?} is neither a DNS name nor an IP address")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_owned(), source }
}

/// Loads a PEM chain and key.
///
/// # Errors
/// Unreadable files, no certificate, no key.
pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
    let pem_err = |path: &Path, reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    Ok(TlsIdentity { chain, key: key_der, cert_path: cert.to_owned() })
}

/// Loads `<dir>/cert.pem` + `<dir>/key.pem`, generating them first if absent.
///
/// # Errors
/// IO failures, or unreadable existing files.
pub fn load_or_generate(dir: &Path, extra_names: &[String]) -> Result<TlsIdentity, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        generate(dir, extra_names)?;
    }
    let identity = load(&cert, &key)?;
    // Names configured after the certificate was made are not silently left out.
    let missing = names_not_covered(&identity.chain[0], extra_names, &cert)?;
    if !missing.is_empty() {
        return Err(TlsError::NamesNotCovered { cert, dir: dir.to_owned(), missing: missing.join(", ") });
    }
    Ok(identity)
}

/// Which of `names` (DNS names or IP addresses) `leaf` is not valid for.
fn names_not_covered(leaf: &CertificateDer<'_>, names: &[String], path: &Path) -> Result<Vec<String>, TlsError> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| TlsError::Pem { path: path.to_owned(), reason: format!("unreadable certificate: {e}") })?;
    let mut missing = Vec::new();
    for name in names {
        let server_name =
            rustls_pki_types::ServerName::try_from(name.as_str()).map_err(|_| TlsError::BadName(name.clone()))?;
        if cert.verify_is_valid_for_subject_name(&server_name).is_err() {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

fn generate(dir: &Path, extra_names: &[String]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "natterd local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.extend(extra_names.iter().cloned());
    names.dedup();
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params.distinguished_name.push(DnType::CommonName, "natterd");
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    let key_path = dir.join("key.pem");
    write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, chain).map_err(io_err(&cert_path))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).map_err(io_err(&ca_path))?;
    tracing::info!(dir = %dir.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Writes a file readable by its owner only (created with mode 0600, never
/// briefly world-readable).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = load_or_generate(&tls, &["chat.example.org".into()]).unwrap();
        let b = load_or_generate(&tls, &[]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.chain.len(), 2, "leaf + CA");
        assert!(a.fingerprint().starts_with("sha256:") && a.fingerprint().len() == 71);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tls.join("key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(tls.join("ca.pem").exists());
    }

    #[test]
    fn names_configured_after_generation_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        load_or_generate(&tls, &["chat.example.org".into(), "10.1.2.3".into()]).unwrap();
        // The names it was made with, in any subset, are fine.
        load_or_generate(&tls, &["chat.example.org".into(), "localhost".into(), "127.0.0.1".into()]).unwrap();
        let err = load_or_generate(&tls, &["chat.example.org".into(), "new.example.org".into(), "10.9.9.9".into()])
            .err()
            .expect("names not in the certificate are refused");
        let message = err.to_string();
        assert!(
            matches!(&err, TlsError::NamesNotCovered { missing, .. } if missing == "new.example.org, 10.9.9.9"),
            "{message}"
        );
        assert!(message.contains("move") && message.contains("tls.cert"), "{message}");
        let bad = load_or_generate(&tls, &["not a name".into()]).err().expect("a bad name is refused");
        assert!(matches!(bad, TlsError::BadName(_)));
    }
}
