//! Development certificates, made at run time with rcgen: a throwaway certificate authority
//! that issues server and client certificates. For tests and examples only: nothing here is
//! written to disk unless asked, and no key made here belongs in production.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TlsError;

fn dev_err(e: rcgen::Error) -> TlsError {
    TlsError::DevCert(e.to_string())
}

/// A throwaway certificate authority.
///
/// ```
/// let ca = pb::dev::DevCa::new("pb test ca")?;
/// let server = ca.issue(&["localhost", "127.0.0.1"])?;
/// let tls = pb::ServerTls::from_pem(server.cert_pem.as_bytes(), server.key_pem.as_bytes())?;
/// # let _ = tls.build()?;
/// # Ok::<(), pb::TlsError>(())
/// ```
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new authority whose certificate has `common_name` as its subject.
    pub fn new(common_name: &str) -> Result<DevCa, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(dev_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(dev_err)?;
        let cert = params.self_signed(&key).map_err(dev_err)?;
        Ok(DevCa { cert, key })
    }

    /// The authority's certificate in PEM: what clients (or, for client certificates, the
    /// server) trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issue a certificate for `names` (DNS names or IP addresses), usable by a server and by a
    /// client.
    pub fn issue(&self, names: &[&str]) -> Result<DevCert, TlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(dev_err)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(dev_err)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(dev_err)?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct DevCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS #8).
    pub key_pem: String,
}

impl std::fmt::Debug for DevCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCert").finish_non_exhaustive()
    }
}

impl DevCert {
    /// Write `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write_pem_files(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}
