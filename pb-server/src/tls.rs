//! TLS for the server: certificates from PEM, optional client certificates, and what a TLS
//! session tells the login logic (channel binding, the verified client certificate).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use pb_core::PeerCertificate;
use pb_core::scram::{ChannelBinding, EXPORTER_LABEL, EXPORTER_LEN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub(crate) use pb_core::pem::root_store;
use pb_core::pem::{TlsError, certs as certs_from_pem, memory, provider, read_file as read};

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present a certificate; those that do not log in some other way.
    Optional,
    /// Every client must present a certificate signed by one of the roots.
    Required,
}

/// The server's TLS settings: its certificate chain and key, and optionally the roots that
/// client certificates must chain to.
///
/// pb speaks TLS 1.3 only: channel binding with `tls-exporter` (RFC 9266) is defined for it, and
/// both ends are pb.
///
/// ```no_run
/// # fn main() -> Result<(), pb::TlsError> {
/// let tls = pb::ServerTls::from_pem_files("server.crt", "server.key")?
///     .client_roots_pem_file("clients-ca.crt", pb::ClientAuth::Optional)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_roots: Option<(rustls::RootCertStore, ClientAuth)>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("chain_len", &self.chain.len())
            .field("client_auth", &self.client_roots.as_ref().map(|(_, a)| a))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The certificate chain (leaf first) and private key, from PEM files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ServerTls, TlsError> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let certs = certs_from_pem(&read(chain)?, chain.to_owned())?;
        let key = pb_core::pem::key(&read(key)?, key.to_owned())?;
        Ok(ServerTls::new(certs, key))
    }

    /// The certificate chain (leaf first) and private key, from PEM text.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        let certs = certs_from_pem(chain, memory())?;
        let key = pb_core::pem::key(key, memory())?;
        Ok(ServerTls::new(certs, key))
    }

    /// From DER values.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> ServerTls {
        ServerTls {
            chain,
            key: Arc::new(key),
            client_roots: None,
        }
    }

    /// Ask clients for certificates that chain to the roots in this PEM text (mutual TLS).
    pub fn client_roots_pem(
        mut self,
        roots: &[u8],
        auth: ClientAuth,
    ) -> Result<ServerTls, TlsError> {
        self.client_roots = Some((root_store(roots, memory())?, auth));
        Ok(self)
    }

    /// Ask clients for certificates that chain to the roots in this PEM file (mutual TLS).
    pub fn client_roots_pem_file(
        mut self,
        roots: impl AsRef<Path>,
        auth: ClientAuth,
    ) -> Result<ServerTls, TlsError> {
        let path = roots.as_ref();
        self.client_roots = Some((root_store(&read(path)?, path.to_owned())?, auth));
        Ok(self)
    }

    /// The rustls configuration these settings make.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some((roots, auth)) => {
                let v = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots.clone()),
                    provider(),
                );
                let v = match auth {
                    ClientAuth::Optional => v.allow_unauthenticated(),
                    ClientAuth::Required => v,
                };
                builder.with_client_cert_verifier(v.build()?)
            }
        };
        let config = builder.with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// What the TLS session under a connection tells the login logic.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The channel-binding value of the session (RFC 9266).
    pub channel_binding: ChannelBinding,
    /// The client's certificate, when it sent one and rustls verified it.
    pub peer_certificate: Option<PeerCertificate>,
}

impl TlsInfo {
    /// Read what login needs from an established server-side rustls session.
    pub fn from_connection(conn: &rustls::ServerConnection) -> Result<TlsInfo, TlsError> {
        let exporter = conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)?;
        let peer_certificate = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| PeerCertificate::from_der(c.clone().into_owned()));
        Ok(TlsInfo {
            channel_binding: ChannelBinding::TlsExporter(exporter),
            peer_certificate,
        })
    }
}
