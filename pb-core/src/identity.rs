//! Who the peer of a connection is: what login or a verified TLS certificate established, as
//! both ends record it with `Connection::set_identity` and handlers read it with
//! `Caller::identity::<Identity>()`.
//!
//! The types live here, below the server and the client, because both ends of a link record
//! one: the server the client's certificate (or its login), the dialing side the server's
//! certificate.

use std::fmt;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// Who the peer of a connection is. Handlers read it with
/// `caller.identity::<pb::Identity>()` (see [`crate::Caller::identity`]).
///
/// The accepting side records what the client's login established (or, without a portal, its
/// verified client certificate); the dialing side records the server's verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// A user who proved a password with SCRAM-SHA-256.
    User(String),
    /// The holder of a certificate that TLS verified: a client's, on the accepting side; the
    /// server's, on the dialing side.
    Certificate(PeerCertificate),
    /// Nobody in particular.
    Anonymous,
}

impl Identity {
    /// A display name: the user name, the certificate's first DNS name, or `None`.
    pub fn name(&self) -> Option<&str> {
        match self {
            Identity::User(u) => Some(u),
            Identity::Certificate(c) => c.name(),
            Identity::Anonymous => None,
        }
    }
}

/// A peer's end-entity certificate that rustls verified: a client's against the server's client
/// roots, or a server's against the client's roots and the name dialed.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    der: CertificateDer<'static>,
    fingerprint: [u8; 32],
    dns_names: Vec<String>,
}

impl PeerCertificate {
    /// Describe a verified end-entity certificate.
    pub fn from_der(der: CertificateDer<'static>) -> PeerCertificate {
        let fingerprint = Sha256::digest(der.as_ref()).into();
        let dns_names = webpki::EndEntityCert::try_from(&der)
            .map(|c| c.valid_dns_names().map(str::to_owned).collect())
            .unwrap_or_default();
        PeerCertificate {
            der,
            fingerprint,
            dns_names,
        }
    }

    /// The first DNS name of the certificate's subject alternative names: the usual name of a
    /// peer identity.
    pub fn name(&self) -> Option<&str> {
        self.dns_names.first().map(String::as_str)
    }

    /// Every DNS name of the certificate's subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// SHA-256 of the certificate's DER encoding: a stable id even without names.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The certificate's DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}
