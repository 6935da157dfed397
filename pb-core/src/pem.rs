//! PEM input for TLS, and the one error type of TLS set-up, shared by the server's and the
//! client's TLS settings (`pb::ServerTls`, `pb::ClientTls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Setting up TLS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read PEM from {path}")]
    Pem {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM input held no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// The server name to check is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    #[error("tls configuration refused")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (for example no usable root).
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A development certificate could not be made.
    #[error("cannot make a development certificate: {0}")]
    DevCert(String),
}

/// The path errors name for PEM given in memory.
pub fn memory() -> PathBuf {
    PathBuf::from("<memory>")
}

/// The bytes of a PEM file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        source: rustls::pki_types::pem::Error::Io(e),
    })
}

/// Every certificate in `pem` (at least one); `path` names the input in errors.
pub fn certs(pem: &[u8], path: PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path));
    }
    Ok(certs)
}

/// The private key in `pem`; `path` names the input in errors.
pub fn key(pem: &[u8], path: PathBuf) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| TlsError::Pem { path, source })
}

/// Roots (trust anchors) from PEM, as a rustls root store.
pub fn root_store(pem: &[u8], path: PathBuf) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(pem, path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The crypto provider pb's TLS uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_an_error_naming_the_input() {
        let err = certs(b"not pem", memory()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(p) if p == memory()));
        let err = key(b"-----BEGIN PRIVATE KEY-----\n%%%\n", memory()).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        let err = read_file(Path::new("/nonexistent/pb.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pb.pem"));
    }
}
