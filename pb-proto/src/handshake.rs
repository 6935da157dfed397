//! The handshake: the first frame each side sends.
//!
//! The dialing side sends its [`Hello`] at once, without waiting for the peer's; the accepting
//! side answers with its own as soon as the dialer's has arrived (with its first answer, in the
//! same write), whether it accepts the dialer's or not. Each checks the one it receives. A
//! version mismatch is therefore detected by both sides independently: a clear error on both
//! sides, never a hang. A dialer may send its first calls right behind its hello
//! (`Connection::dial`).
//!
//! Layout of the 16-byte body: magic `b"PBRS"`, version (u16 BE), reserved (u16, zero), feature
//! flags (u64 BE). Features are negotiated as the intersection of both sides' flags.

use bytes::BufMut;

/// The magic that opens every pb connection.
pub const MAGIC: [u8; 4] = *b"PBRS";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Length of an encoded [`Hello`] body.
pub const HELLO_LEN: usize = 16;

/// Feature flags a peer may advertise in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

impl Features {
    /// No optional features.
    pub const NONE: Features = Features(0);

    /// The features both sides support.
    pub fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// Whether every flag of `flag` is set.
    pub fn contains(self, flag: Features) -> bool {
        self.0 & flag.0 == flag.0
    }
}

/// The first frame on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's optional features.
    pub features: Features,
}

impl Hello {
    /// The hello this build sends.
    pub fn ours(features: Features) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            features,
        }
    }

    /// Encode the hello body (without frame header).
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&MAGIC);
        out.put_u16(self.version);
        out.put_u16(0);
        out.put_u64(self.features.0);
    }

    /// Decode a hello body.
    pub fn decode(body: &[u8]) -> Result<Hello, HandshakeError> {
        let Some(&[m0, m1, m2, m3, v0, v1, _, _, f0, f1, f2, f3, f4, f5, f6, f7]) = body
            .get(..HELLO_LEN)
            .and_then(|s| <&[u8; HELLO_LEN]>::try_from(s).ok())
        else {
            return Err(HandshakeError::Malformed { len: body.len() });
        };
        if [m0, m1, m2, m3] != MAGIC {
            return Err(HandshakeError::BadMagic {
                magic: [m0, m1, m2, m3],
            });
        }
        if body.len() != HELLO_LEN {
            return Err(HandshakeError::Malformed { len: body.len() });
        }
        Ok(Hello {
            version: u16::from_be_bytes([v0, v1]),
            features: Features(u64::from_be_bytes([f0, f1, f2, f3, f4, f5, f6, f7])),
        })
    }

    /// Check the peer's hello against ours; returns the negotiated features.
    pub fn negotiate(&self, peer: &Hello) -> Result<Features, HandshakeError> {
        if peer.version != self.version {
            return Err(HandshakeError::VersionMismatch {
                ours: self.version,
                theirs: peer.version,
            });
        }
        Ok(self.features.intersect(peer.features))
    }
}

/// The handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer is not speaking pb.
    #[error("peer is not speaking pb (magic {magic:02x?})")]
    BadMagic {
        /// The four bytes received instead of the magic.
        magic: [u8; 4],
    },
    /// The peer's hello has the wrong size.
    #[error("malformed hello of {len} bytes")]
    Malformed {
        /// The body length received.
        len: usize,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn round_trip_and_mismatch() {
        let mut b = BytesMut::new();
        Hello::ours(Features(3)).encode(&mut b);
        let h = Hello::decode(&b).unwrap();
        assert_eq!(h, Hello::ours(Features(3)));
        let old = Hello {
            version: 0,
            features: Features::NONE,
        };
        assert_eq!(
            Hello::ours(Features::NONE).negotiate(&old),
            Err(HandshakeError::VersionMismatch { ours: 1, theirs: 0 })
        );
        assert!(matches!(
            Hello::decode(b"HTTP/1.1 200 OK\r\n"),
            Err(HandshakeError::BadMagic { .. })
        ));
        assert!(matches!(
            Hello::decode(b"PB"),
            Err(HandshakeError::Malformed { len: 2 })
        ));
    }
}
