//! TLS for the client: which roots to trust, an optional client certificate, and the name to
//! check the server's certificate against.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use pb_core::pem::{TlsError, certs, key, memory, read_file as read};

/// The client's TLS settings.
///
/// Only the roots given here are trusted: a server whose certificate does not chain to one of
/// them is refused. The server's certificate is checked against [`ClientTls::server_name`], or
/// against the IP address dialed when no name is set. pb speaks TLS 1.3 only. The certificate
/// verified becomes the connection's identity ([`crate::Identity::Certificate`]), which the
/// handlers of the objects the server calls on this side read with `Caller::identity`.
///
/// ```no_run
/// # fn main() -> Result<(), pb::TlsError> {
/// let tls = pb::ClientTls::from_roots_pem_file("ca.crt")?.server_name("pb.example.com")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trust the roots in this PEM text.
    pub fn from_roots_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(pem, memory())? {
            roots.add(c)?;
        }
        Ok(ClientTls {
            roots,
            identity: None,
            server_name: None,
        })
    }

    /// Trust the roots in this PEM file.
    pub fn from_roots_pem_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsError> {
        let path = path.as_ref();
        ClientTls::from_roots_pem(&read(path)?).map_err(|e| match e {
            TlsError::Pem { source, .. } => TlsError::Pem {
                path: path.to_owned(),
                source,
            },
            TlsError::NoCertificate(_) => TlsError::NoCertificate(path.to_owned()),
            other => other,
        })
    }

    /// Present this certificate chain (leaf first) and key to the server (mutual TLS).
    pub fn client_cert_pem(mut self, chain: &[u8], key_pem: &[u8]) -> Result<ClientTls, TlsError> {
        self.identity = Some((certs(chain, memory())?, Arc::new(key(key_pem, memory())?)));
        Ok(self)
    }

    /// Present the certificate chain and key in these PEM files to the server (mutual TLS).
    pub fn client_cert_pem_files(
        mut self,
        chain: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<ClientTls, TlsError> {
        let (chain, key_file) = (chain.as_ref(), key_file.as_ref());
        self.identity = Some((
            certs(&read(chain)?, chain.to_owned())?,
            Arc::new(key(&read(key_file)?, key_file.to_owned())?),
        ));
        Ok(self)
    }

    /// The name (DNS name or IP address) the server's certificate must be valid for.
    pub fn server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(name);
        Ok(self)
    }

    pub(crate) fn name_for(&self, peer: std::net::SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(peer.ip().into()))
    }

    /// The rustls configuration these settings make.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(self.roots.clone());
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
        };
        Ok(Arc::new(config))
    }
}
